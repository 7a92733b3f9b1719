"""Where every benchmark writes its JSON: atomically (temporary file, then rename), creating the folder."""
import json
import os
import tempfile
from pathlib import Path


def write_json(result: dict, out) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise
