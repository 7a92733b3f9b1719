"""open_clip_train's own training loop with open_clip_align's losses, models, hard-negative and ComAlign data.

    python -m training.main --model hardneg-tiny-ViT --loss negclip --hardneg-format csv \
        --train-data train.csv --precision fp32 ...
    torchrun --nproc_per_node 2 -m training.main -- --logs /tmp/logs --loss negclip ...

Every open_clip_train flag is accepted; ``--help`` lists ours first. Under torchrun put ``--`` before the
script's flags (torchrun would otherwise take ``--logs`` as its own ``--logs-specs``).
"""
import logging
import sys
from typing import Optional, Sequence

import open_clip_train.main as train_main

import open_clip_align  # noqa: F401  (registers models, configs and losses)
from open_clip_align._patches import PluginUsageError, training_hooks
from open_clip_align.comalign.annotations import ComAlignDataError
from open_clip_align.data.hardneg import HardNegDataError


def main(argv: Optional[Sequence[str]] = None):
    """Run one training job in-process; returns open_clip_train's result (-1 when it refuses to start)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    with training_hooks():
        return train_main.main(argv)


def cli() -> None:
    """Console entry: user errors become one readable line and exit status 2."""
    try:
        result = main()
    except (PluginUsageError, HardNegDataError, ComAlignDataError) as err:
        print(f"training.main: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("training.main: interrupted; checkpoints written so far are kept (continue with --resume latest)",
              file=sys.stderr)
        sys.exit(130)
    finally:  # open_clip_train sets every logger to INFO; keep torch's exit-time stats dump off the console
        for name in list(logging.root.manager.loggerDict):
            if name.startswith("torch"):
                logging.getLogger(name).setLevel(logging.WARNING)
    sys.exit(1 if result == -1 else 0)


if __name__ == "__main__":
    cli()
