"""common.report: one self-contained HTML file (no http(s) source or link, no script, every plot
embedded as a PNG), breaches first, text escaped, written atomically; figures flattened for and
logged to W&B offline."""

import base64
import math
import pathlib
import re
import time

import numpy as np
import pytest

from common import report as reports

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def plotted() -> tuple[object, bytes]:
    fig = reports.new_figure(4, 3)
    ax = fig.subplots()
    ax.plot(np.arange(10), np.arange(10) ** 2, label="squares")
    ax.legend()
    return fig, reports.png_bytes(fig)


def test_a_report_is_self_contained_with_its_figures_embedded(tmp_path):
    fig, png = plotted()
    report = reports.Report("Drift <v1> → v2", {"command": "python -m index rebuild", "k": 10})
    report.breach("cosine_shift 0.41 > max_cosine_shift 0.3 (by 0.11)")
    report.table("Figures", {"cosine_shift": 0.41234567, "fans": 1000, "missing": None})
    report.table("Rows", [{"figure": "a & b", "value": float("nan")}, {"figure": "c", "value": 2}])
    report.figure("Squares", fig, caption="y = x²")
    path = report.write(tmp_path / "report.html")
    text = path.read_text()

    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert not EXTERNAL.search(text), EXTERNAL.search(text)
    assert "<script" not in text and "<link" not in text and "@import" not in text
    sources = re.findall(r'<img [^>]*src="([^"]+)"', text)
    assert len(sources) == 1 and sources[0].startswith("data:image/png;base64,")
    assert base64.b64decode(sources[0].split(",", 1)[1]) == png  # the figure itself
    # breaches lead, in front of the first figure table; text is escaped, numbers formatted
    assert text.index("1 threshold(s) breached") < text.index("<h2>Figures</h2>")
    assert "Drift &lt;v1&gt; → v2" in text and "a &amp; b" in text and "<v1>" not in text
    assert '<td class="num">0.4123</td>' in text and '<td class="num">1,000</td>' in text
    assert text.count("<td>—</td>") == 2  # None and NaN
    assert "python -m index rebuild" in text and "written at" in text


def test_no_breach_says_so_and_bad_input_is_refused(tmp_path):
    text = reports.Report("Monitor").text("Note", "all quiet").html()
    assert "No threshold was breached." in text and "threshold(s) breached" not in text
    with pytest.raises(ValueError, match="needs a title"):
        reports.Report("  ")
    with pytest.raises(ValueError, match="matplotlib Figure or PNG bytes"):
        reports.Report("x").figure("bad", b"GIF89a")


def test_the_write_is_atomic(tmp_path, monkeypatch):
    """A crash halfway through leaves the previous report whole and no temporary file."""
    path = tmp_path / "report.html"
    reports.Report("First").write(path)
    before = path.read_bytes()

    def half_then_crash(self, data):
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(pathlib.Path, "write_bytes", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        reports.Report("Second").table("t", {"a": 1}).write(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_flatten_keeps_finite_numbers_under_path_keys():
    nested = {"drift": {"cosine_shift": 0.2, "fans": np.int64(10), "note": "x", "skip": None},
              "ok": True, "nan": math.nan, "list": [1, 2]}  # fmt: skip
    flat = reports.flatten(nested)
    assert flat == {"drift/cosine_shift": 0.2, "drift/fans": 10, "ok": 1.0}
    assert type(flat["drift/fans"]) is int  # numpy numbers become Python's (JSON, W&B)
    assert reports.format_value(np.int64(12345)) == "12,345"
    assert reports.format_value(np.float32(0.123456)) == "0.1235"


def history_values(run_folder: pathlib.Path) -> dict[str, str]:
    """Key → JSON value of the history items in an offline run's .wandb log: each is a
    protobuf message of field 2 (key) and field 16 (value_json), both length-prefixed."""
    (log,) = run_folder.glob("run-*.wandb")
    data, out = log.read_bytes(), {}
    for m in re.finditer(rb"\x12([\x01-\x7f])", data):
        start, size = m.end(), m.group(1)[0]
        key, rest = data[start : start + size], data[start + size :]
        if rest[:2] == b"\x82\x01" and rest[2] < 0x80:
            out[key.decode(errors="replace")] = rest[3 : 3 + rest[2]].decode(errors="replace")
    return out


def test_figures_are_logged_to_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is the default, not the env's
    folder = reports.log_to_wandb(
        {"drift": {"cosine_shift": 0.25, "list_overlap": 0.75}, "breaches": 2},
        tmp_path, job_type="test", name="drift-test",
    )  # fmt: skip
    assert folder is not None and folder.parent == tmp_path / "wandb"
    assert folder.name.startswith("offline-run-")
    logged, deadline = history_values(folder), time.monotonic() + 20
    while "breaches" not in logged and time.monotonic() < deadline:
        time.sleep(0.2)  # wandb's service process may still be flushing after finish()
        logged = history_values(folder)
    assert logged["drift/cosine_shift"] == "0.25" and logged["drift/list_overlap"] == "0.75"
    assert logged["breaches"] == "2"
