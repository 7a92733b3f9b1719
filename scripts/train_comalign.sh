#!/usr/bin/env bash
# ComAlign head training (spec comalign.md §6; the paper's recipe was not released, this is the project's
# reconstruction): comalign-ViT-B-32 (frozen OpenAI CLIP, QuickGELU) + the 3.5M-parameter head, trained on
# precomputed components (a store from python -m open_clip_align.comalign.embed over COCO train2017) with
# AdamW lr 1e-4, wd 0.05, cosine, 500 warmup steps, global batch 256, 15 epochs, τ = 0.07, masked padding.
#
#   DATA=train2017_components.h5 bash scripts/train_comalign.sh [extra training.main flags]
#
# Environment overrides: GPUS BATCH EPOCHS LR WD WARMUP PRECISION MODEL PRETRAINED DATA WORKERS LOGS NAME SEED
# TEMPERATURE SMOOTH_MAX (0 = hard max) PADDING (masked|reference) PYTHON. For on-the-fly views instead of a
# store pass DATA=captions.json COMALIGN_DATA=images and the --comalign-boxes flags as extra arguments.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$REPO/.venv/bin/python" ]]; then : "${PYTHON:=$REPO/.venv/bin/python}"; fi
: "${PYTHON:=python}" "${GPUS:=1}" "${BATCH:=256}" "${EPOCHS:=15}" "${LR:=1e-4}" "${WD:=0.05}" "${WARMUP:=500}"
: "${PRECISION:=amp}" "${MODEL:=comalign-ViT-B-32}" "${PRETRAINED=openai}" "${WORKERS:=4}" "${LOGS:=./logs}"
: "${SEED:=0}" "${TEMPERATURE:=0.07}" "${SMOOTH_MAX:=0}" "${PADDING:=masked}" "${COMALIGN_DATA:=features}"

if [[ -z "${DATA:-}" ]]; then
    echo "$(basename "$0"): set DATA to a component store (e.g. DATA=train2017_components.h5, written by" \
         "python -m open_clip_align.comalign.embed)" >&2
    exit 2
fi

pretrained=()
[[ -n "$PRETRAINED" ]] && pretrained=(--pretrained "$PRETRAINED")
cmd=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$GPUS" -m training.main --
    --logs "$LOGS" --model "$MODEL" "${pretrained[@]}" --loss comalign --comalign-data "$COMALIGN_DATA"
    --train-data "$DATA" --comalign-temperature "$TEMPERATURE" --comalign-smooth-max "$SMOOTH_MAX"
    --comalign-padding "$PADDING" --batch-size "$BATCH" --epochs "$EPOCHS" --lr "$LR" --wd "$WD"
    --warmup "$WARMUP" --precision "$PRECISION" --workers "$WORKERS" --seed "$SEED")
[[ -n "${NAME:-}" ]] && cmd+=(--name "$NAME")
cmd+=("$@")
echo "+ ${cmd[*]}" >&2
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-0}" exec "${cmd[@]}"
