"""Hand-made answer logs and catalogs for the monitoring tests.

`record` makes a logged answer through serving.answer_log.record (the service's own format), at
a chosen time; `write_log` writes records as the AnswerLog's writer does (an Arrow IPC stream).
`hand_catalog` and `hand_log` are the small example whose figures tests/monitoring/test_metrics.py
works by hand.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa

from monitoring.catalog import Catalog
from serving import answer_log
from serving.pipeline.stages import Answer

T0 = 1_000_000_000.0  # 2001-09-09T01:46:40Z
DAY = 86_400.0
TIMINGS = {
    "lookup": 1e-4,
    "encode": 2e-3,
    "retrieve": 1e-3,
    "filter": 1e-4,
    "rank": 3e-3,
    "fallback": 1e-5,
    "batch": 2,
}


def record(
    ts: float,
    fan: str | None,
    items,
    scores=None,
    *,
    k=None,
    route="recommend",
    source="model",
    cold_start=False,
    degraded=None,
    timings=None,
    versions=("m1", "v00001-a"),
) -> dict:
    """One answer as the service logs it, stamped `ts` (seconds since the epoch)."""
    scores = [1.0 - i / 100 for i in range(len(items))] if scores is None else scores
    answer = Answer(
        list(items),
        list(scores),
        source,
        cold_start=cold_start,
        degraded=degraded,
        timings=dict(TIMINGS if timings is None else timings),
    )
    k = len(items) if k is None else k
    request = {"user_id": fan, "k": k} if fan is not None else {"creator_id": "c0", "k": k}
    out = answer_log.record(
        route, request, answer, {"model_version": versions[0], "index_version": versions[1]}
    )
    out["ts"] = dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds")
    return out


def write_log(path: Path, records, torn: list[dict] | None = None, batch_rows: int = 2) -> Path:
    """The records as AnswerLog writes them, `batch_rows` a batch; then, given `torn`, the first
    half of one more batch of those records (a write cut short: no end-of-stream marker)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sink = pa.BufferOutputStream()
    writer = pa.ipc.new_stream(sink, answer_log.SCHEMA)
    for i in range(0, len(records), batch_rows):
        writer.write_batch(answer_log.to_batch(records[i : i + batch_rows]))
    if torn is None:
        writer.close()
    body = sink.getvalue().to_pybytes()
    if torn is not None:
        cut = answer_log.to_batch(torn).serialize().to_pybytes()
        body += cut[: len(cut) // 2]
    path.write_bytes(body)
    return path


def hand_catalog(later: bool = True) -> Catalog:
    """Seven creators c0..c6 and the fans f1, f2 (f3 has no history), worked by hand.

    popularity  16 8 4 2 1 0 1   of num_users = 16 fans (novelty: log2(16 / k), k >= 1)
    first seen  T0 − 100, 40, 10, 1 days; unknown; T0 + 5 days; T0 − 400 days
    category    0 0 1 1 2 2 2
    embedding   (1,0) (0,1) (1,0) (−1,0) (0.6,0.8) (0,−1) (0,1)
    history     f1: categories 0 0 1 1 (p = ½ ½ 0); f2: category 2 (p = 0 0 1)
    """
    later_pairs = (
        ["f1", "f1", "f2", "f2", "f3", "f9", "f1", "f1"],
        ["c1", "c5", "c3", "c2", "c0", "c0", "cz", "c0"],
        [np.inf, T0 + 250, T0 + 150, T0 + 250, T0 + 600, np.inf, np.inf, T0 + 100],
    )
    return Catalog.build(
        [f"c{i}" for i in range(7)],
        popularity=[16, 8, 4, 2, 1, 0, 1],
        first_seen=[
            T0 - 100 * DAY,
            T0 - 40 * DAY,
            T0 - 10 * DAY,
            T0 - DAY,
            np.nan,
            T0 + 5 * DAY,
            T0 - 400 * DAY,
        ],
        category=[0, 0, 1, 1, 2, 2, 2],
        embeddings=[[1, 0], [0, 1], [1, 0], [-1, 0], [0.6, 0.8], [0, -1], [0, 1]],
        num_users=16,
        history=(["f1", "f1", "f1", "f1", "f2"], [0, 0, 1, 1, 2]),
        later=later_pairs if later else None,
    )


def hand_log() -> list[dict]:
    """Five answers: f1 twice (one listing a creator no catalog holds, `cx`), f2 once (short:
    2 of the 3 asked), f3 twice as a cold start (once empty, once degraded)."""
    return [
        record(T0 + 100, "f1", ["c0", "c1", "c2"], [0.9, 0.8, 0.7], k=3),
        record(T0 + 200, "f2", ["c0", "c3"], [0.5, 0.4], k=3),
        record(T0 + 300, "f1", ["c4", "c5", "cx"], [0.3, 0.2, 0.1], k=3),
        record(T0 + 400, "f3", [], [], k=2, source="popular", cold_start=True),
        record(
            T0 + 500,
            "f3",
            ["c0", "c5"],
            [16.0, 0.0],
            k=2,
            source="popular",
            cold_start=True,
            degraded="feature_store_unavailable",
        ),
    ]
