"""The two environment descriptions agree, and CI calls exactly the README's test command."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pins_from_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {d.split("==")[0]: d for d in deps if "==" in d}


def test_environment_yml_pins_the_same_versions_as_pyproject():
    env_pins = {
        m.group(1): m.group(0).strip()
        for m in re.finditer(r"([A-Za-z0-9_.\-]+)==[^\s#]+", (ROOT / "environment.yml").read_text())
    }
    assert _pins_from_pyproject() == env_pins


def test_torch_is_pinned_exactly():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch,) = [d for d in deps if re.match(r"torch\s*([=<>!~]|$)", d)]
    assert re.fullmatch(r"torch==\d+\.\d+\.\d+", torch), torch


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = "./run_all.sh --test"
    assert command in readme
    assert re.search(r"^exec \./run_all\.sh --test$", ci, re.M)


def test_the_versions_the_readme_quotes_are_the_pinned_ones():
    quoted = re.findall(r"`([A-Za-z0-9_.\-]+)==([^`\s]+)`", (ROOT / "README.md").read_text())
    pins = _pins_from_pyproject()
    assert quoted and all(pins.get(name) == f"{name}=={version}" for name, version in quoted), quoted
