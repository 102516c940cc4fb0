"""The tour's report: ``tour.json`` (every number, with machine and versions), ``report.md`` (figures as PNG files
beside it) and ``report.html``, one self-contained page with the figures inline as base64 PNG."""

import base64
import html
import io
import json
import time
from pathlib import Path
from typing import Any

from llm_course.reports import atomic_write_text, machine, write_report


def write(out: Path, results: list[Any], meta: dict[str, Any]) -> Path:
    """Write the report of ``results`` (``StepResult``) into ``out``; returns the HTML page's path."""
    from llm_course.tour.command import as_dict

    meta = {**meta, "output_dir": str(out), "date": time.strftime("%Y-%m-%d %H:%M %Z"), "cpu": cpu_model(),
            "machine": machine()}  # fmt: skip
    steps = json.loads(json.dumps([as_dict(r) for r in results], default=str))  # any odd value as text
    write_report(out, "tour", {**{k: v for k, v in meta.items() if k != "machine"}, "steps": steps})
    figures = {}
    (out / "figures").mkdir(exist_ok=True)
    for r in results:
        draw = FIGURES.get(r.name)
        if r.status == "ok" and draw is not None and r.plot:
            fig = draw(r.plot)
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
            (out / "figures" / f"{r.name}.png").write_bytes(buffer.getvalue())
            figures[r.name] = base64.b64encode(buffer.getvalue()).decode("ascii")
    atomic_write_text(out / "report.md", markdown(results, meta, figures))
    return atomic_write_text(out / "report.html", page(results, meta, figures))


def value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3e}" if v and (abs(v) < 1e-3 or abs(v) >= 1e5) else f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {value(x)}" for k, x in v.items())
    return str(v)


def summary(meta: dict[str, Any], results: list[Any]) -> str:
    ok = sum(r.status == "ok" for r in results)
    m = meta["machine"]
    return (f"{ok} of {len(results)} steps ok in {meta['total_seconds'] / 60:.1f} min, {meta['mode']} mode, "
            f"{meta['date']}; {meta['cpu']}, {m['cpu_count']} CPUs, devices: {', '.join(m['devices'])}")  # fmt: skip


def logged(log: str, meta: dict[str, Any]) -> str:
    """A step's log path, relative to the report's folder where it lies inside it."""
    path = Path(log)
    return str(path.relative_to(meta["output_dir"])) if path.is_relative_to(meta["output_dir"]) else log


def cpu_model() -> str:
    """The CPU's model name (as ``lscpu`` shows it), or the architecture where /proc/cpuinfo has none."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown(results: list[Any], meta: dict[str, Any], figures: dict[str, str]) -> str:
    lines = ["# llm-course tour", "", summary(meta, results), "", "| step | status | seconds | headline |",
             "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r.title} | {r.status} | {r.seconds} | {r.headline or r.error} |" for r in results]
    for r in results:
        lines += ["", f"## {r.title}", "", f"**{r.status}** in {r.seconds} s: {r.headline or r.error}", ""]
        for key, v in r.metrics.items():
            if isinstance(v, list):
                lines += [f"- {key}:", *[f"  - {x}" for x in v]]
            else:
                lines.append(f"- {key}: {value(v)}")
        if r.name in figures:
            lines += ["", f"![{r.title}](figures/{r.name}.png)"]
        lines += ["", f"Log: `{logged(r.log, meta)}`"]
    return "\n".join(lines) + "\n"


STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;
vertical-align:top}.ok{color:#176f2c;font-weight:bold}.failed{color:#b00020;font-weight:bold}
.skipped{color:#8a6d00;font-weight:bold}img{max-width:100%;border:1px solid #eee}code{font-size:.9em}"""


