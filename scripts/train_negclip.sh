#!/usr/bin/env bash
# NegCLIP baseline (reference train_neg_clip.sh): ViT-B-32 QuickGELU from OpenAI weights, 4 GPUs x 64,
# lr 1e-6, 5 epochs, amp; hard negatives as extra image→text columns. Same data as DeGLA by default (K = 4);
# NegCLIP's own TSV: DATA_FORMAT=csv K=1 (one random negative per access).
#   DATA=/data/DeGLA.json IMAGE_ROOT=/data/coco bash scripts/train_negclip.sh [extra training.main flags]
: "${GPUS:=4}" "${BATCH:=64}"
source "$(dirname "${BASH_SOURCE[0]}")/recipe_common.sh"
: "${MODEL:=ViT-B-32-quickgelu}"
run_recipe --loss negclip -- "$@"
