#!/usr/bin/env bash
# GPU evidence kit: the seed's GPU comparisons in one command, within 8 minutes on one GPU.
#   llm-course env                the machine: GPU, CUDA/cuDNN, NCCL, library versions
#   bench precision               Module 3's fine-tune in 32-true, bf16-mixed, bf16-true, 16-mixed (fp16 autocast +
#                                 GradScaler) and 16-true, and the plain loop: samples/s, CUDA peak memory, loss
#   bench quant-inference         SmolLM2 in fp16 vs int8 vs nf4 weights: first token, decode tokens/s, CUDA peak
#                                 memory, perplexity
#   bench lora-memory             full fine-tune vs LoRA vs QLoRA, in CUDA memory
#   bench serve                   the OpenAI-compatible API at 1 and 16 concurrent streaming clients
# Each step writes its JSON (and figure) into OUTPUT_DIR: env.json, precision.json, quant-inference.json,
# lora-memory.json, serve.json; gpu_check.json says how each step ended and how long it took. A step that fails is
# reported and the others still run; the exit status is then 1.
#
# Usage: bash scripts/gpu_check.sh [--dry_run] [OUTPUT_DIR]    (default outputs/gpu_check, outputs/gpu_check_dry)
#   --dry_run     every step on the CPU at tiny sizes, on tiny models built here (about 80 s of CPU time, 1.5 to 2
#                 minutes on 2 cores): CI runs it (tests/test_gpu_check.py), so the kit is ready the day a GPU is there
#   PYTHON=...    the interpreter (default .venv/bin/python where it exists, else python3)
#   REVIEWS=...   labelled reviews for bench precision (default ../shared/data/imdb/train.jsonl.gz where it exists,
#                 else synthetic reviews written here: right for speed and memory, meaningless for F1)
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
if [ "${1:-}" = --dry_run ]; then
  DRY_RUN=1
  shift
fi
OUT=${1:-outputs/gpu_check$([ "$DRY_RUN" = 0 ] || echo _dry)}
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  [ ! -x .venv/bin/python ] || PYTHON=.venv/bin/python
fi
LLM=("$PYTHON" -m llm_course)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
INPUTS="$OUT/inputs"
SUMMARY=()
FAILED=0

step() {  # step NAME COMMAND...: one step, its command shown first; its status and time go to gpu_check.json
  local name=$1 start=$SECONDS status=ok
  shift
  printf '\n==> %s: %s\n' "$name" "$*"
  "$@" || { status=failed && FAILED=1; }
  printf '==> %s: %s in %d s\n' "$name" "$status" $((SECONDS - start))
  SUMMARY+=("\"$name\": {\"status\": \"$status\", \"seconds\": $((SECONDS - start))}")
}
environment() { "${LLM[@]}" env --as_json true >"$OUT/env.json"; }

if [ "$DRY_RUN" = 1 ]; then
  export OMP_NUM_THREADS=1  # tiny ops: on a small shared CPU a second thread only waits
  "$PYTHON" scripts/gpu_check_inputs.py "$INPUTS" --tiny --reviews 200
  REVIEWS=$INPUTS/reviews.jsonl
  ACCELERATOR=cpu
  DEVICE=cpu
  SERVE_WEIGHTS=fp32
  PRECISIONS='[32-true, 16-mixed]'  # 16-mixed: listed with its reason on a CPU
  BERT=(--model_name_or_path "$INPUTS/tiny_bert")
  PRECISION_SIZE=(--steps 3 --warmup_steps 1 --batch_size 4 --max_length 32 --val_fraction 0.1)
  LM=(--model "$INPUTS/tiny_llama")
  # every format/setting in the bench's own process (not one each): seconds instead of a minute; memory then overlaps
  QUANT_SIZE=(--max_new_tokens 3 --n_eval 4 --prompts '[Say hi.]' --fresh_process false)
  LORA_SIZE=(--batch_size 1 --seq_len 16 --steps 1 --lora_r 2 --fresh_process false)
  SERVE_SIZE=(--min_requests 2 --paired_requests 2 --max_tokens 4)
else
  if ! "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "error: $PYTHON sees no CUDA device; on a CPU run: bash scripts/gpu_check.sh --dry_run" >&2
    exit 2
  fi
  if [ -z "${REVIEWS:-}" ]; then
    REVIEWS=../shared/data/imdb/train.jsonl.gz
    if [ ! -f "$REVIEWS" ]; then
      "$PYTHON" scripts/gpu_check_inputs.py "$INPUTS" --reviews 2000
      REVIEWS=$INPUTS/reviews.jsonl
    fi
  fi
  ACCELERATOR=gpu
  DEVICE=cuda
  SERVE_WEIGHTS=bf16
  PRECISIONS='[32-true, bf16-mixed, bf16-true, 16-mixed, 16-true]'
  BERT=()
  PRECISION_SIZE=(--steps 48)
  LM=()
  QUANT_SIZE=()
  LORA_SIZE=()
  SERVE_SIZE=(--paired_requests 8)
fi
# bench serve starts its servers on PORT and PORT + 1: two free ports in a row
PORT=$("$PYTHON" -c '
import random, socket
def free(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0
print(next(p for p in iter(lambda: random.randrange(20000, 60000), None) if free(p) and free(p + 1)))')

step env environment
step precision "${LLM[@]}" bench precision --train_file "$REVIEWS" --output_dir "$OUT" --accelerator "$ACCELERATOR" \
  --precisions "$PRECISIONS" --pair_repeats 1 --compile false ${BERT[@]+"${BERT[@]}"} "${PRECISION_SIZE[@]}"
step quant-inference "${LLM[@]}" bench quant-inference --output_dir "$OUT" --modes '[fp16, int8, nf4]' \
  ${LM[@]+"${LM[@]}"} ${QUANT_SIZE[@]+"${QUANT_SIZE[@]}"}
step lora-memory "${LLM[@]}" bench lora-memory --output_dir "$OUT" ${LM[@]+"${LM[@]}"} \
  ${LORA_SIZE[@]+"${LORA_SIZE[@]}"}
step serve "${LLM[@]}" bench serve --output_dir "$OUT" --device "$DEVICE" --weights "$SERVE_WEIGHTS" \
  --clients '[1, 16]' --port "$PORT" ${LM[@]+"${LM[@]}"} "${SERVE_SIZE[@]}"

mode=$([ "$DRY_RUN" = 1 ] && echo dry_run || echo gpu)
steps=$(IFS=,; echo "${SUMMARY[*]}")
printf '{"mode": "%s", "output_dir": "%s", "seconds": %d, "steps": {%s}}\n' "$mode" "$OUT" "$SECONDS" "$steps" \
  >"$OUT/gpu_check.json"
printf '\n==> gpu_check (%s): %s in %d s; the reports are in %s\n' "$mode" \
  "$([ "$FAILED" = 0 ] && echo "every step ok" || echo "a step FAILED (see above)")" "$SECONDS" "$OUT"
exit "$FAILED"
