"""Plots for comparing samples of heavy-tailed laws (matplotlib; figures are returned, not shown).

- :func:`pair_plot`: every pair of coordinates, one colour per sample set, on asinh axes (linear
  near 0 and logarithmic in the tails), so that extremes and the bulk are both visible and no
  point is cut off.
- :func:`survival_plot`: log-log survival functions P(V > v) of |x| and of each |x_i|; a power
  law is a straight line of slope −α.
"""

import math

import matplotlib.pyplot as plt
import numpy as np

from msgm_pp.metrics import survival_function


def _sample_sets(samples: dict) -> dict[str, np.ndarray]:
    if not isinstance(samples, dict) or not samples:
        raise TypeError("`samples` must be a non-empty dict {label: (n, d) array}.")
    arrays = {label: np.asarray(x, dtype=np.float64) for label, x in samples.items()}
    dims = {x.shape[1] if x.ndim == 2 else None for x in arrays.values()}
    if len(dims) != 1 or None in dims:
        shapes = {label: x.shape for label, x in arrays.items()}
        raise ValueError(f"`samples` must all be (n, d) arrays with the same d, got {shapes}.")
    return arrays


def pair_plot(samples: dict, *, max_points: int = 2000, names=None):
    """Scatter plots of every pair of coordinates; on the diagonal, the share of points per bin
    (bins evenly spaced on the asinh axis).

    Args:
        samples: {label: (n, d) array}; the first set fixes the asinh scale (its median absolute
            coordinate is the width of the linear region).
        max_points: rows drawn per set (the first ones).
        names: coordinate names (default x1, x2, ...).
    """
    arrays = _sample_sets(samples)
    first = next(iter(arrays.values()))
    d = first.shape[1]
    names = [f"x{i + 1}" for i in range(d)] if names is None else list(names)
    linear_width = np.maximum(np.median(np.abs(first), axis=0), 1e-12)
    lows = np.min([x.min(axis=0) for x in arrays.values()], axis=0)
    highs = np.max([x.max(axis=0) for x in arrays.values()], axis=0)
    figure, axes = plt.subplots(d, d, figsize=(2.4 * d, 2.4 * d), squeeze=False)
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            for label, x in arrays.items():
                x = x[:max_points]
                if i == j:
                    w = linear_width[i]
                    span = np.arcsinh(np.array([lows[i], highs[i]]) / w)
                    edges = w * np.sinh(np.linspace(span[0], span[1], 41))
                    ax.hist(
                        x[:, i],
                        bins=edges,
                        weights=np.full(len(x), 1 / len(x)),
                        histtype="step",
                        label=label,
                    )
                else:
                    ax.scatter(x[:, j], x[:, i], s=2, alpha=0.4, label=label, rasterized=True)
            ax.set_xscale("asinh", linear_width=float(linear_width[j]))
            if i != j:
                ax.set_yscale("asinh", linear_width=float(linear_width[i]))
            ax.tick_params(labelsize=6)
            if i == d - 1:
                ax.set_xlabel(names[j])
            if j == 0:
                ax.set_ylabel(names[i] if i else f"{names[i]} (share per bin)")
    axes[0, -1].legend(loc="upper right", fontsize="small", markerscale=4)
    figure.tight_layout()
    return figure


def survival_plot(samples: dict, *, names=None):
    """Log-log survival functions of |x| and of each |x_i|, one line per sample set."""
    arrays = _sample_sets(samples)
    d = next(iter(arrays.values())).shape[1]
    names = [f"x{i + 1}" for i in range(d)] if names is None else list(names)
    panels = [("|x|", lambda x: np.linalg.norm(x, axis=1))] + [
        (f"|{names[i]}|", lambda x, i=i: np.abs(x[:, i])) for i in range(d)
    ]
    columns = min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows), squeeze=False)
    for ax, (title, statistic) in zip(axes.flat, panels, strict=False):
        for label, x in arrays.items():
            values = statistic(x)
            ax.loglog(*survival_function(values[values > 0]), label=label)
        ax.set_title(title)
        ax.set_xlabel("v")
        ax.set_ylabel("P(V > v)")
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize="small")
    figure.tight_layout()
    return figure
