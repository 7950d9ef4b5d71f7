"""Command lines from the config dataclasses: the CLIs of :mod:`gpslib.pretrain` and :mod:`gpslib.finetune`.

transformers' ``HfArgumentParser`` turns a dataclass into typed flags: ``--name`` (and
``--name-with-dashes``) for every field, ``choices`` and ``help`` from the field's
``metadata``, ``(default: ...)`` in ``--help``. A run's defaults are its profile's settings
(:mod:`gpslib.run_profiles`), so :func:`settings_flags` derives, from a config dataclass
(:class:`gpslib.finetune.FinetuneConfig`, :class:`gpslib.pretrain.PretrainConfig`), the
dataclass of flags whose defaults are those settings: a flag overrides the profile, and
``--profile smoke --help`` shows the smoke profile's values. Two kinds of field get a
parser of their own: a setting that may be None takes ``none`` (``--early_stopping_patience
none``), and a nested one (a dict, such as ``--gps``) takes a JSON object.

Bad values end the command with argparse's usage error (exit status 2, a message naming the
value): unknown flags, values of the wrong type or outside ``choices`` here; everything else
when the CLI validates the config (``validate()``), before any model is built.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from transformers import HfArgumentParser

__all__ = ["setting", "settings_flags", "preparse", "parse", "flags_to_config"]


def setting(default: Any = dataclasses.MISSING, help: str = "", choices: tuple | None = None, **kwargs: Any):
    """A config dataclass field whose ``metadata`` (``help``, ``choices``) its flag shows.

    ``dataclasses.field(default=default, metadata={"help": help, "choices": choices}, **kwargs)``,
    without ``choices`` when None (pass ``default_factory`` in ``kwargs`` for a dict).
    """
    metadata = {"help": help} | ({"choices": choices} if choices is not None else {})
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def _json_object(text: str) -> dict[str, Any]:
    """A JSON object (argparse type of a dict-valued setting)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object ({{\"name\": value, ...}})")
    return value


def _none_or(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """``kind``, or None for ``none`` / ``null`` (argparse type of a setting that may be None)."""

    def parse_value(text: str) -> Any:
        return None if text.lower() in ("none", "null") else kind(text)

    parse_value.__name__ = f"{getattr(kind, '__name__', kind)} or none"  # argparse: "invalid int or none value: 'x'"
    return parse_value


def _flag_type(hint: Any) -> Any:
    """What ``HfArgumentParser`` should parse a field of type ``hint`` with."""
    if typing.get_origin(hint) is dict or hint is dict:
        return _json_object
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(kinds) == 1 and len(typing.get_args(hint)) == 2:
            return _none_or(_flag_type(kinds[0]))
        raise TypeError(f"no flag type for {hint!r}: only X | None unions are supported")
    return hint


def settings_flags(config_cls: type, defaults: Mapping[str, Any], group: str) -> type:
    """The dataclass of flags for ``config_cls``'s fields, defaulting to ``defaults``.

    ``config_cls``: a dataclass whose fields carry ``metadata`` ``help`` (and ``choices``);
    ``defaults``: values for some of its fields (a profile's settings), the others keep their
    own defaults; ``group``: the heading of these flags in ``--help``. The fields keep their
    names, metadata and types, except that ``X | None`` parses ``none`` as None and a dict
    parses a JSON object. Raises ValueError naming a default that is not a field.
    """
    hints = typing.get_type_hints(config_cls)
    names = [f.name for f in dataclasses.fields(config_cls)]
    unknown = sorted(set(defaults) - set(names))
    if unknown:
        raise ValueError(f"unknown {config_cls.__name__} settings {unknown}; valid ones are {names}")
    fields = []
    for f in dataclasses.fields(config_cls):
        if f.name in defaults:
            value = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            value = f.default
        else:
            value = f.default_factory()
        default = (dataclasses.field(default_factory=lambda v=value: json.loads(json.dumps(v)), metadata=f.metadata)
                   if isinstance(value, (dict, list)) else dataclasses.field(default=value, metadata=f.metadata))
        fields.append((f.name, _flag_type(hints[f.name]), default))
    flags = dataclasses.make_dataclass(f"{config_cls.__name__}Flags", fields)
    flags._argument_group_name = group  # HfArgumentParser's heading of these flags
    return flags


def preparse(argv: list[str] | None, **defaults: str) -> dict[str, str]:
    """The values of the flags ``defaults`` names (``profile="cpu"`` -> ``--profile``) in ``argv``,
    ignoring every other flag: what the other flags' defaults depend on."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for name, default in defaults.items():
        parser.add_argument(f"--{name}", f"--{name.replace('_', '-')}", default=default)
    known, _ = parser.parse_known_args(argv)
    return vars(known)


def parse(parser: HfArgumentParser, argv: list[str] | None) -> tuple:
    """``parser.parse_args_into_dataclasses(argv)``, exiting 2 with argparse's usage error
    on an unrecognised argument (HfArgumentParser raises ValueError) and reading no ``.args`` file."""
    *outputs, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True,
                                                        look_for_args_file=False)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return tuple(outputs)


def flags_to_config(parser: argparse.ArgumentParser, config_cls: type, flags: Any):
    """``config_cls(**flags).validate()``; a ValueError becomes the parser's usage error (exit 2)."""
    try:
        return config_cls(**dataclasses.asdict(flags)).validate()
    except ValueError as err:
        parser.error(str(err))
