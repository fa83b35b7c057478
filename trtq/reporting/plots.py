"""The report's figures as PNG bytes, drawn with matplotlib when it is installed (`pip install "trtq[report]"`).

Each function returns the PNG, or None when matplotlib is missing (`matplotlib_version()` is then None and
the page says so). Figures use matplotlib's object API (`Figure` + the Agg canvas): no pyplot, no global
state, no display needed; PNGs carry no software or date metadata, so equal inputs give equal bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["bars", "histograms", "matplotlib_version", "sqnr_bars"]

_BLUE, _ORANGE, _RED, _GREY = "#2b6cb0", "#dd8452", "#c53030", "#718096"


def matplotlib_version() -> str | None:
    """matplotlib's version, or None when it is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    return str(matplotlib.__version__)


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _short(name: str, width: int = 44) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def sqnr_bars(names: Sequence[str], cumulative: Sequence[float], local: Sequence[float]) -> bytes | None:
    """Horizontal bars per tensor, worst first (top): SQNR vs FP32 (accumulated) and of its Q/DQ alone."""
    if matplotlib_version() is None or not names:
        return None
    n = len(names)
    fig = _figure(11, 1.2 + 0.26 * n)
    ax = fig.add_subplot()
    y = np.arange(n)
    ax.barh(y - 0.2, cumulative, height=0.4, color=_BLUE, label="SQNR vs FP32 (accumulated up to this tensor)")
    ax.barh(y + 0.2, local, height=0.4, color=_ORANGE, label="local SQNR (this Q/DQ alone)")
    ax.set_yticks(y, [_short(s) for s in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("dB (higher is better)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    return _png(fig)


def histograms(panels: Sequence[dict[str, Any]]) -> bytes | None:
    """One panel per tensor: counts of its FP32 values (log scale) with the quantizer's range ±amax marked.

    Each panel: `tensor`, `edges` (bin edges), `counts`, `amax`, `clipped_fraction`.
    """
    if matplotlib_version() is None or not panels:
        return None
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig = _figure(11, 2.6 * rows)
    for k, p in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        edges = np.asarray(p["edges"])
        ax.stairs(np.maximum(np.asarray(p["counts"], dtype=float), 0.5), edges, fill=True, color=_BLUE, alpha=0.8,
                  baseline=0.5)
        ax.set_yscale("log")
        for x in (-p["amax"], p["amax"]):
            if edges[0] <= x <= edges[-1]:
                ax.axvline(x, color=_RED, linestyle="--", linewidth=1.2)
        ax.set_title(f"{_short(p['tensor'], 34)}\nrange ±{p['amax']:.3g}, clipped {100 * p['clipped_fraction']:.2g} %",
                     fontsize=8)
        ax.tick_params(labelsize=7)
    return _png(fig)


def bars(labels: Sequence[str], series: dict[str, Sequence[float]], xlabel: str,
         percent: bool = False, highlight: frozenset[str] = frozenset()) -> bytes | None:
    """Grouped horizontal bars: one group per label, one bar per series (e.g. MAC and weight-byte shares);
    the bars of `highlight` labels in red (e.g. the layers kept in floating point)."""
    if matplotlib_version() is None or not labels:
        return None
    n, k = len(labels), len(series)
    fig = _figure(11, 1.0 + 0.3 * n * k)
    ax = fig.add_subplot()
    y = np.arange(n)
    height = 0.8 / k
    for j, (name, values) in enumerate(series.items()):
        vals = [100 * v for v in values] if percent else list(values)
        base = (_BLUE, _ORANGE, _GREY, _RED)[j % 4]
        ax.barh(y - 0.4 + height * (j + 0.5), vals, height=height, label=name,
                color=[_RED if label in highlight else base for label in labels])
    ax.set_yticks(y, [_short(s) for s in labels], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    if k > 1:
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=k, fontsize=8, frameon=False)
    return _png(fig)
