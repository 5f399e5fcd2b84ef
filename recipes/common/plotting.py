"""Loss curves from a CSVLogger's ``metrics.csv`` to a PNG."""

from __future__ import annotations

import csv
from pathlib import Path


def read_metric(csv_path: str | Path, name: str) -> tuple[list[int], list[float]]:
    """(steps, values) of every row of ``metrics.csv`` where ``name`` is set."""
    steps, values = [], []
    with open(csv_path, newline="") as file:
        for row in csv.DictReader(file):
            value = row.get(name, "")
            if value not in ("", None):
                steps.append(int(row["step"]))
                values.append(float(value))
    return steps, values


def plot_loss_curves(
    csv_path: str | Path, png_path: str | Path, baseline: float | None = None, title: str = ""
) -> Path:
    """Plot ``train_loss`` and ``val_loss`` against the step, with an optional horizontal ``baseline``."""
    import matplotlib

    matplotlib.use("Agg")  # no display on clusters
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, style in (("train_loss", "-"), ("val_loss", "o-")):
        steps, values = read_metric(csv_path, name)
        if steps:
            ax.plot(steps, values, style, label=name, markersize=3)
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", label=f"unigram baseline ({baseline:.3f})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path
