#!/usr/bin/env bash
# Reproduces every number of the README's results table with the README's exact commands, one benchmark at a
# time (run it with the machine to itself: the timings are part of the results), then copies each JSON and figure
# next to the README's figure (notes/figures/), so every number traces to a committed file.
# Usage: bash scripts/run_benchmarks.sh [DATA_DIR] [NAME ...]   (default ../shared/data and every benchmark;
# names: linreg mnist imdb imdb-fp32 precision ddp sft lora-memory quant-inference serve onnx rag agent vision). Roughly 2-3 h on a 2-core CPU,
# the two IMDb runs 46 min of it (this Xeon with AMX).
set -euo pipefail
DATA=${1:-../shared/data}
shift || true
WANTED=${*:-linreg mnist imdb imdb-fp32 precision ddp sft lora-memory quant-inference serve onnx rag agent vision}
FIGURES=notes/figures

publish() {  # publish OUTPUT_DIR NAME FIGURE_STEM: the JSON and the PNG, under the README figure's name
  cp "$1/$2.json" "$FIGURES/$3.json"
  cp "$1/$2.png" "$FIGURES/$3.png"
}

for name in $WANTED; do
  case $name in
    linreg)
      llm-course bench linreg --output_dir outputs/bench
      publish outputs/bench linreg module1_linreg ;;
    mnist)
      llm-course bench mnist --test_images "$DATA/mnist/t10k-images-idx3-ubyte.gz" \
        --test_labels "$DATA/mnist/t10k-labels-idx1-ubyte.gz" --output_dir outputs/bench
      publish outputs/bench mnist module2_mnist ;;
    imdb)
      llm-course bench imdb --train_file "$DATA/imdb/train.jsonl.gz" --test_file "$DATA/imdb/test.jsonl.gz" \
        --output_dir outputs/bench
      publish outputs/bench imdb module3_imdb ;;
    imdb-fp32)  # Module 4's "before": imdb.yaml as it was (fp32, token embeddings trained), same machine
      llm-course bench imdb --train_file "$DATA/imdb/train.jsonl.gz" --test_file "$DATA/imdb/test.jsonl.gz" \
        --output_dir outputs/bench_fp32 --overrides '["--trainer.precision=32-true", "--model.init_args.freeze_embeddings=false"]'
      cp outputs/bench_fp32/imdb.json "$FIGURES/module3_imdb_fp32.json" ;;
    precision)
      llm-course bench precision --train_file "$DATA/imdb/train.jsonl.gz" --output_dir outputs/bench
      publish outputs/bench precision module4_amp_vs_fp32 ;;
    ddp)
      llm-course bench ddp --train_file "$DATA/imdb/train.jsonl.gz" --output_dir outputs/bench --accelerate true
      publish outputs/bench ddp module5_ddp ;;
    sft)
      llm-course bench sft --train_file "$DATA/instructions/alpaca_libre.jsonl.gz" --output_dir outputs/bench \
        --where '{"status": "ok"}' --max_steps 50 \
        --overrides '["--trainer.precision=32-true", "--trainer.val_check_interval=50"]'
      publish outputs/bench sft module6_sft ;;
    lora-memory)
      llm-course bench lora-memory --output_dir outputs/bench/mem --steps 1
      publish outputs/bench/mem lora-memory module6_memory ;;
    quant-inference)
      OMP_NUM_THREADS=1 llm-course bench quant-inference --output_dir outputs/bench/q24 --max_new_tokens 16
      publish outputs/bench/q24 quant-inference module6_quant ;;
    serve)
      llm-course bench serve --output_dir outputs/bench
      publish outputs/bench serve module7_serve ;;
    onnx)  # a short Module 3 run to export (notes/07), then the export and its onnxruntime check
      rm -rf outputs/onnx_run
      llm-course fit --config configs/imdb.yaml --data.init_args.train_file "$DATA/imdb/train.jsonl.gz" \
        --data.init_args.test_file "$DATA/imdb/test.jsonl.gz" --data.init_args.max_train_samples 2000 \
        --trainer.val_check_interval 1.0 --trainer.precision 32-true --model.init_args.freeze_embeddings false \
        --trainer.default_root_dir outputs/onnx_run  # as measured: fp32, token table trained
      llm-course export onnx --model_dir outputs/onnx_run/tensorboard_logs/version_0/hf_model --output_dir outputs/onnx \
        --check_file "$DATA/imdb/test.jsonl.gz" --max_check_samples 1000
      cp outputs/onnx/export.json "$FIGURES/module7_onnx.json" ;;
    vision)  # Fashion-MNIST from Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)
      llm-course bench vision --test_images "$DATA/mnist/t10k-images-idx3-ubyte.gz" \
        --test_labels "$DATA/mnist/t10k-labels-idx1-ubyte.gz" --output_dir outputs/bench
      publish outputs/bench vision module2_vision ;;
    rag)
      llm-course bench rag --output_dir outputs/bench
      publish outputs/bench rag module8_rag ;;
    agent)  # the tool-use LoRA first (notes/09), then the desk and the tasks, base and LoRA side by side
      rm -rf outputs/agent_lora
      llm-course agent-data --output_dir outputs/tooluse --n 600 --seed 0
      llm-course fit --config configs/agent_lora.yaml
      llm-course bench agent --output_dir outputs/bench --adapter outputs/agent_lora/tensorboard_logs/version_0/adapter
      publish outputs/bench agent module8_agent ;;
    *)
      echo "unknown benchmark $name" >&2; exit 2 ;;
  esac
done
