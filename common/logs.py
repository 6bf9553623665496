"""The log format of every command line: one place, so a scheduler's log reads the same for
`python -m data`, `index` and `serving`."""

from __future__ import annotations

import logging
import sys


def setup_logging(quiet: bool = False) -> None:
    """INFO to stderr (WARNING with --quiet); faiss's note of which SIMD build it loaded is kept
    out of the INFO lines."""
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
