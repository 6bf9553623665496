"""Self-contained HTML reports of a job's figures, and the same figures logged to W&B.

What the drift check of the rebuild job (index.drift) and the relevance monitor write beside
their outputs. A report is one HTML file with nothing outside it: styles inline, every plot a
PNG embedded as a base64 `data:` URI, no script, no link or source on any server. It opens the
same from an artifact store, a mail attachment or a machine without internet, and it is
written atomically (common.io), so a reader sees the previous report or the new one.

    report = Report("Drift v00011 → v00012", made_by={"command": "python -m index rebuild"})
    report.breach("cosine_shift 0.41 > max_cosine_shift 0.30 (by 0.11)")
    report.table("Figures", {"cosine_shift": 0.41, "neighbour_overlap@10": 0.62})
    fig = new_figure()
    fig.subplots().hist(shifts, bins=50)
    report.figure("Per-creator cosine shift", fig, caption="after orthogonal Procrustes")
    report.write(folder / "drift.html")

Plots are matplotlib `Figure` objects made without pyplot (`new_figure`): no global figure
registry and no GUI backend, so a job can draw from any thread and nothing leaks between runs.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import logging
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.io import write_bytes

log = logging.getLogger(__name__)

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;
max-width:60rem;padding:0 1rem;color:#1b1f24;background:#fff}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;
border-bottom:1px solid #d0d7de;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #d0d7de;
padding:.25rem .6rem;text-align:left;vertical-align:top}th{background:#f6f8fa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.breaches{border:2px solid #cf222e;background:#ffebe9;padding:.6rem 1rem;margin:1rem 0}
.breaches h2{color:#cf222e;border:0;margin:0}.ok{border:2px solid #1a7f37;background:#dafbe1;
padding:.6rem 1rem;margin:1rem 0}figure{margin:1rem 0}img{max-width:100%}
figcaption,.note{color:#57606a;font-size:.9rem}dl{display:grid;grid-template-columns:max-content
auto;gap:.15rem 1rem}dt{font-weight:600}dd{margin:0;word-break:break-all}
"""


def new_figure(width: float = 7.0, height: float = 3.6):
    """A matplotlib Figure of `width` × `height` inches, outside pyplot (no backend, no
    registry): draw on `fig.subplots()` and hand it to `Report.figure`."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def png_bytes(fig, dpi: int = 100) -> bytes:
    """A Figure rendered as PNG (Agg), the bytes a report embeds."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def format_value(value: Any) -> str:
    """A figure as a table cell: 4 significant digits for floats, thousands separators for
    integers, an em dash for a missing one (None or NaN)."""
    if value is None or (isinstance(value, numbers.Real) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return f"{value:,}"
    if isinstance(value, numbers.Real):
        return f"{value:.4g}"
    return str(value)


def _is_number(value: Any) -> bool:
    """Python and numpy numbers, not booleans."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class Report:
    """An HTML report built in order: a title, what made it, breaches (shown first, in red),
    then sections of text, tables and figures as they were added."""

    def __init__(self, title: str, made_by: Mapping[str, Any] | None = None):
        if not title.strip():
            raise ValueError("a report needs a title, e.g. 'Drift v00011 → v00012'")
        self.title = title
        self.made_by = {"written at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        self.made_by.update(made_by or {})
        self.breaches: list[str] = []
        self._sections: list[str] = []

    def breach(self, *lines: str) -> Report:
        """Thresholds the figures broke, one line each: the report leads with them."""
        self.breaches.extend(lines)
        return self

    def text(self, heading: str | None, paragraph: str) -> Report:
        self._sections.append(_heading(heading) + f"<p>{html.escape(paragraph)}</p>")
        return self

    def table(
        self,
        heading: str | None,
        rows: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        note: str | None = None,
    ) -> Report:
        """A mapping as a two-column table (figure, value), or a list of rows with the first
        row's keys as columns."""
        body = _pairs(rows) if isinstance(rows, Mapping) else _rows(rows)
        self._sections.append(_heading(heading) + body + _note(note))
        return self

    def figure(self, heading: str | None, fig, caption: str | None = None, dpi: int = 100):
        """A matplotlib Figure (or PNG bytes) embedded as a base64 data URI."""
        png = fig if isinstance(fig, bytes) else png_bytes(fig, dpi)
        if not png.startswith(b"\x89PNG"):
            raise ValueError("Report.figure takes a matplotlib Figure or PNG bytes")
        data = base64.b64encode(png).decode("ascii")
        alt = html.escape(caption or heading or "figure", quote=True)
        self._sections.append(
            _heading(heading)
            + f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">'
            + (f"<figcaption>{html.escape(caption)}</figcaption>" if caption else "")
            + "</figure>"
        )
        return self

    def html(self) -> str:
        made = "".join(
            f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(format_value(v))}</dd>"
            for k, v in self.made_by.items()
        )
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{html.escape(self.title)}</h1>"
            f"<section><h2>What made this</h2><dl>{made}</dl></section>"
            + self._verdict()
            + "".join(f"<section>{s}</section>" for s in self._sections)
            + "</body></html>\n"
        )

    def _verdict(self) -> str:
        if not self.breaches:
            return '<div class="ok">No threshold was breached.</div>'
        items = "".join(f"<li>{html.escape(line)}</li>" for line in self.breaches)
        return (
            f'<div class="breaches" role="alert"><h2>{len(self.breaches)} threshold(s) '
            f"breached</h2><ul>{items}</ul></div>"
        )

    def write(self, path: str | os.PathLike) -> Path:
        """The report as one file at `path`, atomically (temporary file, fsync, rename)."""
        write_bytes(path, self.html().encode("utf-8"))
        return Path(path)


