"""What every benchmark shares: timing arms alternately, and writing the JSON result atomically."""
import json
import os
import tempfile
import time
from pathlib import Path


def time_arms(arms: dict, repeats: int, warmup: int = 0, inner: int = 1) -> dict:
    """Run every arm ``warmup`` rounds untimed, then ``repeats`` timed rounds, alternating between arms so
    machine noise hits all of them. Each sample is the mean over ``inner`` back-to-back calls.

    Returns ``{arm: [seconds per call, ...]}``.
    """
    for _ in range(warmup):
        for fn in arms.values():
            for _ in range(inner):
                fn()
    times = {name: [] for name in arms}
    for _ in range(repeats):
        for name, fn in arms.items():
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            times[name].append((time.perf_counter() - start) / inner)
    return times


def write_json(result: dict, out) -> None:
    """Write ``result`` to ``out`` (folders created) through a temporary file and a rename."""
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
