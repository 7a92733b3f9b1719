# Shared by train_degla.sh, train_negclip.sh and train_ce_clip.sh (sourced, not run): the DeGLA paper's
# fine-tuning recipe (spec degla.md §5) with every value overridable from the environment.
#
#   GPUS=8 BATCH=32 EPOCHS=5 LR=1e-6 PRECISION=amp MODEL=... PRETRAINED=openai DATA=... IMAGE_ROOT=...
#   DATA_FORMAT=degla-json|csv|jsonl|wds  K=4  WORKERS=8  LOGS=./logs  NAME=...  SEED=42
#   PYTHON (default: ./.venv/bin/python made by scripts/setup_env.sh, else python)
#   DRY_RUN=1 prints the command instead of running it
#
# MODEL is any open_clip model name (plain names such as ViT-L-14-quickgelu or ViT-B-16-SigLIP, hf-hub:/local-dir:
# names, or this package's aliases) and PRETRAINED any tag of it or a checkpoint file (empty: random init).
# Arguments given to the script are appended to training.main's flags (e.g. --device cpu, --resume latest,
# --lora-r 16 --grad-checkpointing).
set -euo pipefail

: "${GPUS:=8}" "${BATCH:=32}" "${EPOCHS:=5}" "${LR:=1e-6}" "${PRECISION:=amp}" "${PRETRAINED=openai}"
RECIPE_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$RECIPE_REPO/.venv/bin/python" ]]; then : "${PYTHON:=$RECIPE_REPO/.venv/bin/python}"; fi
: "${WORKERS:=8}" "${LOGS:=./logs}" "${SEED:=42}" "${K:=4}" "${PYTHON:=python}" "${DATA_FORMAT:=degla-json}"
COCO_TEMPLATE='train2014/COCO_train2014_{:012d}.jpg'  # a literal '}' would end a ${...:=...} default early
: "${JSON_IMAGE_KEY:=image_id}" "${JSON_IMAGE_TEMPLATE:=$COCO_TEMPLATE}"

if [[ -z "${DATA:-}" ]]; then
    echo "$(basename "$0"): set DATA to the training file (e.g. DATA=/data/DeGLA.json IMAGE_ROOT=/data/coco)" >&2
    exit 2
fi

recipe_data_flags() {
    local flags=(--train-data "$DATA" --hardneg-format "$DATA_FORMAT" --num-hardneg "$K")
    [[ -n "${IMAGE_ROOT:-}" ]] && flags+=(--hardneg-image-root "$IMAGE_ROOT")
    if [[ "$DATA_FORMAT" == degla-json || "$DATA_FORMAT" == jsonl ]]; then
        flags+=(--json-image-key "$JSON_IMAGE_KEY" --json-image-template "$JSON_IMAGE_TEMPLATE")
    fi
    printf '%s\n' "${flags[@]}"
}

# run_recipe LOSS_FLAG... -- EXTRA_ARGS...: torchrun over $GPUS processes with the shared optimiser recipe.
run_recipe() {
    local method=() extra=()
    while [[ $# -gt 0 && "$1" != "--" ]]; do method+=("$1"); shift; done
    [[ $# -gt 0 ]] && shift
    extra=("$@")
    local data=()
    mapfile -t data < <(recipe_data_flags)
    local pretrained=()
    [[ -n "$PRETRAINED" ]] && pretrained=(--pretrained "$PRETRAINED")
    local cmd=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$GPUS" -m training.main --
        --logs "$LOGS" --model "$MODEL" "${pretrained[@]}" "${data[@]}" "${method[@]}"
        --batch-size "$BATCH" --epochs "$EPOCHS" --lr "$LR" --wd 0.1 --warmup 50 --beta1 0.9 --beta2 0.98
        --eps 1e-6 --precision "$PRECISION" --workers "$WORKERS" --seed "$SEED")
    [[ -n "${NAME:-}" ]] && cmd+=(--name "$NAME")
    cmd+=("${extra[@]}")
    if [[ -n "${DRY_RUN:-}" ]]; then printf '%q ' "${cmd[@]}"; echo; exit 0; fi
    echo "+ ${cmd[*]}" >&2
    PYTHONPATH="$RECIPE_REPO${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-0}" exec "${cmd[@]}"
}
