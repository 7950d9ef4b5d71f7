"""gpslib.cli: flags derived from the config dataclasses (the CLIs themselves: test_finetune.py, test_pretrain.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from transformers import HfArgumentParser

from gpslib.cli import flags_to_config, parse, preparse, settings_flags


@dataclasses.dataclass
class Toy:
    name: str = dataclasses.field(default="a", metadata={"help": "a name", "choices": ("a", "b")})
    steps: int = dataclasses.field(default=1, metadata={"help": "steps"})
    limit: int | None = dataclasses.field(default=None, metadata={"help": "a limit (none: no limit)"})
    nested: dict[str, Any] = dataclasses.field(default_factory=dict, metadata={"help": "a JSON object"})

    def validate(self) -> "Toy":
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1; got steps={self.steps!r}")
        return self


def _parser(defaults=None):
    return HfArgumentParser(settings_flags(Toy, defaults or {}, "settings"), prog="toy")


def _config(argv, defaults=None):
    parser = _parser(defaults)
    (flags,) = parse(parser, argv)
    return flags_to_config(parser, Toy, flags)


def test_defaults_come_from_the_given_settings_and_flags_override_them():
    assert _config([]) == Toy()
    assert _config([], {"steps": 5, "nested": {"k": 1}}) == Toy(steps=5, nested={"k": 1})
    assert _config(["--steps", "7", "--name", "b"], {"steps": 5}) == Toy(name="b", steps=7)
    assert _config(["--limit", "3", "--nested", '{"k": [1, 2]}']) == Toy(limit=3, nested={"k": [1, 2]})
    assert _config(["--limit", "none"], {"limit": 4}) == Toy(limit=None)


def test_a_dict_default_is_not_shared_between_parses():
    first = _config([], {"nested": {"k": 1}})
    first.nested["k"] = 99
    assert _config([], {"nested": {"k": 1}}).nested == {"k": 1}


def test_help_shows_choices_help_and_the_given_defaults(capsys):
    with pytest.raises(SystemExit):
        _parser({"steps": 5}).parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--name {a,b}" in text and "steps (default: 5)" in text and "settings:" in text


@pytest.mark.parametrize("argv, message", [
    (["--name", "c"], "invalid choice: 'c'"), (["--steps", "x"], "invalid int value: 'x'"),
    (["--limit", "0.5"], "invalid int or none value: '0.5'"), (["--nested", "{k: 1}"], "'{k: 1}' is not JSON"),
    (["--nested", "3"], "'3' is not a JSON object"), (["--other", "1"], "unrecognized arguments: --other 1"),
    (["--steps", "0"], "steps=0"),
])
def test_bad_values_exit_2_naming_them(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _config(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_default_that_is_not_a_field_is_named():
    with pytest.raises(ValueError, match="'colour'"):
        settings_flags(Toy, {"colour": "red"}, "settings")


def test_preparse_reads_only_the_flags_it_is_asked_for():
    assert preparse(["--steps", "3", "--profile=smoke", "--help"], profile="cpu", base="x") == {"profile": "smoke",
                                                                                                 "base": "x"}
    assert preparse([], profile="cpu") == {"profile": "cpu"}
