#!/usr/bin/env bash
# AlignVLM captioning recipe (spec alignvlm.md §4), every value overridable from the environment.
#   Stage A (default): the ALIGN connector alone, vision tower and LM frozen; AdamW lr 1e-3, cosine with ~3%
#   warm-up, wd 0, batch 32 per GPU, 1 epoch over image-caption pairs.
#   Stage B (STAGE=B): connector + LM at lr 1e-5 (LORA=1: LoRA r = alpha = 64), starting from stage A's newest
#   checkpoint (INIT_FROM, default $LOGS/alignvlm-$CONNECTOR-stageA).
#
#   DATA=/data/captions.tsv IMAGE_ROOT=/data/images LM=smollm2 bash scripts/train_alignvlm.sh
#   STAGE=B LORA=1 DATA=/data/captions.tsv LM=smollm2 bash scripts/train_alignvlm.sh
#   VLM_PATH=/models/SmolVLM2-500M-Video-Instruct DATA=data/pixmo bash scripts/train_alignvlm.sh   (ALIGN in SmolVLM;
#   MODEL, PRETRAINED and LM do not apply; see also scripts/recipe_smolvlm_align.sh for the seed's whole recipe)
#
#   GPUS=1 BATCH=32 EPOCHS=1 STEPS= LR= (1e-3 stage A, 1e-5 stage B) W2_LR_MULT=1 WD=0 PRECISION=amp_bf16
#   MODEL=ViT-B-16-quickgelu PRETRAINED=openai (OpenAI weights need QuickGELU; a GELU name such as ViT-B-16 is
#   switched to QuickGELU with a log line) LM=smollm2 (HF dir, .gguf file, smollm2, tiny-llama) CONNECTOR=align|mlp
#   PROMPT="A short caption:" DATA_TYPE=auto|csv|wds CSV_IMG_KEY=filepath CSV_CAPTION_KEY=title
#   CSV_SEPARATOR=<TAB> NUM_SAMPLES= (wds) LORA_R=64 LORA_ALPHA=64 WORKERS=4 LOGS=./logs NAME= SEED=0
#   ACCUM=1 (--accum-freq) GRAD_CKPT=0 (1: --grad-checkpointing) REPORT_TO= (tensorboard and/or wandb)
#   PYTHON (default: ./.venv/bin/python made by scripts/setup_env.sh, else python)
#
# Arguments given to the script are appended to training.alignvlm's flags (e.g. --device cpu, --resume latest).
set -euo pipefail

: "${STAGE:=A}" "${GPUS:=1}" "${BATCH:=32}" "${EPOCHS:=1}" "${STEPS:=}" "${W2_LR_MULT:=1}" "${WD:=0}"
: "${PRECISION:=amp_bf16}" "${MODEL:=ViT-B-16-quickgelu}" "${PRETRAINED=openai}" "${LM:=smollm2}" "${CONNECTOR:=align}"
: "${PROMPT:=A short caption:}" "${DATA_TYPE:=auto}" "${CSV_IMG_KEY:=filepath}" "${CSV_CAPTION_KEY:=title}"
: "${CSV_SEPARATOR:=$'\t'}" "${NUM_SAMPLES:=}" "${LORA:=0}" "${LORA_R:=64}" "${LORA_ALPHA:=64}"
: "${WORKERS:=4}" "${LOGS:=./logs}" "${SEED:=0}" "${ACCUM:=1}" "${GRAD_CKPT:=0}" "${REPORT_TO:=}"
if [[ "$STAGE" == A ]]; then : "${LR:=1e-3}"; else : "${LR:=1e-5}"; fi
: "${NAME:=alignvlm-$CONNECTOR-stage$STAGE}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$REPO/.venv/bin/python" ]]; then : "${PYTHON:=$REPO/.venv/bin/python}"; fi
: "${PYTHON:=python}"

if [[ -z "${DATA:-}" ]]; then
    echo "$(basename "$0"): set DATA to the image-caption CSV/TSV or webdataset shards" \
         "(e.g. DATA=/data/captions.tsv IMAGE_ROOT=/data/images)" >&2
    exit 2
fi
if [[ "$STAGE" != A && "$STAGE" != B ]]; then
    echo "$(basename "$0"): STAGE must be A or B, got '$STAGE'" >&2
    exit 2
fi

# torchrun only for several processes (one process needs no launcher)
if [[ "$GPUS" -gt 1 ]]; then
    cmd=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$GPUS" -m training.alignvlm --)
else
    cmd=("$PYTHON" -m training.alignvlm)
fi
cmd+=(--train-data "$DATA" --dataset-type "$DATA_TYPE" --csv-img-key "$CSV_IMG_KEY"
    --csv-caption-key "$CSV_CAPTION_KEY" --csv-separator "$CSV_SEPARATOR"
    --connector "$CONNECTOR" --prompt "$PROMPT" --stage "$STAGE"
    --batch-size "$BATCH" --accum-freq "$ACCUM" --epochs "$EPOCHS" --lr "$LR" --w2-lr-mult "$W2_LR_MULT" --wd "$WD"
    --precision "$PRECISION" --workers "$WORKERS" --seed "$SEED" --logs "$LOGS" --name "$NAME")
if [[ -n "${VLM_PATH:-}" ]]; then
    cmd+=(--vlm smolvlm --vlm-path "$VLM_PATH")
else
    cmd+=(--model "$MODEL" --lm "$LM")
    [[ -n "$PRETRAINED" ]] && cmd+=(--pretrained "$PRETRAINED")
fi
[[ "$GRAD_CKPT" == 1 ]] && cmd+=(--grad-checkpointing)
[[ -n "$REPORT_TO" ]] && cmd+=(--report-to "$REPORT_TO")
[[ -n "${IMAGE_ROOT:-}" ]] && cmd+=(--image-root "$IMAGE_ROOT")
[[ -n "$STEPS" ]] && cmd+=(--steps "$STEPS")
[[ -n "$NUM_SAMPLES" ]] && cmd+=(--train-num-samples "$NUM_SAMPLES")
if [[ "$STAGE" == B ]]; then
    [[ "$LORA" == 1 ]] && cmd+=(--lora --lora-r "$LORA_R" --lora-alpha "$LORA_ALPHA")
    : "${INIT_FROM:=$LOGS/alignvlm-$CONNECTOR-stageA}"
    [[ -n "$INIT_FROM" ]] && cmd+=(--init-from "$INIT_FROM")
fi
cmd+=("$@")
echo "+ ${cmd[*]}" >&2
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-0}" exec "${cmd[@]}"
