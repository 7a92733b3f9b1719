#!/usr/bin/env bash
# CE-CLIP baseline as DeGLA compares it (reference train_ce_clip.sh): ViT-B-32 QuickGELU from OpenAI weights,
# 8 GPUs x 32, lr 1e-6, 5 epochs, amp, K = 4 negatives per image (slot k = negative type k),
# λ_imc 0.2, λ_cmr 0.4, adaptive per-type CMR margins, the corrected IMC (IMC_MODE=reference for the released one).
#   DATA=/data/DeGLA.json IMAGE_ROOT=/data/coco bash scripts/train_ce_clip.sh [extra training.main flags]
source "$(dirname "${BASH_SOURCE[0]}")/recipe_common.sh"
: "${MODEL:=ViT-B-32-quickgelu}" "${IMC_WEIGHT:=0.2}" "${CMR_WEIGHT:=0.4}" "${IMC_MODE:=paper}"
run_recipe --loss ce-clip --ceclip-imc-weight "$IMC_WEIGHT" --ceclip-cmr-weight "$CMR_WEIGHT" \
    --ceclip-imc-mode "$IMC_MODE" -- "$@"
