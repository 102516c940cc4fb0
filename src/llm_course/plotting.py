"""Figures for benchmarks and reports, drawn on ``matplotlib.figure.Figure`` objects.

Nothing here touches ``pyplot`` or sets a backend: a ``Figure`` saves through the Agg canvas by itself, so the
benchmarks draw headless and ``import llm_course`` in a notebook leaves the user's backend alone. Imported only
by code that draws.
"""

from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def subplots(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6.4, 4.8)) -> tuple[Figure, Any]:
    """A new figure and its axes, like ``plt.subplots`` but without pyplot's global state."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols)


def plot_confusion_matrix(
    cm: Any, class_names: list[str] | tuple[str, ...], title: str = "Confusion matrix", ax: Axes | None = None
) -> Figure:
    """Heat map of a confusion matrix (rows: true class, columns: predicted), with counts in the cells.

    Draws into ``ax`` when given (a panel of a larger figure), else into a new figure.
    """
    cm = np.asarray(cm)
    k = len(cm)
    if ax is None:
        _, ax = subplots(figsize=(max(4.5, 1.0 + 0.55 * k), max(4.0, 0.8 + 0.5 * k)))
    ax.imshow(cm, cmap="Blues")
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(class_names, rotation=45, ha="right")
    ax.set_yticklabels(class_names)
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > threshold else "black")  # fmt: skip
    ax.figure.tight_layout()
    return ax.figure


def curves_and_confusion(
    history: list[dict[str, float]],
    x_key: str,
    curves: dict[str, str],
    test_label: str,
    test_value: float,
    cm: Any,
    class_names: list[str] | tuple[str, ...],
    title: str,
    cm_title: str,
    ylim: tuple[float, float] | None = None,
) -> Figure:
    """The classification benchmarks' figure: validation curves with the test score as a line, and the test
    confusion matrix beside them.

    Args:
        history: one dict of logged scalars per validation (``callbacks.History``).
        x_key: the history key on the x axis (``epoch`` or ``step``).
        curves: history key → legend label, one line each.
        test_label: legend label of the test score line.
        test_value: the test score.
        cm: the test confusion matrix.
        class_names: class names of the matrix.
        title: title of the curve panel.
        cm_title: title of the matrix panel.
        ylim: y range of the curve panel.
    """
    fig, (ax1, ax2) = subplots(1, 2, figsize=(12, 5))
    xs = [e[x_key] for e in history]
    for (key, label), marker in zip(curves.items(), "os^v", strict=False):
        ax1.plot(xs, [e.get(key, float("nan")) for e in history], f"{marker}-", label=label)
    ax1.axhline(test_value, color="k", ls="--", lw=1, label=f"{test_label} {test_value:.4f}")
    ax1.set(xlabel="optimizer step" if x_key == "step" else x_key, ylabel="score", title=title)
    if ylim:
        ax1.set_ylim(*ylim)
    ax1.legend(loc="lower right")
    plot_confusion_matrix(cm, class_names, cm_title, ax=ax2)
    return fig
