"""Registry of ``llm-course bench NAME`` benchmarks: each writes ``<output_dir>/<name>.json`` and a figure."""

from llm_course.linreg.bench import bench_linreg

BENCHMARKS = {"linreg": bench_linreg}
