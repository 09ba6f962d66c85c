"""Plots of benchmark results (matplotlib, Agg) and the published points they are compared with.

Points run under several seeds are drawn at their means with error bars of one sample
standard deviation in both coordinates (`cdl_tf.aggregate`).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List

from cdl_tf.aggregate import summarize

KB = 1000


@dataclasses.dataclass(frozen=True)
class Published:
    """A compressed size and test error reported in a paper (float activations)."""

    source: str
    model: str  # name in `cdl_tf.models.MODELS`
    label: str  # the paper's name of the model
    kb: float
    error: float


PUBLISHED = (
    Published("Oktay et al. 2020 (EPR)", "lenet300_100", "LeNet-300-100", 8.56, 0.019),
    Published("Oktay et al. 2020 (EPR)", "lenet5", "LeNet-5-Caffe", 2.84, 0.010),
    Published("Deep Compression (Han et al. 2016)", "lenet300_100", "LeNet-300-100", 27.0, 0.0158),
    Published("Deep Compression (Han et al. 2016)", "lenet5", "LeNet-5", 44.0, 0.0074),
)

PLOTS = ("accuracy_vs_bits_per_weight.png", "accuracy_vs_bits_per_activation.png", "error_vs_coded_kb.png")
_MARKERS = {"float": "s", "tfmot8": "^", "ptq8": "v", "ste": "D", "cdl": "o", "rcdl": "P", "epr": "d"}
_PUBLISHED_MARKERS = ("*", "X", "h", "p")


def published_points(model: str) -> List[Dict[str, Any]]:
    """The published points of ``model`` as dicts."""
    return [dataclasses.asdict(p) for p in PUBLISHED if p.model == model]


def _series(entries: List[Dict[str, Any]], x: str, y: str) -> Dict[str, tuple]:
    """Method -> (xs, ys, x stds, y stds) sorted by x, in the order methods first appear; summary
    entries without x are left out."""
    out: Dict[str, list] = {}
    for e in entries:
        if e[x] is not None:
            out.setdefault(e["method"], []).append((e[x], e[y], e[f"{x}_std"], e[f"{y}_std"]))
    return {m: tuple(zip(*sorted(pts))) for m, pts in out.items()}


def _axes(xlabel: str, ylabel: str, title: str, log_base: int):
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.set_xscale("log", base=log_base)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
    return fig, ax


def _lines(ax, entries, x: str, y: str, scale: float = 1.0, nominal: bool = False) -> None:
    kinds = {e["method"]: e.get("activation_bits_kind") for e in entries}
    for method, (xs, ys, x_std, y_std) in _series(entries, x, y).items():
        label = method + (" (nominal)" if nominal and kinds[method] == "nominal" else "")
        ys, y_std = [scale * v for v in ys], [scale * v for v in y_std]
        if any(x_std) or any(y_std):
            ax.errorbar(xs, ys, xerr=x_std, yerr=y_std, marker=_MARKERS.get(method, "o"), capsize=2, label=label)
        else:
            ax.plot(xs, ys, marker=_MARKERS.get(method, "o"), label=label)


def _published(ax, published, xs, ys) -> None:
    for p, x, y, marker in zip(published, xs, ys, _PUBLISHED_MARKERS):
        ax.scatter([x], [y], marker=marker, s=140, color="black", zorder=3,
                   label=f"published: {p['source']}, {p['label']}")


def plot_results(results: Dict[str, Any], outdir: str) -> List[str]:
    """Draw `PLOTS` from a ``results.json`` dict into ``outdir``; returns their file names."""
    if not results["rows"]:
        raise ValueError("results hold no rows to plot")
    entries, published = summarize(results["rows"]), results.get("published", [])
    weights = results["float32_bytes"] / 4
    title = f"{results['model']} on {results['dataset']}"
    os.makedirs(outdir, exist_ok=True)

    fig, ax = _axes("bits per weight (coded)", "test accuracy", title, 2)
    _lines(ax, entries, "bits_per_weight", "accuracy")
    _published(ax, published, [8 * KB * p["kb"] / weights for p in published], [1 - p["error"] for p in published])
    if published:
        ax.text(0.01, 0.01, "published: 8 x size / number of weights", transform=ax.transAxes, fontsize=7)
    figures = [fig]

    fig, ax = _axes("bits per activation", "test accuracy", title, 2)
    _lines(ax, entries, "bits_per_activation", "accuracy", nominal=True)
    _published(ax, published, [32.0] * len(published), [1 - p["error"] for p in published])
    if published:
        ax.text(0.01, 0.01, "published points keep float32 activations", transform=ax.transAxes, fontsize=7)
    figures.append(fig)

    fig, ax = _axes("coded size (KB)", "test error (%)", title, 10)
    _lines(ax, entries, "coded_kb", "error", scale=100.0)
    _published(ax, published, [p["kb"] for p in published], [100 * p["error"] for p in published])
    figures.append(fig)

    for fig, name in zip(figures, PLOTS):
        _legend(fig)
        fig.savefig(os.path.join(outdir, name), dpi=120)
    return list(PLOTS)


LEGEND_INSIDE_MAX = 12  # more entries than this go beside the axes, on a wider figure


def _legend(fig) -> None:
    ax = fig.axes[0]
    entries = len(ax.get_legend_handles_labels()[1])
    if entries <= LEGEND_INSIDE_MAX:
        ax.legend(fontsize=7)
        return
    width, height = fig.get_size_inches()
    fig.set_size_inches(width * 1.8, max(height, 0.2 * entries))  # ~0.2 in per 7-point entry
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
