"""The monitor's HTML report: breaches first, the latest window's figures, every window's row,
and the plots a relevance team reads first (common.report writes it self-contained).

- the exposure Lorenz curve of the latest version's answers, beside equal exposure: the
  further below the diagonal, the more exposure a few creators take (its Gini is the figure);
- the popularity of what is served against the catalog's, as histograms of log10(1 + training
  interactions): a served mass to the right of the catalog's is popularity bias;
- each stage's p99 over the windows, from the answers' own timings;
- the main relevance figures over the windows.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from common.report import Report, new_figure
from monitoring import metrics
from monitoring.answers import STAGES, Answers

OVER_TIME = ("coverage", "gini", "long_tail_share", "personalisation", "intra_list_diversity")
TABLE = (
    "window_start", "index_version", "answers", "fans", "coverage", "gini", "long_tail_share",
    "novelty", "personalisation", "calibration_kl", "online_recall",
)  # fmt: skip


def report(cfg, result: dict, answers: Answers, catalogs: dict) -> Report:
    rows = result["rows"]
    last = rows[-1]
    made_by = {"command": f"python -m monitoring run --config … ({cfg.name})", "log": cfg.log,
               "index store": cfg.index, "window": cfg.window,
               "torn log batches (not read)": result["torn_batches"]}  # fmt: skip
    out = Report(f"Relevance monitor: {cfg.name}", made_by=made_by)
    out.breach(*result["breaches"])
    figures = {k: v for k, v in last.items() if k not in ("window_start", "window_end")}
    out.table(f"Latest window ({last['window_start']}, {last['index_version']})", figures)
    out.table("Every window", [{k: row[k] for k in TABLE} for row in rows])
    catalog = catalogs[last["index_version"]]
    # the latest row's answers only, so the curves show what the captions' figures measure
    start, end = (
        dt.datetime.fromisoformat(last[k]).timestamp() for k in ("window_start", "window_end")
    )
    latest = (
        (answers.index_version == last["index_version"])
        & (answers.ts >= start)
        & (answers.ts < end)
    )
    served = answers.take(latest).bind(catalog)
    out.figure("Exposure: Lorenz curve", lorenz(served, catalog),
               caption=f"Gini {last['gini']:.3f}, coverage {last['coverage']:.3f}")  # fmt: skip
    out.figure("Popularity: served against the catalog", popularity(served, catalog))
    if len(rows) > 1 or any(np.isfinite(last.get(f"{s}_p99_seconds") or np.nan) for s in STAGES):
        out.figure("Latency by stage over time (p99 of the answers' own timings)", latency(rows))
    out.figure("Relevance figures over time", over_time(rows))
    return out


def lorenz(a: Answers, catalog):
    e = np.sort(metrics.exposure(a, catalog).astype(np.float64))
    fig = new_figure(5.0, 4.2)
    ax = fig.subplots()
    share = np.concatenate([[0.0], np.cumsum(e) / max(e.sum(), 1.0)])
    creators = np.linspace(0.0, 1.0, len(share))
    ax.plot(creators, share, label="served")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="equal exposure")
    ax.set(xlabel="share of creators (least exposed first)", ylabel="share of exposure")
    ax.legend(loc="upper left")
    return fig


def popularity(a: Answers, catalog):
    fig = new_figure()
    ax = fig.subplots()
    pop = np.log10(1.0 + catalog.popularity.astype(np.float64))
    bins = np.linspace(0.0, max(pop.max(), 1.0), 40)
    ax.hist(pop, bins=bins, density=True, alpha=0.5, label="catalog (each creator once)")
    ax.hist(pop[a.listed], bins=bins, density=True, alpha=0.5, label="served (each listing)")
    ax.set(xlabel="log10(1 + training interactions)", ylabel="density")
    ax.legend()
    return fig


def latency(rows: list[dict]):
    fig = new_figure()
    ax = fig.subplots()
    x = np.arange(len(rows))
    for stage in STAGES:
        ys = np.array([row.get(f"{stage}_p99_seconds") or np.nan for row in rows], float) * 1e3
        if np.isfinite(ys).any():
            ax.plot(x, ys, marker="o", label=stage)
    _windows_axis(ax, rows)
    ax.set(ylabel="p99 ms")
    ax.legend(fontsize="small")
    return fig


def over_time(rows: list[dict]):
    fig = new_figure()
    ax = fig.subplots()
    x = np.arange(len(rows))
    for name in OVER_TIME:
        ax.plot(x, [row[name] if row[name] is not None else np.nan for row in rows],
                marker="o", label=name)  # fmt: skip
    _windows_axis(ax, rows)
    ax.legend(fontsize="small")
    return fig


def _windows_axis(ax, rows: list[dict]) -> None:
    ax.set_xticks(np.arange(len(rows)))
    labels = [f"{r['window_start'][5:16]}\n{str(r['index_version'])[:12]}" for r in rows]
    ax.set_xticklabels(labels, fontsize="x-small")
