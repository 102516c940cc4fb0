"""Registry of ``llm-course bench NAME`` benchmarks: each writes ``<output_dir>/<name>.json`` and a figure."""

from llm_course.linreg.bench import bench_linreg
from llm_course.sft.bench import bench_lora_memory, bench_quant_inference, bench_sft
from llm_course.text.bench import bench_imdb
from llm_course.vision.bench import bench_mnist

BENCHMARKS = {
    "linreg": bench_linreg,
    "mnist": bench_mnist,
    "imdb": bench_imdb,
    "lora-memory": bench_lora_memory,
    "quant-inference": bench_quant_inference,
    "sft": bench_sft,
}
