"""run_all.sh's failure path: a raising notebook stops the run and publishes nothing."""

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # runs run_all.sh in subprocesses


def _notebook(path: Path, *sources: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('profile = "smoke"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)


WRITE = (
    "import pandas as pd\n"
    "from gpslib.figures import save_table\n"
    "save_table(pd.DataFrame({{'v': [{value}]}}), '{name}', profile)\n"
)


@pytest.fixture(scope="module")
def failing_run(tmp_path_factory):
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("run_all.sh is exercised from its own .venv")
    tmp = tmp_path_factory.mktemp("runall")
    nbs, publish, runs = tmp / "notebooks", tmp / "figures", tmp / "runs"
    nbs.mkdir()
    publish.mkdir()
    (publish / "table_b.csv").write_text("good old table\n")
    _notebook(nbs / "01_ok.ipynb", WRITE.format(value=1, name="table_a"))
    _notebook(nbs / "02_fails.ipynb", WRITE.format(value=2, name="table_b"), "raise RuntimeError('boom')")
    _notebook(nbs / "03_never.ipynb", WRITE.format(value=3, name="table_c"))
    env = dict(os.environ, GPSLIB_NOTEBOOKS_DIR=str(nbs), GPSLIB_PUBLISH_DIR=str(publish), GPSLIB_RUNS_DIR=str(runs))
    proc = subprocess.run(
        [str(ROOT / "run_all.sh"), "--profile", "cpu"], env=env, capture_output=True, text=True, timeout=600
    )
    return proc, publish, runs


def test_a_raising_notebook_gives_a_nonzero_exit_naming_it(failing_run):
    proc, _, _ = failing_run
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "FAILED: 02_fails.ipynb" in proc.stderr


def test_earlier_figures_are_published_and_the_failed_notebooks_are_not(failing_run):
    _, publish, _ = failing_run
    assert (publish / "table_a.csv").exists()
    assert (publish / "table_b.csv").read_text() == "good old table\n"
    assert not (publish / "table_b.md").exists()


def test_the_run_stops_at_the_first_failure(failing_run):
    _, publish, runs = failing_run
    assert not (publish / "table_c.csv").exists()
    assert not (runs / "cpu" / "03_never.ipynb").exists()
    assert (runs / "cpu" / "02_fails.ipynb").exists()


def test_unknown_profile_is_refused_by_name():
    proc = subprocess.run(
        [str(ROOT / "run_all.sh"), "--profile", "laptop"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 2
    assert "'laptop'" in proc.stderr


def test_interpreter_is_python_311():
    assert sys.version_info[:2] == (3, 11)


# --------------------------------------------------------------------------- arguments, before the bootstrap
@pytest.fixture
def fake_root(tmp_path):
    """A copy of run_all.sh beside notebooks 01 and 03, with a PATH whose python3.11 / python3
    only leave a mark and fail: the bootstrap, if reached, stops at once, and the test sees it."""
    root = tmp_path / "repo"
    (root / "notebooks").mkdir(parents=True)
    (root / "run_all.sh").write_bytes((ROOT / "run_all.sh").read_bytes())
    (root / "run_all.sh").chmod(0o755)
    for name in ("01_first.ipynb", "03_third.ipynb"):
        _notebook(root / "notebooks" / name, "pass")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python3.11", "python3"):
        (bin_dir / name).write_text(f"#!/bin/sh\ntouch {tmp_path / 'bootstrapped'}\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    return root


def _run_fake(root, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPSLIB_") and k != "PYTHON"}
    env["PATH"] = f"{root.parent / 'bin'}{os.pathsep}{os.environ['PATH']}"
    proc = subprocess.run([str(root / "run_all.sh"), *args], env=env, capture_output=True, text=True, timeout=60)
    return proc, (root.parent / "bootstrapped").exists()


@pytest.mark.parametrize(
    "args, option",
    [(["--only"], "--only"), (["--profile"], "--profile"), (["--only", "--test"], "--only"),
     (["--profile", "--only", "03"], "--profile"), (["--only="], "--only"), (["--profile="], "--profile")],
)
def test_an_option_without_its_value_is_named_before_the_bootstrap(fake_root, args, option):
    proc, bootstrapped = _run_fake(fake_root, *args)
    assert proc.returncode == 2, proc.stderr
    assert f"run_all.sh: {option} needs a value" in proc.stderr
    assert not bootstrapped


def test_only_with_no_such_notebook_is_refused_before_the_bootstrap(fake_root):
    proc, bootstrapped = _run_fake(fake_root, "--only", "02")
    assert proc.returncode == 2, proc.stderr
    assert "--only 02: no notebook 02_*.ipynb" in proc.stderr and "present: 01 03" in proc.stderr
    assert not bootstrapped


def test_valid_arguments_reach_the_bootstrap(fake_root):
    proc, bootstrapped = _run_fake(fake_root, "--only", "03", "--profile", "smoke")
    assert bootstrapped and "Python 3.11 not found" in proc.stderr and proc.returncode == 1
