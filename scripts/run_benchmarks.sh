#!/usr/bin/env bash
# Runs every benchmark of the course into outputs/bench (reference data from ../shared/data when a benchmark needs it).
# Usage: bash scripts/run_benchmarks.sh [DATA_DIR]
set -euo pipefail
DATA=${1:-../shared/data}
OUT=outputs/bench
llm-course bench linreg --output_dir "$OUT"
llm-course bench mnist --test_images "$DATA/mnist/t10k-images-idx3-ubyte.gz" \
  --test_labels "$DATA/mnist/t10k-labels-idx1-ubyte.gz" --output_dir "$OUT"
llm-course bench imdb --train_file "$DATA/imdb/train.jsonl.gz" --test_file "$DATA/imdb/test.jsonl.gz" \
  --output_dir "$OUT" --overrides '["--data.init_args.max_train_samples=12000"]'
