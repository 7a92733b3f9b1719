"""Official benchmark CSV files (NegBench, CREPE): rows as dicts, and list columns stored as Python literals.

Both benchmarks read their CSVs with ``pandas.read_csv`` (comma-separated, a header row, standard quoting) and
store lists of captions as the *string* of a Python list (``"['a dog', 'no cat']"``), which their code passes to
``eval``/``ast.literal_eval``. Here every problem (no such column, a list that is not a list of non-empty
strings, a non-integer where one is expected) is an EvalDataError naming the file and line.
"""
import ast
import csv
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Tuple

from .items import EvalDataError


def read_rows(path, required: Sequence[str]) -> Iterator[Tuple[int, Dict[str, str]]]:
    """``(line number, row)`` for every data row of the CSV at ``path`` (header on line 1); the header must name
    every column in ``required``. A UTF-8 byte-order mark is accepted; an empty file or a file with a header only
    is an error."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in required if c not in header]
            if missing:
                raise EvalDataError(f"{path}: the header lacks column(s) {missing}; it has {header[:12]}")
            count = 0
            for row in reader:
                count += 1
                if None in row:  # more fields than header columns
                    raise EvalDataError(f"{path}: line {reader.line_num} has more fields than the header "
                                        f"({len(header)} columns)")
                yield reader.line_num, row
            if not count:
                raise EvalDataError(f"{path}: no data rows")
    except UnicodeDecodeError as err:
        raise EvalDataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except csv.Error as err:
        raise EvalDataError(f"{path}: not a readable CSV file ({err})") from None


def text_cell(row: Dict[str, str], column: str, where: str) -> str:
    """``row[column]`` when it is a non-empty string (pandas would read an empty cell as NaN)."""
    value = row.get(column)
    if value is None or not value.strip():
        raise EvalDataError(f"{where}: column {column!r} is empty; expected a non-empty caption")
    return value


def int_cell(row: Dict[str, str], column: str, where: str) -> int:
    value = (row.get(column) or "").strip()
    try:
        return int(value)
    except ValueError:
        raise EvalDataError(f"{where}: column {column!r} must be an integer, got {value!r}") from None


def number_cell(row: Dict[str, str], column: str, where: str) -> float:
    value = (row.get(column) or "").strip()
    try:
        return float(value)
    except ValueError:
        raise EvalDataError(f"{where}: column {column!r} must be a number, got {value!r}") from None


def list_cell(row: Dict[str, str], column: str, where: str, allow_empty: bool = False) -> List[str]:
    """The list of strings stored as a Python literal in ``row[column]`` (``ast.literal_eval``, never ``eval``)."""
    text = row.get(column) or ""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise EvalDataError(f"{where}: column {column!r} must hold a Python list of strings such as "
                            f"\"['a caption', 'another']\", got {text[:80]!r}") from None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise EvalDataError(f"{where}: column {column!r} must be a list of non-empty strings, got {text[:80]!r}")
    if not value and not allow_empty:
        raise EvalDataError(f"{where}: column {column!r} is an empty list")
    return list(value)
