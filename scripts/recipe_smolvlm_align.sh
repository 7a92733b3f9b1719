#!/usr/bin/env bash
# The seed's AlignVLM recipe (mvish7/AlignVLM) through this package: ALIGN inside SmolVLM, PixMo-Cap then
# Localized Narratives, zero- and few-shot COCO Karpathy captioning. Every value overridable from the environment.
#
#   1. prepare: PixMo-Cap parquet (image URLs, fetched with --download) and the_cauldron's Localized Narratives
#      parquet -> webdataset shards (a folder of shards + sizes.json is a --train-data); COCO Karpathy dataset_coco.json -> the test split (evaluated) and the val
#      split (few-shot support) in the evaluation format;
#   2. stage A on PixMo-Cap: the ALIGN connector alone, SmolVLM frozen (spec §4: AdamW lr 1e-3, cosine, ~3% warm-up);
#   3. stage B on Localized Narratives: LoRA r = alpha = 64 on the text model + the connector, from stage A
#      (the seed's lr 1e-4, batch 4 x accumulation 8, gradient checkpointing);
#   4. COCO Karpathy test: zero-shot and SHOTS-shot (examples drawn from the val split), greedy, 30 new tokens.
#
#   VLM_PATH=/models/SmolVLM2-500M-Video-Instruct PIXMO='/data/pixmo-cap/data/*.parquet' \
#   LN='/data/the_cauldron/localized_narratives/*.parquet' COCO_KARPATHY=/data/coco/dataset_coco.json \
#   COCO_ROOT=/data/coco bash scripts/recipe_smolvlm_align.sh
#
#   OUT=./smolvlm_align  PIXMO_ROWS=100000 LN_ROWS=200000 (--limit; empty: all)  BATCH=4 ACCUM=8 STEPS= (empty:
#   1 epoch)  LR_A=1e-3 LR_B=1e-4  LORA_R=64 LORA_ALPHA=64  PRECISION=amp_bf16  DEVICE= (default cuda if available)
#   WORKERS=6  SHOTS=2  EVAL_LIMIT= (empty: the whole test split)  PYTHON (default ./.venv/bin/python if present)
#   DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail

: "${OUT:=./smolvlm_align}" "${PIXMO_ROWS=100000}" "${LN_ROWS=200000}" "${BATCH:=4}" "${ACCUM:=8}" "${STEPS:=}"
: "${LR_A:=1e-3}" "${LR_B:=1e-4}" "${LORA_R:=64}" "${LORA_ALPHA:=64}" "${PRECISION:=amp_bf16}" "${DEVICE:=}"
: "${WORKERS:=6}" "${SHOTS:=2}" "${EVAL_LIMIT:=}" "${DRY_RUN:=0}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$REPO/.venv/bin/python" ]]; then : "${PYTHON:=$REPO/.venv/bin/python}"; fi
: "${PYTHON:=python}"

for var in VLM_PATH PIXMO LN COCO_KARPATHY COCO_ROOT; do
    if [[ -z "${!var:-}" ]]; then
        echo "$(basename "$0"): set $var (see the header of this script)" >&2
        exit 2
    fi
done

run() {
    if [[ "$DRY_RUN" == 1 ]]; then
        printf '%q ' "$@"
        echo
    else
        echo "+ $*" >&2
        PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" "$@"
    fi
}

# shellcheck disable=SC2206  # the source variables are glob patterns: expand them here
pixmo_files=($PIXMO)
# shellcheck disable=SC2206
ln_files=($LN)
limit_pixmo=(); [[ -n "$PIXMO_ROWS" ]] && limit_pixmo=(--limit "$PIXMO_ROWS")
limit_ln=(); [[ -n "$LN_ROWS" ]] && limit_ln=(--limit "$LN_ROWS")
steps=(); [[ -n "$STEPS" ]] && steps=(--steps "$STEPS")
device=(); [[ -n "$DEVICE" ]] && device=(--device "$DEVICE")
eval_limit=(); [[ -n "$EVAL_LIMIT" ]] && eval_limit=(--limit "$EVAL_LIMIT")
common=(--vlm smolvlm --vlm-path "$VLM_PATH" --connector align --batch-size "$BATCH" --accum-freq "$ACCUM"
        --grad-checkpointing --precision "$PRECISION" --workers "$WORKERS" --logs "$OUT/runs" "${steps[@]}"
        "${device[@]}")

# 1. data
run -m open_clip_align.vlm.prepare pixmo-cap "${pixmo_files[@]}" --download "${limit_pixmo[@]}" --format wds \
    --out "$OUT/data/pixmo"
run -m open_clip_align.vlm.prepare localized-narratives "${ln_files[@]}" "${limit_ln[@]}" --format wds \
    --out "$OUT/data/ln"
run -m open_clip_align.vlm.prepare coco-karpathy "$COCO_KARPATHY" --split test --image-root "$COCO_ROOT" \
    --format karpathy --out "$OUT/data/coco"
run -m open_clip_align.vlm.prepare coco-karpathy "$COCO_KARPATHY" --split val --image-root "$COCO_ROOT" \
    --format karpathy --out "$OUT/data/coco"

# 2. stage A: the connector alone on PixMo-Cap
run -m training.alignvlm --train-data "$OUT/data/pixmo" "${common[@]}" --stage A --lr "$LR_A" \
    --name stage-a
# 3. stage B: LoRA + connector on Localized Narratives, from stage A
run -m training.alignvlm --train-data "$OUT/data/ln" "${common[@]}" --stage B --lora \
    --lora-r "$LORA_R" --lora-alpha "$LORA_ALPHA" --lr "$LR_B" --init-from "$OUT/runs/stage-a" --name stage-b
# 4. COCO Karpathy test, zero- and few-shot
run -m open_clip_align.vlm.evaluate --checkpoint "$OUT/runs/stage-b" --data "$OUT/data/coco/coco_karpathy_test.json" \
    --image-root "$COCO_ROOT" "${eval_limit[@]}" "${device[@]}" --out "$OUT/eval/zero-shot"
run -m open_clip_align.vlm.evaluate --checkpoint "$OUT/runs/stage-b" --data "$OUT/data/coco/coco_karpathy_test.json" \
    --image-root "$COCO_ROOT" "${eval_limit[@]}" "${device[@]}" --shots "$SHOTS" \
    --support "$OUT/data/coco/coco_karpathy_val.json" --out "$OUT/eval/$SHOTS-shot"
