"""``llm-course bench rag-lora``: the grounded-answer LoRA's training curve, read back from its TensorBoard run."""

from pathlib import Path
from typing import Any

from llm_course.errors import MissingFileError
from llm_course.reports import write_report

TAGS = ("train/loss_step", "val/loss", "lr-AdamW")


def read_scalars(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    """``tag -> [(step, value)]`` of the scalars in a run folder's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not any(Path(run_dir).glob("events.out.tfevents.*")):
        raise MissingFileError(f"--run_dir {run_dir}: no TensorBoard event file; pass the run folder of `llm-course "
                               "fit --config configs/rag_lora.yaml` (its tensorboard_logs/version_N)")  # fmt: skip
    events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def bench_rag_lora(run_dir: str = "outputs/rag_lora/tensorboard_logs/version_0",
                   output_dir: str = "outputs/bench") -> dict[str, str]:  # fmt: skip
    """Write ``rag_lora.json`` (training and validation loss by step, the run's data summary) and ``rag_lora.png``.

    Args:
        run_dir: the run folder of ``llm-course fit --config configs/rag_lora.yaml``.
        output_dir: where the JSON and the figure go.
    """
    scalars = read_scalars(run_dir)
    results: dict[str, Any] = {"run_dir": run_dir, "curves": {t: scalars[t] for t in TAGS if t in scalars}}
    val = scalars.get("val/loss", [])
    if val:
        results["val_loss_first"], results["val_loss_last"] = val[0][1], val[-1][1]
    path = write_report(output_dir, "rag_lora", results, figure(results))
    return {"json": str(path), "png": str(Path(output_dir) / "rag_lora.png")}


def figure(results: dict[str, Any]) -> Any:
    from llm_course.plotting import subplots

    fig, ax = subplots(1, 1, figsize=(7, 4))
    for tag, label in (("train/loss_step", "training loss (one batch, as logged)"), ("val/loss", "validation loss")):
        points = results["curves"].get(tag, [])
        if points:
            ax.plot(*zip(*points, strict=True), marker="o" if tag == "val/loss" else None, label=label)
    ax.set(xlabel="optimizer step", ylabel="loss", title="grounded-answer LoRA (RAFT data), SmolLM2-135M")
    ax.legend()
    fig.tight_layout()
    return fig
