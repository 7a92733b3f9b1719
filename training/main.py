"""open_clip_train's own training loop with open_clip_align's losses, models, hard-negative and ComAlign data.

    python -m training.main --model hardneg-tiny-ViT --loss negclip --hardneg-format csv \
        --train-data train.csv --precision fp32 ...
    torchrun --nproc_per_node 2 -m training.main -- --logs /tmp/logs --loss negclip ...

open_clip_train's flags are accepted unless ``flag_rules`` refuses them for the method; ``--help`` lists ours
first, ``--import MODULE`` adds a user's methods. Under torchrun put ``--`` before the
script's flags (torchrun would otherwise take ``--logs`` as its own ``--logs-specs``).
"""
import sys
from typing import Optional, Sequence

import open_clip_train.main as train_main

import open_clip_align  # noqa: F401  (registers models, configs and methods)
from open_clip_align.errors import run_cli
from open_clip_align.training_hooks import training_hooks


def main(argv: Optional[Sequence[str]] = None):
    """Run one training job in-process; returns open_clip_train's result (-1 when it refuses to start)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    with training_hooks():
        return train_main.main(argv)


def cli() -> None:
    """Console entry: user errors become one line and exit status 2, Ctrl-C one line and 130."""
    sys.exit(run_cli(lambda: 1 if main() == -1 else 0, "training.main",
                     interrupted="checkpoints written so far are kept (continue with --resume latest)"))


if __name__ == "__main__":
    cli()