def page(results: list[Any], meta: dict[str, Any], figures: dict[str, str]) -> str:
    e = html.escape
    rows = "".join(f"<tr><td><a href='#{r.name}'>{e(r.title)}</a></td><td class='{r.status}'>{r.status}</td>"
                   f"<td>{r.seconds}</td><td>{e(r.headline or r.error or '')}</td></tr>" for r in results)  # fmt: skip
    head = "<tr><th>step</th><th>status</th><th>seconds</th><th>headline</th></tr>"
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>llm-course tour</title>"
             f"<style>{STYLE}</style></head><body><h1>llm-course tour</h1><p>{e(summary(meta, results))}</p>"
             f"<table>{head}{rows}</table>"]  # fmt: skip
    for r in results:
        items = []
        for key, v in r.metrics.items():
            listed = "".join(f"<li>{e(str(x))}</li>" for x in v) if isinstance(v, list) else None
            shown = f"<ul>{listed}</ul>" if listed is not None else e(value(v))
            items.append(f"<tr><th>{e(key)}</th><td>{shown}</td></tr>")
        figure = (f"<img alt='{e(r.title)}' src='data:image/png;base64,{figures[r.name]}'>" if r.name in figures
                  else "")  # fmt: skip
        parts.append(f"<section id='{r.name}'><h2>{e(r.title)}</h2><p><span class='{r.status}'>{r.status}</span> in "
                     f"{r.seconds} s: {e(r.headline or r.error or '')}</p><table>{''.join(items)}</table>{figure}"
                     f"<p>Log: <code>{e(logged(r.log, meta))}</code></p></section>")  # fmt: skip
    return "".join(parts) + "</body></html>\n"


# ---- figures, one per step that has one, from the step's ``plot`` data ------------------------------------------
def linreg_figure(plot: dict[str, Any]) -> Any:
    from llm_course.plotting import subplots

    fig, ax = subplots(figsize=(7, 3.5))
    n = len(plot["true"])
    xs = range(n)
    for offset, (key, label) in zip((-0.25, 0, 0.25), (("true", "true"), ("hand", "hand loop"), ("trainer", "Trainer")),
                                    strict=True):  # fmt: skip
        ax.bar([x + offset for x in xs], plot[key], width=0.25, label=label)
    ax.set_xticks(list(xs), [f"w{i}" for i in range(n - 1)] + ["b"])
    ax.set(title="Linear regression: learned weights", ylabel="value")
    ax.legend()
    return fig


def classifier_figure(title: str, x_key: str, curves: dict[str, str]) -> Any:
    def draw(plot: dict[str, Any]) -> Any:
        from llm_course.plotting import plot_confusion_matrix, subplots

        fig, (left, right) = subplots(1, 2, figsize=(11, 4.2))
        xs = [e[x_key] + (x_key == "epoch") for e in plot["history"]]  # epochs counted from 1
        for key, label in curves.items():
            left.plot(xs, [e.get(key, float("nan")) for e in plot["history"]], "o-", label=label)
        left.set(xlabel=x_key, ylabel="score", title=title)
        left.legend(loc="lower right")
        plot_confusion_matrix(plot["confusion"], plot["classes"], "Test confusion matrix", ax=right)
        return fig

    return draw


def clipping_figure(plot: dict[str, Any]) -> Any:
    from llm_course.plotting import subplots

    fig, ax = subplots(figsize=(7, 3.5))
    steps = range(1, len(plot["before"]) + 1)
    ax.plot(steps, plot["before"], "o-", label="before clipping")
    ax.plot(steps, plot["after"], "s-", label="after clipping")
    ax.axhline(plot["clip"], color="k", ls="--", lw=1, label=f"gradient_clip_val {plot['clip']}")
    ax.set(xlabel="optimizer step", ylabel="total gradient norm", title="Gradient clipping (4 batches per step)")
    ax.legend()
    return fig


def lora_figure(plot: dict[str, Any]) -> Any:
    from llm_course.plotting import subplots

    fig, ax = subplots(figsize=(5, 3.5))
    ax.bar(["base model", "with LoRA"], [plot["before"], plot["after"]], color=["#999", "#2a7"])
    ax.set(ylabel="held-out response loss", title="LoRA fine-tune: held-out loss")
    return fig


def onnx_figure(plot: dict[str, Any]) -> Any:
    from llm_course.plotting import subplots

    fig, (left, right) = subplots(1, 2, figsize=(10, 3.5))
    names = list(plot["latency_ms"])
    left.bar(names, [plot["latency_ms"][n] for n in names], color="#47a")
    left.set(ylabel="ms per batch", title=f"Latency, {plot['threads']} threads")
    right.bar(names, [plot["size_mb"][n] for n in names], color="#a74")
    right.set(ylabel="MB", title="Model size")
    return fig


FIGURES = {
    "m1_linreg": linreg_figure,
    "m2_cnn": classifier_figure("CNN on MNIST digits: validation", "epoch", {"val/acc": "val accuracy",
                                                                             "val/f1": "val macro F1"}),
    "m3_text": classifier_figure("Sentiment classifier: validation", "step", {"val/f1": "val F1",
                                                                             "val/acc": "val accuracy"}),
    "m4_training": clipping_figure,
    "m6_lora": lora_figure,
    "m7_onnx": onnx_figure,
}  # fmt: skip
