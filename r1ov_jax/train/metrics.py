"""Metrics: one JSONL line per logged step, TensorBoard scalars, and PNG plots for people."""

from __future__ import annotations

import json
import os

import numpy as np
from r1ov_jax import runs


class MetricsWriter:
    """Appends ``{"step": s, **scalars}`` to ``<dir>/metrics.jsonl`` and TensorBoard event files.

    Only process 0 writes in multi-host runs (pass ``enabled=jax.process_index() == 0``).
    """

    def __init__(self, directory: str, *, tensorboard: bool = True, enabled: bool = True):
        self.directory, self.enabled = directory, enabled
        self.path = os.path.join(directory, runs.METRICS_FILE)
        self._tb = None
        if enabled:
            os.makedirs(directory, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(directory, runs.TENSORBOARD_DIR))

    def write(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        clean = {k: float(np.asarray(v)) for k, v in scalars.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), **clean}) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, int(step))

    def truncate_after(self, step: int) -> None:
        """Drops lines logged after ``step`` (a resumed run re-logs them)."""
        if not self.enabled or not os.path.exists(self.path):
            return
        keep = [line for line in read_jsonl(self.path) if line["step"] <= step]
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in keep)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_metrics(jsonl_path: str, keys: list[str], out_png: str, title: str = "") -> str | None:
    """One subplot per key present in the log; returns the PNG path (None when nothing to plot)."""
    # A bare Figure on the Agg canvas: never touches pyplot's global backend (notebooks keep inline plots).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_jsonl(jsonl_path) if os.path.exists(jsonl_path) else []
    keys = [k for k in keys if any(k in r for r in rows)]
    if not keys:
        return None
    fig = Figure(figsize=(3.6 * len(keys), 3.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(keys), squeeze=False)
    for ax, k in zip(axes[0], keys):
        pts = [(r["step"], r[k]) for r in rows if k in r]
        xs, ys = [p[0] for p in pts], np.asarray([p[1] for p in pts], float)
        noisy = len(pts) >= 10
        ax.plot(xs, ys, marker="." if len(pts) < 40 else None, alpha=0.35 if noisy else 1.0)
        if noisy:  # per-step RL metrics are noisy: overlay a centred moving average
            w = max(3, len(pts) // 8)
            ax.plot(
                xs,
                np.convolve(ys, np.ones(w) / w, mode="same")
                / np.convolve(np.ones_like(ys), np.ones(w) / w, mode="same"),
                color="C0",
            )
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    return out_png
