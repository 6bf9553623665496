"""Sources: each maps one input format into the canonical tables (see data.schema)."""

from __future__ import annotations

from typing import Any

from data.sources.base import Source


def build(spec: dict[str, Any]) -> Source:
    """A source from its config section: `kind` plus that source's parameters."""
    spec = dict(spec)
    kind = spec.pop("kind")
    if kind == "synthetic":
        from data.sources.synthetic import SyntheticSource as cls
    elif kind == "csv":
        from data.sources.files import CsvSource as cls
    elif kind == "parquet":
        from data.sources.files import ParquetSource as cls
    elif kind == "lastfm":
        from data.sources.public import LastFmSource as cls
    elif kind == "movielens":
        from data.sources.public import MovieLensSource as cls
    elif kind == "lightgcn":
        from data.sources.public import LightGCNSource as cls
    else:
        raise ValueError(
            f"source.kind={kind!r} is not known; "
            "use synthetic, csv, parquet, lastfm, movielens or lightgcn"
        )
    try:
        return cls(**spec)
    except TypeError as e:
        raise ValueError(f"source.kind={kind}: {e}") from e
