"""The one typed config loader of the data, index and serving stages.

A config is a dataclass: its fields carry types and docstrings (the `--help` text), nested
dataclasses are sections, and `__post_init__` refuses bad values with a ConfigError naming the
flag to change. A YAML file sets the fields and command-line flags override them in the syntax
of training's LightningCLI, `--section.field VALUE`:

    python -m data prepare --config configs/data/lastfm.yaml --split.test_fraction 0.2
    python -m index rebuild --config configs/index/gowalla.yaml --recall_target 0.98

Both go through jsonargparse, the parser under LightningCLI, so types are checked the same way
(`--nprobe [8,16]`, `--data null`) and an unknown key is an error that lists the known ones.
From Python, `load(IndexConfig, path, ["--k", "20"])` or `load(IndexConfig, values={...})`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace, set_parsing_settings

from common.errors import ConfigError

T = TypeVar("T")

# Field docstrings (the string under each dataclass field) become the flags' --help text.
set_parsing_settings(docstring_parse_attribute_docstrings=True)


def add_config_arguments(parser: ArgumentParser, schema: type) -> None:
    """`--config FILE` and a flag per field of `schema` (`--section.field` for sections)."""
    parser.add_argument(
        "--config", action=ActionConfigFile, help="a YAML file of the fields below (or its text)"
    )
    parser.add_class_arguments(schema, None, fail_untyped=True, sub_configs=True)


def parser_for(schema: type, **kwargs) -> ArgumentParser:
    """A parser of `schema`'s fields that raises instead of exiting (for `load`)."""
    p = ArgumentParser(exit_on_error=False, **kwargs)
    add_config_arguments(p, schema)
    return p


def build(schema: type[T], parsed: Namespace | dict) -> T:
    """The config object of a parsed namespace (its other keys, e.g. `config` or a command's
    own flags, are ignored); `__post_init__` checks run here."""
    raw = parsed.as_dict() if isinstance(parsed, Namespace) else dict(parsed)
    return _construct(schema, raw)


def load(
    schema: type[T],
    path: str | Path | None = None,
    args: Sequence[str] = (),
    values: dict[str, Any] | None = None,
) -> T:
    """`schema` from a YAML file and/or a dict of values, then command-line style `args`."""
    argv: list[str] = []
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config {path} not found; the shipped configs are in configs/")
        argv += ["--config", str(path)]
    if values:
        argv += ["--config", yaml.safe_dump(values)]
    parsed = parse_args(parser_for(schema), [*argv, *args], schema)
    return build(schema, parsed)


def parse_args(parser: ArgumentParser, argv: Sequence[str], schema: type | None = None):
    """`parser.parse_args(argv)` with a ConfigError for a bad flag, value or config key (so a
    command line reports it in one line and exits 2) instead of argparse's usage and exit; the
    parser must be made with exit_on_error=False. `schema` names the known fields."""
    try:
        return parser.parse_args(list(argv))
    except Exception as e:  # jsonargparse's ArgumentError: the message names the key
        message = _one_line(e)
        if schema is not None and ("not accept" in message or "unrecognized" in message):
            message += f"; the known fields are {known_fields(schema)}"
        raise ConfigError(message) from e


def command_of(argv: Sequence[str], commands) -> str:
    """The subcommand named on a command line (for reporting one that failed to parse)."""
    return next((a for a in argv if a in commands), "arguments")


def known_fields(schema: type, prefix: str = "") -> list[str]:
    """Every field of a config as its flag: `--name`, `--section.field`."""
    hints = typing.get_type_hints(schema)
    out = []
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(hints[f.name]):
            out += known_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append(f"--{prefix}{f.name}")
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML, loadable again with `load` (written beside artifacts)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _construct(schema: type, raw: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(schema)
    values = {}
    for f in dataclasses.fields(schema):
        if f.name not in raw:
            continue
        value, kind = raw[f.name], hints[f.name]
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            value = _construct(kind, value)
        values[f.name] = value
    try:
        return schema(**values)
    except TypeError as e:  # a required field without a value
        raise ConfigError(f"{schema.__name__}: {e}") from e


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
