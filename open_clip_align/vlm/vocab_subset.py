"""The vocabulary subset of ALIGN's softmax (spec ``alignvlm.md`` §1.1) as a training option: read from a file of
token ids, or calibrated as the top-N tokens by mean P over the first training batches.

With a subset S, W2's rows, LN2's parameters and E's rows are sliced together and P runs over S only
(:meth:`AlignConnector.set_vocab_subset`); the subset is saved with the connector and restored on load.
"""
import json
import re
from pathlib import Path
from typing import Iterable, Optional

import torch

from ..errors import UserError
from .connector import vocab_subset_from_probs

__all__ = ["VocabSubsetError", "calibrate_vocab_subset", "read_vocab_subset", "top_n"]

_TOP_N = re.compile(r"^top-(\d+)$")


class VocabSubsetError(UserError):
    """A ``--vocab-subset`` file that is not a list of distinct token ids of the model's vocabulary."""


def top_n(spec: str) -> Optional[int]:
    """N of ``"top-N"``, else None (a file)."""
    match = _TOP_N.match(spec)
    return int(match.group(1)) if match else None


def read_vocab_subset(path: str, vocab_size: int) -> torch.Tensor:
    """Token ids ``LongTensor[S]`` (sorted) from a JSON list or a text file of whitespace / comma separated ids;
    :class:`VocabSubsetError` naming the file and line of the first bad entry."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    where = f"--vocab-subset {path}"
    if text.lstrip().startswith("["):
        try:
            values = json.loads(text)
        except ValueError as err:
            raise VocabSubsetError(f"{where}: not a JSON list of token ids ({err})") from None
        entries = [(v, "the JSON list") for v in values]
    else:
        entries = [(tok, f"line {n}") for n, line in enumerate(text.splitlines(), 1)
                   for tok in re.split(r"[\s,]+", line.strip()) if tok]
    ids, seen = [], set()
    for value, line in entries:
        try:
            token = int(value)
            if isinstance(value, float) or str(value).strip() != str(token):
                raise ValueError
        except (TypeError, ValueError):
            raise VocabSubsetError(f"{where}, {line}: {value!r} is not a token id (an integer)") from None
        if not 0 <= token < vocab_size:
            raise VocabSubsetError(f"{where}, {line}: token id {token} is outside the vocabulary [0, {vocab_size})")
        if token in seen:
            raise VocabSubsetError(f"{where}, {line}: token id {token} is listed twice")
        seen.add(token)
        ids.append(token)
    if not ids:
        raise VocabSubsetError(f"{where}: no token ids")
    return torch.tensor(sorted(ids), dtype=torch.long)


@torch.no_grad()
def calibrate_vocab_subset(model, batches: Iterable[dict], n: int, device: torch.device,
                           all_reduce=None) -> torch.Tensor:
    """The ``n`` token ids with the largest mean P (over every visual token of ``batches``, full vocabulary) of
    ``model``'s ALIGN connector, sorted. ``all_reduce`` (optional) sums the ``[V]`` mass over ranks first, so all
    ranks keep the same subset."""
    connector = model.connector
    saved = connector.vocab_subset
    connector.set_vocab_subset(None)
    was_training = model.training
    model.eval()
    mass, count = None, 0
    try:
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            _, probs = model(**batch, return_probs=True)
            flat = probs.reshape(-1, probs.shape[-1]).double()
            mass = flat.sum(0) if mass is None else mass + flat.sum(0)
            count += flat.shape[0]
    finally:
        connector.set_vocab_subset(saved)
        model.train(was_training)
    totals = torch.cat([mass, torch.tensor([float(count)], dtype=torch.float64, device=mass.device)])
    if all_reduce is not None:
        all_reduce(totals)
    mean = (totals[:-1] / totals[-1]).float().cpu()
    return vocab_subset_from_probs(mean, top_k=n)
