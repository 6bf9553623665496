"""`python -m monitoring run` on a real published version: figures per window equal the metrics
computed directly on the same answers, the report is written self-contained, a breach is a line
and exit 4, and bad config names the value."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from common import config, errors
from data import tables
from index import store
from monitoring import __main__ as cli
from monitoring import answers, metrics, monitor
from monitoring.catalog import Catalog
from monitoring.config import MonitorConfig
from tests.conftest import REPO
from tests.index import conftest as index_fixtures
from tests.monitoring.helpers import T0, record, write_log

one_thread = index_fixtures.one_thread
tiny_data = index_fixtures.tiny_data
tiny_checkpoint = index_fixtures.tiny_checkpoint
published = index_fixtures.published
HOUR = 3600.0


@pytest.fixture(scope="module")
def served_log(published, tmp_path_factory) -> tuple[Path, Path, str]:
    """A log of two windows of answers of the published version: the first hour's lists all
    open with the same two creators (popularity-biased), the second's are spread out."""
    root = Path(published.store)
    version = store.current_version(root)
    creators = pq.read_table(store.versions_dir(root) / version / store.CREATORS)
    ids = creators["creator_id"].to_pylist()
    fans = pq.read_table(Path(published.data) / tables.USERS)["user_id"].to_pylist()[:40]
    rng = np.random.default_rng(0)
    lines = []
    for i, fan in enumerate(fans):
        lines.append(record(T0 + i, fan, ids[:2] + rng.choice(ids[2:], 3, replace=False).tolist(),
                            versions=("m", version)))  # fmt: skip
        lines.append(record(T0 + HOUR + i, fan, rng.choice(ids, 5, replace=False).tolist(),
                            versions=("m", version)))  # fmt: skip
    log = write_log(tmp_path_factory.mktemp("served") / "answers.arrows", lines)
    return log, root, version


def _config(log: Path, root: Path, *args: str) -> MonitorConfig:
    values = ["--name", "t", "--log", str(log), "--index", str(root), "--wandb", "false", *args]
    return config.load(MonitorConfig, None, values)


def test_each_window_is_measured_as_the_metrics_measure_it(served_log):
    log, root, version = served_log
    result = monitor.run(_config(log, root, "--later.split", "test"))
    assert [row["index_version"] for row in result["rows"]] == [version, version]
    assert [row["answers"] for row in result["rows"]] == [40, 40]
    everything = answers.read(log)
    catalog = Catalog.from_version(root, version, later_split="test")
    for hour, row in enumerate(result["rows"]):
        start = np.floor(T0 / HOUR) * HOUR + hour * HOUR
        part = everything.take((everything.ts >= start) & (everything.ts < start + HOUR))
        want = metrics.compute(part, catalog)
        for name in ("coverage", "gini", "personalisation", "novelty", "online_recall"):
            assert row[name] == pytest.approx(want[name], nan_ok=True), name
    # the planted bias: the first hour's exposure is more concentrated than the second's
    assert result["rows"][0]["gini"] > result["rows"][1]["gini"]
    assert result["rows"][0]["rank_p99_seconds"] == pytest.approx(3e-3)


def test_the_report_is_written_self_contained_with_its_plots(served_log):
    log, root, _ = served_log
    monitor.run(_config(log, root))
    folder = log.parent / "monitor"
    page = (folder / monitor.REPORT_HTML).read_text()
    assert page.count("data:image/png;base64,") >= 3
    assert "http://" not in page and "https://" not in page
    saved = json.loads((folder / monitor.REPORT_JSON).read_text())  # strict JSON: no NaN
    assert len(saved["rows"]) == 2 and saved["breaches"] == []


def test_a_breach_is_a_line_and_exit_4(served_log, capsys):
    log, root, _ = served_log
    code = cli.main(["run", "--name", "t", "--log", str(log), "--index", str(root),
                     "--wandb", "false", "--alerts.max", "{gini: 0.01}"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == errors.VALIDATION_FAILED
    breaches = [line for line in out.splitlines() if line.startswith("BREACH")]
    assert len(breaches) == 2 and all("gini" in line and "> max 0.01" in line for line in breaches)


def test_bad_input_names_the_value(served_log, tmp_path, capsys):
    log, root, _ = served_log
    base = ["run", "--name", "t", "--index", str(root), "--wandb", "false"]
    assert cli.main([*base, "--log", str(log), "--alerts.min", "{recal: 0.1}"]) == 2
    assert "recal" in _said(capsys)
    assert cli.main([*base, "--log", str(log), "--window", "soon"]) == 2
    assert "--window='soon'" in _said(capsys)
    assert cli.main([*base, "--log", str(tmp_path / "none.arrows")]) == 3
    empty = write_log(tmp_path / "similar.arrows", [record(T0, "f", ["c"], route="similar")])
    assert cli.main([*base, "--log", str(empty)]) == 3
    assert "[recommend]" in _said(capsys).replace("'", "")


def _said(capsys) -> str:
    captured = capsys.readouterr()
    return captured.out + captured.err


def test_the_log_prints_as_json_lines_for_people(tmp_path, capsys):
    """`python -m monitoring log`: workers' logs merged by time, one fan's, the last N."""
    from serving.answer_log import worker_path

    path = tmp_path / "answers.arrows"
    mine = [record(T0 + 2, "f1", ["c1"]), record(T0 + 4, "f1", ["c2", "c3"])]
    write_log(worker_path(path, 0), [record(T0 + 1, "f2", ["c0"]), mine[1]])
    write_log(worker_path(path, 1), [mine[0], record(T0 + 3, "f2", [])])
    assert cli.main(["log", "--path", str(path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["ts"] for r in lines] == sorted(r["ts"] for r in lines) and len(lines) == 4
    assert cli.main(["log", "--path", str(path), "--user_id", "f1", "--last", "1"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == mine[1:]
    assert cli.main(["log", "--path", str(tmp_path / "none.arrows")]) == 3
    assert "--answer_log.path" in _said(capsys)


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "monitoring").glob("*.yaml")))
def test_every_shipped_monitor_config_loads(path):
    cfg = config.load(MonitorConfig, path)
    assert cfg.name == path.stem and cfg.routes and (cfg.alerts.min or cfg.alerts.max)
