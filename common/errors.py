"""What can go wrong in any stage, and the exit code each failure gives a scheduler.

A scheduler (cron, Airflow, a Kubernetes job) reads exit codes, so every command line of the
project (`python -m data|index|serving ...`) maps each failure class to one documented number
(README, "Exit codes"). Every message names the value that was wrong and what to do.
"""

from __future__ import annotations

import logging

OK = 0
"""Done: published, written, or already up to date."""
BAD_INPUT = 2
"""A bad config (unknown key, bad value) or bad input data; also argparse's usage errors."""
MISSING_INPUT = 3
"""An input is not there: a checkpoint, a prepared dataset, an index store."""
VALIDATION_FAILED = 4
"""Built but not fit to use (recall floor, counts, NaN), or a stored artifact that does not
match its manifest (corrupted, truncated, another model's); nothing was published."""
FAILED = 5
"""Anything unexpected; the traceback is logged."""
BUSY = 6
"""Another job holds the lock of what this one would write."""
UNAVAILABLE = 7
"""A dependency did not answer in time (Redis, Triton)."""


class StageError(Exception):
    """Base class of the failures the command lines report; `exit_code` is what they return."""

    exit_code = FAILED


class ConfigError(StageError, ValueError):
    """A config field or command-line flag is wrong; the message names it."""

    exit_code = BAD_INPUT


class MissingInputError(StageError, FileNotFoundError):
    exit_code = MISSING_INPUT


class ValidationError(StageError, ValueError):
    exit_code = VALIDATION_FAILED


class IntegrityError(StageError, ValueError):
    """A stored artifact does not match its manifest (corrupted, truncated, wrong model)."""

    exit_code = VALIDATION_FAILED


class BusyError(StageError, RuntimeError):
    exit_code = BUSY


class UnavailableError(StageError, RuntimeError):
    """A dependency did not answer in time: callers on the request path degrade instead."""

    exit_code = UNAVAILABLE


def exit_code(error: BaseException) -> int:
    """The exit code for any exception a command raised."""
    return getattr(error, "exit_code", FAILED)


def report(stage: str, command: str, error: BaseException) -> int:
    """A command's failure as one line on stdout (what a scheduler's log shows), the traceback
    logged only for unexpected errors; returns the exit code."""
    code = exit_code(error)
    if code == FAILED:
        logging.getLogger(stage).exception("%s failed", command)
    print(f"{stage} {command}: FAILED (exit {code}) {type(error).__name__}: {error}")
    return code
