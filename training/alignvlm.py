"""python -m training.alignvlm: AlignVLM captioning training (stages A/B, torchrun); the trainer lives in
``open_clip_align.vlm.train`` (flags, run folder, resume, metrics, step loop).

    python -m training.alignvlm --train-data data/train.csv --lm smollm2 --stage A --logs ./logs --name align-a
    python -m training.alignvlm --train-data data/train.csv --vlm smolvlm --vlm-path DIR --name smol-a
    torchrun --nproc_per_node 2 -m training.alignvlm -- --train-data ...

``python -m training.alignvlm --help`` lists every flag.
"""
import sys
from typing import Optional, Sequence

from open_clip_align.cli_checks import console_logging
from open_clip_align.errors import run_cli
from open_clip_align.vlm.train import TrainingConfigError, build_parser, parse_args
from open_clip_align.vlm.train import main as _train_main

__all__ = ["TrainingConfigError", "build_parser", "cli", "main", "parse_args"]


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run one training job in-process; returns a summary (run_dir, checkpoint, steps, losses)."""
    return _train_main(argv)


def cli() -> None:
    """Console entry: user errors become one line on stderr and exit status 2; Ctrl-C one line and 130."""
    console_logging()
    sys.exit(run_cli(lambda: main() and 0, "training.alignvlm",
                     interrupted="continue from the newest checkpoint with the same flags and --resume latest"))


if __name__ == "__main__":
    cli()
