"""What a drift measurement (index.drift) leaves behind: `drift.json`, a self-contained
`drift.html` with its plots (common.report), and the same figures in W&B.

The plots, each from the per-creator and per-fan values the measurement kept:

- the per-creator cosine shift, after alignment and (same widths) before it;
- neighbour overlap@k over the sampled creators and list overlap@k over the sampled fans;
- the fans' rank correlations;
- the popularity of what each version lists against the catalog's, by the explorer's bands
  of training interactions (0, 1, 2–3, 4–7, …: index.projection.popularity_band);
- the two-sample test's held-out classifier scores, old against new.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from common import report as reports
from common.io import write_json
from index.drift import HTML, JSON, THRESHOLDS, Drift, describe_breach
from index.projection import popularity_band

log = logging.getLogger(__name__)

OLD, NEW, CATALOG = "#6e7781", "#0969da", "#bf8700"


def write(drift: Drift, folder: str | Path, made_by: dict | None = None) -> dict:
    """drift.json and drift.html into `folder` (each atomically); returns their names."""
    folder = Path(folder)
    write_json(folder / JSON, drift.record())
    build(drift, made_by).write(folder / HTML)
    return {"json": JSON, "html": HTML}


def build(drift: Drift, made_by: dict | None = None) -> reports.Report:
    old, new = drift.meta["old"], drift.meta["new"]
    report = reports.Report(
        f"Drift {old['version']} → {new['version']}",
        {
            "made by": "python -m index rebuild (index.drift), before publishing",
            "old version": old["version"],
            "old model": old["model_version"][:12],
            "new version": new["version"],
            "new model": new["model_version"][:12],
            "catalog and fans": drift.meta["data_dir"],
            "k": drift.meta["k"],
            "seed": drift.meta["seed"],
            "measured in (s)": drift.meta["seconds"],
            **(made_by or {}),
        },
    )
    report.breach(*(describe_breach(b) for b in drift.breaches))
    if drift.breaches and drift.allowed:
        report.text(None, "Published anyway: the rebuild was run with --allow_drift true.")
    report.table("Gated figures", _gated(drift), note="A threshold left null is not checked.")
    report.table("All figures", {k: v for k, v in drift.figures.items()})
    for heading, plot, caption in _plots(drift):
        report.figure(heading, plot, caption)
    return report


def _gated(drift: Drift) -> list[dict]:
    broken = {b["threshold"] for b in drift.breaches}
    rows = []
    for figure, name, _ in THRESHOLDS:
        limit = drift.limits.get(name)
        rows.append({
            "figure": figure, "value": drift.figures.get(figure), "threshold": name,
            "limit": limit, "breached": name in broken,
        })  # fmt: skip
    return rows


def _plots(drift: Drift):
    d, k = drift.detail, drift.meta["k"]
    if "shift" in d:
        yield "Per-creator cosine shift", _shift(d), "1 − cos(R·old, new), creators both hold"
        yield (
            "Neighbour and list overlap", _overlaps(d, k),
            f"share of sampled creators (fans) by how many of their {k} neighbours (listed "
            f"creators) the two versions share",
        )  # fmt: skip
    if "rank_correlation" in d:
        yield "Rank correlation of the fans' lists", _taus(d), "Kendall's τ_b over the union"
        yield "Popularity of what is listed", _popularity(d), "share of list slots per band"
    if "scores" in d:
        auc = drift.figures.get("two_sample_auc")
        yield "Two-sample test", _two_sample(d, auc), "held-out P(new) of the logistic regression"


def _shift(d: dict):
    fig = reports.new_figure()
    ax = fig.subplots()
    top = max(float(np.max(d["shift"])), 1e-6)
    if d.get("shift_unaligned") is not None:
        top = max(top, float(np.max(d["shift_unaligned"])))
        ax.hist(d["shift_unaligned"], bins=50, range=(0, top), color=OLD, alpha=0.6,
                label="unaligned")  # fmt: skip
    ax.hist(d["shift"], bins=50, range=(0, top), color=NEW, alpha=0.8, label="aligned")
    ax.set(xlabel="1 − cosine", ylabel="creators")
    ax.legend()
    return fig


def _share_by_value(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    steps = np.arange(k + 1)
    counts = np.bincount(np.rint(np.asarray(values) * k).astype(int), minlength=k + 1)
    return steps / k, counts[: k + 1] / max(len(values), 1)


def _overlaps(d: dict, k: int):
    fig = reports.new_figure()
    ax = fig.subplots()
    width = 0.4 / k
    x, share = _share_by_value(d["neighbours"], k)
    ax.bar(x - width / 2, share, width, color=OLD, label="creators' neighbours")
    if "list_overlap" in d:
        x, share = _share_by_value(d["list_overlap"], k)
        ax.bar(x + width / 2, share, width, color=NEW, label="fans' lists")
    ax.set(xlabel=f"overlap@{k}", ylabel="share")
    ax.legend()
    return fig


def _taus(d: dict):
    fig = reports.new_figure()
    ax = fig.subplots()
    ax.hist(d["rank_correlation"], bins=40, range=(-1, 1), color=NEW)
    ax.set(xlabel="Kendall's τ_b", ylabel="fans")
    return fig


def _bands(counts: np.ndarray, bands: int) -> np.ndarray:
    band = popularity_band(np.asarray(counts))
    return np.bincount(band, minlength=bands)[:bands] / max(len(band), 1)


def _popularity(d: dict):
    catalog = d["catalog_counts"]
    every = np.concatenate([catalog, d["counts_old"], d["counts_new"]])
    bands = int(popularity_band(every).max(initial=0)) + 1
    fig = reports.new_figure()
    ax = fig.subplots()
    x, width = np.arange(bands), 0.27
    for shift, counts, color, label in (
        (-width, catalog, CATALOG, "catalog"),
        (0.0, d["counts_old"], OLD, "old lists"),
        (width, d["counts_new"], NEW, "new lists"),
    ):
        ax.bar(x + shift, _bands(counts, bands), width, color=color, label=label)
    names = [str(b) if b < 2 else f"{2 ** (b - 1)}–{2**b - 1}" for b in x]
    ax.set_xticks(x, names, rotation=45)
    ax.set(xlabel="training interactions", ylabel="share")
    ax.legend()
    return fig


def _two_sample(d: dict, auc: float | None):
    fig = reports.new_figure()
    ax = fig.subplots()
    scores, labels = d["scores"], d["labels"]
    ax.hist(scores[~labels], bins=21, range=(0, 1), color=OLD, alpha=0.6, label="old vectors")
    ax.hist(scores[labels], bins=21, range=(0, 1), color=NEW, alpha=0.6, label="new vectors")
    ax.set(xlabel="P(new) by the classifier", ylabel="held-out vectors",
           title=f"ROC-AUC {auc:.3f}" if auc is not None else None)  # fmt: skip
    ax.legend()
    return fig


def log_to_wandb(drift: Drift, directory: str | Path) -> Path | None:
    """The figures as one W&B run (offline unless WANDB_MODE says otherwise)."""
    new = drift.meta["new"]["version"]
    return reports.log_to_wandb(
        {"drift": drift.figures, "breaches": len(drift.breaches)},
        directory,
        job_type="index-drift",
        name=f"drift-{new}",
        config={"old": drift.meta["old"], "new": drift.meta["new"], "k": drift.meta["k"]},
    )
