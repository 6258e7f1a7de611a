"""The report's figures, drawn from plain numbers (no results files, no prose).

Every figure shows the mean over training seeds as a line and, with more than one seed, the seeds'
range as a band (or their standard deviation as error bars).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from miro.shapes.study.stats import Spread, Value, across_seeds  # noqa: E402

Curves = Sequence[Sequence[Value]]  # one curve per seed


def band(ax: Any, x: Sequence[float], curves: Curves, label: str) -> None:
    """Mean over seeds as a line, the seeds' range as a band."""
    spreads = [across_seeds([c[i] for c in curves]) for i in range(len(x))]
    ax.plot(x, [s.mean for s in spreads], marker="o", markersize=3, label=label)
    if len(curves) > 1:
        ax.fill_between(x, [s.lo for s in spreads], [s.hi for s in spreads], alpha=0.2)


def _row(n: int, width: float) -> tuple[plt.Figure, Any]:
    fig, axes = plt.subplots(1, n, figsize=(width * n, 3.0), squeeze=False)
    return fig, axes[0]


def curves_figure(x: Sequence[float], panels: Mapping[str, Mapping[str, Curves]], xlabel: str) -> plt.Figure:
    """One panel per title, one band per label in it: ``{title: {label: per-seed curves}}``."""
    fig, axes = _row(len(panels), 3.2)
    for ax, (title, lines) in zip(axes, panels.items(), strict=True):
        for label, curves in lines.items():
            band(ax, x, curves, label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def control_figure(
    panels: Mapping[str, tuple[Sequence[float], Curves]], data_range: Mapping[str, tuple[float, float]]
) -> plt.Figure:
    """Measured reward against requested target, per reward: ``{reward: (targets, per-seed means)}``,
    with the reward's range in the training data shaded."""
    fig, axes = _row(len(panels), 3.4)
    for ax, (name, (targets, per_seed)) in zip(axes, panels.items(), strict=True):
        band(ax, targets, per_seed, "measured")
        if name in data_range:
            lo, hi = data_range[name]
            ax.axhspan(lo, hi, color="0.9", zorder=0, label="training data range")
        ax.set_title(name)
        ax.set_xlabel("requested target (0-10)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def best_of_figure(panels: Mapping[str, Mapping[str, Curves]]) -> plt.Figure:
    """Best-of-N curves per reward, N on a log axis: ``{reward: {model: per-seed curves}}`` (each
    model's curves cut to the shortest seed's)."""
    fig, axes = _row(len(panels), 3.4)
    for ax, (name, models) in zip(axes, panels.items(), strict=True):
        for label, per_seed in models.items():
            length = min((len(c) for c in per_seed), default=0)
            if length:
                band(ax, list(range(1, length + 1)), [c[:length] for c in per_seed], label)
        ax.set_xscale("log", base=2)
        ax.set_title(name)
        ax.set_xlabel("N samples")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def guidance_figure(scales: Sequence[float], panels: Mapping[str, Curves]) -> plt.Figure:
    """Each metric against the guidance scale: ``{metric: per-seed curves over the scales}``."""
    fig, axes = _row(len(panels), 3.2)
    for ax, (name, per_seed) in zip(axes, panels.items(), strict=True):
        band(ax, scales, per_seed, "MIRO")
        ax.set_title(name)
        ax.set_xlabel("guidance scale")
    fig.tight_layout()
    return fig


def bars_figure(panels: Mapping[str, Mapping[str, Spread]], title: str) -> plt.Figure:
    """Bars of mean ± std over seeds: ``{reward: {variant: spread}}``; ``title`` is formatted with the
    reward's name."""
    fig, axes = _row(len(panels), 3.2)
    for ax, (name, bars) in zip(axes, panels.items(), strict=True):
        spreads = list(bars.values())
        ax.bar(
            range(len(spreads)),
            [s.mean for s in spreads],
            yerr=[0 if math.isnan(s.std) else s.std for s in spreads],
            capsize=3,
        )
        ax.set_xticks(range(len(spreads)), list(bars), rotation=30, fontsize=7)
        ax.axhline(0, color="0.5", linewidth=0.8)
        ax.set_title(title.format(name=name), fontsize=9)
    fig.tight_layout()
    return fig


def png(fig: plt.Figure) -> bytes:
    """The figure as PNG bytes (closed afterwards)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
