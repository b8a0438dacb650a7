"""Figures of a run, drawn with matplotlib (Agg backend) and saved as PNG beside report.md.

* ``tradeoff-<protocol>.png``: per biometric protocol, one point per fine-tuned model: its
  gain over its base model on that protocol's headline metric (points, + = better) against its
  zero-shot and linear-probe GELO;
* ``relative-change.png``: per general-vision protocol, per dataset, each fine-tuned model's
  relative change against its base model in % (the study's GELO figure);
* ``roc-det-<protocol>-<dataset>.png``: ROC and DET curves of every model on one biometric
  dataset (from the raw scores);
* ``tar-far-ijb-<dataset>.png``: TAR against FAR (log) for IJB.

Each ``*_figure`` function returns the Figure (tests inspect axes, lines and legends);
:func:`make_plots` saves them all and returns ``(title, file name)`` pairs for the report.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from harness.protocols import PROTOCOLS, lower_is_better
from harness.results import CaseRecord, gelo, headline, is_general, matrix

_SAFE = re.compile(r"[^A-Za-z0-9._=+-]")
MAX_CURVE_POINTS = 2000
MARKERS = "osD^v<>pPX*h"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _new(ncols: int = 1, width: float = 6.4, height: float = 4.8):
    plt = _plt()
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def _delta(mat, m, b):
    from harness.report import delta

    return delta(mat, m, b)


# --------------------------------------------------------------------------- trade-off


def tradeoff_figure(
    records: list[CaseRecord],
    protocol: str,
    models: dict[str, str],
    bases: dict[str, str | None],
    datasets: dict[str, str] | None = None,
):
    """Gain on ``protocol`` (points, + = better) against GELO, one point per fine-tuned model
    and general protocol; None when no fine-tuned model has both numbers."""
    metric = headline(protocol)
    sign = -1.0 if lower_is_better(metric) else 1.0
    own = matrix(records, protocol)
    gens = [p for p in PROTOCOLS if is_general(p) and any(r.protocol == p for r in records)]
    series: dict[str, list[tuple[float, float, str]]] = {}
    for p in gens:
        mat = matrix(records, p)
        for m, b in bases.items():
            if not b or m not in models:
                continue
            d = _delta(own, m, b)
            g = gelo(mat, m, b)
            if d is None or g is None:
                continue
            series.setdefault(p, []).append((sign * 100 * d, g, models[m]))
    if not series:
        return None
    fig, (ax,) = _new(1, 7.2, 5.0)
    plt = _plt()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = list(dict.fromkeys(lab for pts in series.values() for _, _, lab in pts))
    color = {lab: colors[i % len(colors)] for i, lab in enumerate(names)}
    by_model: dict[str, list[tuple[float, float]]] = {}
    for i, (p, pts) in enumerate(series.items()):
        ax.scatter(
            [x for x, _, _ in pts],
            [y for _, y, _ in pts],
            marker=MARKERS[i % len(MARKERS)],
            s=70,
            c=[color[lab] for _, _, lab in pts],
            edgecolors="black",
            linewidths=0.5,
            zorder=3,
        )
        for x, y, lab in pts:
            by_model.setdefault(lab, []).append((x, y))
    for lab, mpts in by_model.items():  # one model's points joined: same gain, two GELOs
        mpts.sort(key=lambda q: q[1])
        ax.plot([x for x, _ in mpts], [y for _, y in mpts], color=color[lab], lw=1, alpha=0.6, label=lab)
    for i, p in enumerate(series):
        ax.scatter([], [], marker=MARKERS[i % len(MARKERS)], c="white", edgecolors="black", label=f"{p} GELO")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.axvline(0.0, color="grey", lw=0.8, ls="--")
    better = "lower" if sign < 0 else "higher"
    ax.set_xlabel(
        f"gain on {protocol} {metric} vs base model\n(percentage points; + = {better} {metric}, better)"
    )
    ax.set_ylabel("GELO (general ability kept; 1 = no loss)")
    ax.set_title(f"Trade-off: {protocol} gain vs general-vision GELO")
    ax.legend(loc="best", fontsize=8)
    ax.margins(0.25)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def relative_change_figure(
    records: list[CaseRecord], models: dict[str, str], bases: dict[str, str | None], datasets: dict[str, str]
):
    """Per general protocol a panel: per dataset, each fine-tuned model's relative change
    (model / base − 1, %) of the headline metric."""
    gens = [p for p in PROTOCOLS if is_general(p) and any(r.protocol == p for r in records)]
    panels = []
    for p in gens:
        mat = matrix(records, p)
        tuned = [m for m in models if bases.get(m) and m in mat and str(bases[m]) in mat]
        ds = [d for d in datasets if any(d in mat.get(m, {}) and d in mat[str(bases[m])] for m in tuned)]
        if tuned and ds:
            panels.append((p, mat, tuned, ds))
    if not panels:
        return None
    fig, axes = _new(len(panels), max(4.5, 1.2 + 0.9 * max(len(x[3]) for x in panels)), 4.8)
    for ax, (p, mat, tuned, ds) in zip(axes, panels):
        width = 0.8 / len(tuned)
        xs = np.arange(len(ds))
        for i, m in enumerate(tuned):
            b = str(bases[m])
            vals = [
                100 * (mat[m][d] / mat[b][d] - 1) if d in mat[m] and d in mat[b] and mat[b][d] else np.nan
                for d in ds
            ]
            ax.bar(xs + (i - (len(tuned) - 1) / 2) * width, vals, width, label=models[m])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(xs)
        ax.set_xticklabels(
            [datasets[d] for d in ds],
            rotation=30 if len(ds) > 3 else 0,
            ha="right" if len(ds) > 3 else "center",
        )
        ax.set_xlabel("dataset")
        ax.set_ylabel(f"relative change of {headline(p)} vs base model (%)")
        ax.set_title(f"{p}: fine-tuned vs base, per dataset")
        ax.legend(fontsize=8, loc="best")
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------ curves


def curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FAR, TAR) at every distinct threshold (accept iff score >= t), from (0, 0) to (1, 1),
    thinned to at most :data:`MAX_CURVE_POINTS` points, log-spaced in FAR."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(y)[distinct]
    fp = np.cumsum(~y)[distinct]
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    far = np.r_[0.0, fp / n_neg]
    tar = np.r_[0.0, tp / n_pos]
    if len(far) > MAX_CURVE_POINTS:
        grid = np.unique(np.r_[0.0, np.logspace(-8, 0, MAX_CURVE_POINTS - 1)])
        idx = np.unique(np.clip(np.searchsorted(far, grid, side="right") - 1, 0, len(far) - 1))
        far, tar = far[idx], tar[idx]
    return far, tar


def roc_det_figure(
    curves: dict[str, tuple[np.ndarray, np.ndarray, int, int]], protocol: str, dataset_label: str
):
    """ROC (TAR vs FAR, log FAR) and DET (FRR vs FAR, log-log) of every model on one dataset.
    ``curves``: model label -> (FAR, TAR, n genuine, n impostor)."""
    if not curves:
        return None
    attack = protocol in ("mad", "pad")
    far_name = "APCER" if attack else "FAR"
    frr_name = "BPCER" if attack else "FRR"
    tar_name = "1 − BPCER" if attack else "TAR"
    fig, (roc, det) = _new(2, 5.6, 4.6)
    floor = 1.0
    for i, (lab, (far, tar, n_pos, n_neg)) in enumerate(curves.items()):
        floor = min(floor, 1.0 / max(n_neg, 1), 1.0 / max(n_pos, 1))
        ls = ("-", "--", "-.", ":")[i % 4]
        roc.plot(np.maximum(far, 0.5 / max(n_neg, 1)), tar, ls, label=lab, lw=1.5)
        det.plot(
            np.maximum(far, 0.5 / max(n_neg, 1)),
            np.maximum(1 - tar, 0.5 / max(n_pos, 1)),
            ls,
            label=lab,
            lw=1.5,
        )
    lo = max(floor / 2, 1e-7)
    roc.set_xscale("log")
    roc.set_xlim(lo, 1.0)
    roc.set_ylim(0, 1.02)
    roc.set_xlabel(f"{far_name} (log scale)")
    roc.set_ylabel(f"{tar_name}")
    roc.set_title(f"ROC — {dataset_label} ({protocol})")
    det.set_xscale("log")
    det.set_yscale("log")
    det.set_xlim(lo, 1.0)
    det.set_ylim(lo, 1.0)
    det.set_xlabel(f"{far_name} (log scale)")
    det.set_ylabel(f"{frr_name} (log scale)")
    det.set_title(f"DET — {dataset_label} ({protocol})")
    for ax in (roc, det):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right" if ax is roc else "lower left")
    fig.text(
        0.5,
        0.005,
        "values below 1/n are drawn at 1/(2n) (n: impostor or genuine count)",
        ha="center",
        fontsize=7,
        color="grey",
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def tar_far_figure(
    curves: dict[str, tuple[np.ndarray, np.ndarray, int, int]],
    dataset_label: str,
    fars: list[float] | None = None,
):
    """IJB: TAR against FAR (log), every model; dotted verticals at the reported FARs, the
    region below 1 / impostor pairs shaded (not resolvable)."""
    if not curves:
        return None
    fig, (ax,) = _new(1, 6.4, 4.8)
    n_neg = max(v[3] for v in curves.values())
    for i, (lab, (far, tar, _, neg)) in enumerate(curves.items()):
        keep = far > 0
        ax.plot(far[keep], tar[keep], ("-", "--", "-.", ":")[i % 4], label=lab, lw=1.5)
    lo = min(1e-6, 0.5 / max(n_neg, 1))
    ax.axvspan(
        lo,
        1.0 / max(n_neg, 1),
        color="grey",
        alpha=0.15,
        label=f"FAR < 1/{n_neg:,} impostor pairs: not resolvable",
    )
    for f in fars or []:
        ax.axvline(f, color="grey", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_xlim(lo, 1.0)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("FAR (false accept rate, log scale)")
    ax.set_ylabel("TAR (true accept rate)")
    ax.set_title(f"IJB TAR vs FAR — {dataset_label}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------- all


def save(fig, path: Path) -> Path:
    from harness._io import atomic_write

    plt = _plt()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110), binary=True)
    plt.close(fig)
    return path


def make_plots(
    out_dir: str | Path,
    records: list[CaseRecord],
    run: dict[str, Any],
    scores: Callable[[CaseRecord], Any] | None = None,
) -> list[tuple[str, str]]:
    """Draw and save every figure the records allow; ``scores(rec)`` gives a case's
    :class:`~harness.scores.ScoreSet` or None.  Returns ``(title, file name)`` per figure."""
    from harness.report import labels

    out = Path(out_dir)
    models, datasets, bases = labels(run, records)
    made: list[tuple[str, str]] = []

    def keep(fig, name: str, title: str) -> None:
        if fig is not None:
            save(fig, out / name)
            made.append((title, name))

    for p in PROTOCOLS:
        if is_general(p) or not any(r.protocol == p for r in records):
            continue
        keep(tradeoff_figure(records, p, models, bases), f"tradeoff-{p}.png", f"Trade-off: {p} gain vs GELO")
    keep(
        relative_change_figure(records, models, bases, datasets),
        "relative-change.png",
        "Relative change per dataset vs base model",
    )
    if scores is None:
        return made
    by_key = {r.key: r for r in records}
    for p in PROTOCOLS:
        if is_general(p):
            continue
        for d in datasets:
            curves = {}
            for m in models:
                rec = by_key.get((p, m, d))
                if rec is None or rec.status not in ("passed", "failed"):
                    continue
                s = scores(rec)
                if s is None or not len(s):
                    continue
                y = np.asarray(s.labels) == 1
                if y.all() or not y.any():
                    continue
                far, tar = curve(s.scores, y)
                curves[models[m]] = (far, tar, int(y.sum()), int((~y).sum()))
            if not curves:
                continue
            keep(
                roc_det_figure(curves, p, datasets[d]),
                f"roc-det-{p}-{_SAFE.sub('_', d)}.png",
                f"ROC and DET: {datasets[d]} ({p})",
            )
            if p == "ijb":
                fars = sorted(
                    {
                        float(k.split("=", 1)[1])
                        for r in records
                        if r.protocol == p
                        for k in r.metrics
                        if k.startswith("tar@far=")
                    }
                )
                keep(
                    tar_far_figure(curves, datasets[d], fars),
                    f"tar-far-ijb-{_SAFE.sub('_', d)}.png",
                    f"IJB TAR vs FAR: {datasets[d]}",
                )
    return made


def finite(x: float) -> bool:
    return x is not None and math.isfinite(x)
