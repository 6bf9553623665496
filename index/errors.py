"""What can go wrong in the index stage, each with the exit code the rebuild job returns for it.

A scheduler reads the exit code, so each failure class maps to one documented number (README,
"The index stage"); every error message names the value that was wrong and what to do.
"""

from __future__ import annotations

from data.config import ConfigError

OK = 0
"""Published a new version, or the current one was already built from the same inputs."""
BAD_CONFIG = 2
"""The config is invalid: unknown key, bad value, metric that does not match the embeddings."""
MISSING_INPUT = 3
"""The checkpoint or the catalog (prepared dataset) is not there."""
VALIDATION_FAILED = 4
"""The new index was built but is not fit to serve (recall floor, counts, NaN); not published."""
BUILD_FAILED = 5
"""Anything else went wrong while exporting, building or publishing; nothing was published."""
BUSY = 6
"""Another rebuild holds the store's lock."""


class IndexStageError(Exception):
    """Base class; `exit_code` is what `python -m index rebuild` returns."""

    exit_code = BUILD_FAILED


class MissingInputError(IndexStageError, FileNotFoundError):
    exit_code = MISSING_INPUT


class MetricMismatchError(IndexStageError, ValueError):
    """The index metric is not the metric the towers were trained with."""

    exit_code = BAD_CONFIG


class ValidationError(IndexStageError, ValueError):
    exit_code = VALIDATION_FAILED


class IntegrityError(IndexStageError, ValueError):
    """A stored index does not match its manifest (corrupted, truncated, wrong model)."""

    exit_code = VALIDATION_FAILED


class BusyError(IndexStageError, RuntimeError):
    exit_code = BUSY


def exit_code(error: BaseException) -> int:
    """The exit code for any exception raised by the index stage."""
    if isinstance(error, ConfigError):
        return BAD_CONFIG
    return getattr(error, "exit_code", BUILD_FAILED)


def report(stage: str, command: str, error: BaseException) -> int:
    """A command's failure as one line on stdout (what a scheduler's log shows), the traceback
    logged only for unexpected errors; returns the exit code."""
    import logging

    code = exit_code(error)
    if code == BUILD_FAILED:
        logging.getLogger(stage).exception("%s failed", command)
    print(f"{stage} {command}: FAILED (exit {code}) {type(error).__name__}: {error}")
    return code
