#!/usr/bin/env bash
# DeGLA (paper recipe): ViT-B-32 QuickGELU from OpenAI weights, 8 GPUs x 32, lr 1e-6, 5 epochs, amp, K = 4,
# λ_I = λ_T = 0.1, EMA decay 0.9996. λ_D defaults to 0.005·256/(GPUS·BATCH), which keeps the distill term's
# balance with the CE terms when the global batch differs from the paper's 256 (spec degla.md §4).
#   DATA=/data/DeGLA.json IMAGE_ROOT=/data/coco bash scripts/train_degla.sh [extra training.main flags]
source "$(dirname "${BASH_SOURCE[0]}")/recipe_common.sh"
: "${MODEL:=ViT-B-32-quickgelu}" "${EMA_DECAY:=0.9996}" "${TGC_MODE:=fixed}"
: "${DISTILL_WEIGHT:=$(awk -v g="$GPUS" -v b="$BATCH" 'BEGIN { printf "%.6g", 0.005 * 256 / (g * b) }')}"
run_recipe --loss degla --degla-igc-weight 0.1 --degla-tgc-weight 0.1 --degla-distill-weight "$DISTILL_WEIGHT" \
    --degla-tgc-mode "$TGC_MODE" --ema-decay "$EMA_DECAY" -- "$@"