def _heading(heading: str | None) -> str:
    return f"<h2>{html.escape(heading)}</h2>" if heading else ""


def _note(note: str | None) -> str:
    return f'<p class="note">{html.escape(note)}</p>' if note else ""


def _cell(value: Any) -> str:
    kind = ' class="num"' if _is_number(value) and not math.isnan(value) else ""
    return f"<td{kind}>{html.escape(format_value(value))}</td>"


def _pairs(rows: Mapping[str, Any]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th>{_cell(v)}</tr>" for k, v in rows.items())
    return f"<table>{body}</table>"


def _rows(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return '<p class="note">(none)</p>'
    columns = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(r.get(c)) for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def flatten(figures: Mapping[str, Any], prefix: str = "", sep: str = "/") -> dict[str, float]:
    """Nested figures as one level of `a/b/c` keys, numbers only: what W&B and Prometheus take.
    Missing figures (None, NaN), text and lists are left out."""
    out: dict[str, float] = {}
    for key, value in figures.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name, sep))
        elif isinstance(value, bool):
            out[name] = float(value)
        elif _is_number(value) and math.isfinite(value):
            out[name] = value.item() if hasattr(value, "item") else value
    return out


def log_to_wandb(
    figures: Mapping[str, Any],
    directory: str | os.PathLike,
    job_type: str,
    name: str | None = None,
    config: Mapping[str, Any] | None = None,
    project: str = "towerline",
) -> Path | None:
    """Log `figures` (flattened) as one W&B run under `directory`; returns the run's folder.

    Offline unless the environment says otherwise (WANDB_MODE=online or disabled), as the
    training logger is: a job never needs the network. A W&B failure is logged and returns None
    rather than failing the job: the figures are in the job's own JSON and report already.
    """
    flat = flatten(figures)
    try:
        import wandb

        run = wandb.init(
            project=project, dir=str(directory), job_type=job_type, name=name,
            config=dict(config or {}), mode=os.environ.get("WANDB_MODE", "offline"),
            reinit="create_new",  # a run another part of this process holds stays open
            settings=wandb.Settings(silent=True, disable_git=True, save_code=False),
        )  # fmt: skip
        run.log(flat)
        run.summary.update(flat)
        folder = Path(run.dir).parent if run.dir else None
        run.finish()
        # The run's settings stay in wandb's process-wide singleton after finish(): a later
        # wandb.init in this process (training's logger, in tests) would inherit them and ask
        # for an API key. teardown() forgets them, as a fresh process would.
        wandb.teardown()
        return folder
    except Exception as e:  # the job's outputs do not depend on W&B
        log.warning("could not log %d figures to W&B under %s: %s", len(flat), directory, e)
        return None
