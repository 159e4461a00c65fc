"""Figures for evaluations and reports (matplotlib `Figure` objects: no pyplot state, no display).

  confusion_matrix_figure(counts, normalized, names)  counts and row-normalised, side by side
  curves_figure(series, title, ylabel, ...)            one metric of several runs against epochs
  save_png(figure, path)

Drawing is matplotlib's and scikit-learn's (`ConfusionMatrixDisplay`); the numbers come in computed.
"""

from __future__ import annotations

from typing import Optional, Sequence

from matplotlib.figure import Figure
import numpy as np
from sklearn.metrics import ConfusionMatrixDisplay

# Large matrices get no numbers in their cells (they would not be legible).
MAX_CLASSES_WITH_VALUES = 20
DPI = 110


def confusion_matrix_figure(counts: np.ndarray, normalized: np.ndarray, class_names: Sequence[str],
                            title: str = "") -> Figure:
  """Two panels: counts, and each row divided by its total (recall on the diagonal)."""
  counts, normalized = np.asarray(counts), np.asarray(normalized)
  n = len(class_names)
  if counts.shape != (n, n) or normalized.shape != (n, n):
    raise ValueError(f"confusion matrices of shapes {counts.shape} and {normalized.shape} for {n} "
                     "class names")
  side = min(max(4.0, 0.5 * n + 2.0), 16.0)
  figure = Figure(figsize=(2 * side + 1.0, side + 0.8), layout="constrained")
  axes = figure.subplots(1, 2)
  values = n <= MAX_CLASSES_WITH_VALUES
  for ax, matrix, fmt, name in ((axes[0], counts, "d", "counts"),
                                (axes[1], normalized, ".2f", "row-normalised (recall on the diagonal)")):
    display = ConfusionMatrixDisplay(matrix, display_labels=list(class_names))
    display.plot(ax=ax, cmap="Blues", values_format=fmt, colorbar=False, include_values=values,
                 xticks_rotation=45 if max(map(len, class_names), default=0) > 3 else "horizontal")
    if matrix is normalized:
      display.im_.set_clim(0.0, 1.0)
    ax.set_title(name)
  if title:
    figure.suptitle(title)
  return figure


def curves_figure(series: Sequence[tuple[str, Sequence[float], Sequence[float], dict]], *, title: str,
                  ylabel: str, xlabel: str = "epoch", log_y: bool = False,
                  ylim: Optional[tuple[float, float]] = None) -> Figure:
  """One axis of line plots; `series` holds (label, x, y, matplotlib line options)."""
  figure = Figure(figsize=(6.4, 4.0), layout="constrained")
  ax = figure.subplots()
  for label, x, y, style in series:
    if len(x):
      ax.plot(x, y, label=label, marker="o" if len(x) <= 30 else None, markersize=3, **style)
  if log_y:
    ax.set_yscale("log")
  if ylim is not None:
    ax.set_ylim(*ylim)
  ax.set_title(title)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(True, alpha=0.3)
  if any(len(s[1]) for s in series):
    ax.legend(fontsize="small")
  else:
    ax.text(0.5, 0.5, "no data logged", ha="center", va="center", transform=ax.transAxes)
  return figure


def save_png(figure: Figure, path: str) -> str:
  figure.savefig(path, format="png", dpi=DPI)
  return path
