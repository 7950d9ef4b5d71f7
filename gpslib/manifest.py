"""What produced each published file: the manifest of figures/ and the rendered report.

``run_all.sh`` calls ``python -m gpslib.manifest publish ...`` once a notebook's files are
moved into the publish folder (``figures/``, or ``runs/smoke/figures/`` for smoke):
:func:`update_manifest` records each file in the folder's ``manifest.json`` (its SHA-256
and the :func:`run_record` of the run that wrote it: notebook, profile, git commit, settings
hash, seeds, wall time, package versions, device), and, for the cpu and paper profiles,
:func:`publish_report` stores the executed notebook in ``report/`` and rewrites
``report/index.md``. A notebook adds to its run record with :func:`record`;
``python -m gpslib.manifest check figures`` compares a folder with its manifest.

Nothing that trains imports this module, so editing it never invalidates the cached base
models or fine-tuning runs (their keys fingerprint the code they import,
:func:`gpslib.provenance.code_fingerprint`).
"""

from __future__ import annotations

import argparse
import ast
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat

from gpslib.atomic_files import atomic_write, atomic_write_text
from gpslib.figures import repo_root
from gpslib.provenance import gpslib_imports, settings_hash
from gpslib.run_profiles import SETTINGS, check_profile

__all__ = ["record", "file_sha256", "git_state", "package_versions", "device_info", "settings_sections", "run_record",
           "load_manifest", "update_manifest", "manifest_entry", "check_manifest", "write_report_index",
           "publish_report", "update_readme_times", "main"]

MANIFEST = "manifest.json"
RECORD = ".provenance.json"  # written by record() into the staging folder; never published
PACKAGES = ("gpslib", "torch", "transformers", "tokenizers", "accelerate", "peft", "bitsandbytes", "datasets",
            "numpy", "scipy", "scikit-learn", "pandas", "matplotlib", "nltk", "sacrebleu", "bert-score",
            "papermill", "nbclient", "ipykernel")
README_TIMES = ("<!-- times:start -->", "<!-- times:end -->")
_SETUP_LINE = re.compile(r"^profile=(\S+) seed=(-?\d+) torch=(\S+) threads=(\d+)", re.M)  # gpslib.runtime.setup


def record(**fields: Any) -> None:
    """Record ``fields`` (JSON-able) in the manifest entry of the running notebook's files.

    For what the manifest cannot read from the notebook itself: e.g.
    ``record(seeds={"shapes_vqa": 0, "numpy": 100})`` (merged into the entry's ``seeds``)
    or ``record(device={"cuda": torch.cuda.get_device_name()})`` (merged into ``device``);
    other keys go under ``recorded``. Calls add up. Does nothing outside ``run_all.sh``
    (without ``$GPSLIB_FIGURES_DIR`` there is no run to record into). Returns nothing, so a
    notebook cell ending with it shows no output.
    """
    folder = os.environ.get("GPSLIB_FIGURES_DIR")
    if not folder:
        return
    path = Path(folder) / RECORD
    merged = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    for key, value in json.loads(json.dumps(fields, default=str)).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = value
    atomic_write_text(path, json.dumps(merged, indent=1, sort_keys=True) + "\n")


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_state(root: str | os.PathLike | None = None) -> dict[str, Any]:
    """The commit checked out at ``root`` (default :func:`repo_root`) and whether the tree differs from it.

    ``dirty`` counts tracked changes and untracked, not ignored, files outside ``figures/``
    and ``report/`` (what a run writes); ``dirty_paths`` names the first 20. ``None``
    values where ``root`` is not in a git repository.
    """
    root = Path(root or repo_root())

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "--no-optional-locks", "-C", str(root), *args],
                              capture_output=True, text=True, timeout=60)

    try:
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=normal", "--",
                     ".", ":(exclude)figures", ":(exclude)report")
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None, "dirty_paths": []}
    if head.returncode != 0 or status.returncode != 0:
        return {"commit": None, "dirty": None, "dirty_paths": []}
    paths = [line[3:] for line in status.stdout.splitlines() if line.strip()]
    return {"commit": head.stdout.strip(), "dirty": bool(paths), "dirty_paths": paths[:20]}


def package_versions() -> dict[str, str | None]:
    """Installed versions of Python and of :data:`PACKAGES` (``None`` for one not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_info(torch_threads: int | None = None) -> dict[str, Any]:
    """The machine: CPU model (``/proc/cpuinfo``), cores, ``torch_threads`` as given, and GPUs.

    GPUs are those ``nvidia-smi`` lists (none where it is absent), with
    ``$CUDA_VISIBLE_DEVICES`` if set; a notebook can record what torch used via :func:`record`.
    """
    cpu = platform.processor() or platform.machine()
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    gpus: list[str] = []
    if shutil.which("nvidia-smi"):
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=60)
            gpus = [line.strip() for line in smi.stdout.splitlines() if line.strip()] if smi.returncode == 0 else []
        except (OSError, subprocess.TimeoutExpired):
            gpus = []
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch_threads, "gpus": gpus,
            "platform": platform.platform()}
    if hasattr(os, "getloadavg"):  # how busy the machine was: wall times depend on it
        info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        info["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return info


def _settings_read_in(source: str) -> set[str]:
    """Sections named by string literal in ``profile_settings("x", ...)`` or ``SETTINGS["x"]`` in ``source``."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if func == "profile_settings" and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
        elif (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)
              and isinstance(node.slice.value, str) and getattr(node.value, "id", "") == "SETTINGS"):
            found.add(node.slice.value)
    return found


def settings_sections(sources: list[str]) -> list[str]:
    """The ``SETTINGS`` sections that notebook code ``sources`` (one string per code cell) reads.

    Read from the code, not from a run: the sections the cells name (``profile_settings("rope",
    profile)``), and those named in every gpslib module the cells import, directly or
    through other gpslib modules (``ensure_base_model`` reads "pretrain"). Cells that do not
    parse as Python (IPython magics) are skipped.
    """
    sections, todo = set(), []
    for source in sources:
        code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
        try:
            tree = ast.parse(code)
        except SyntaxError:
            continue
        sections |= _settings_read_in(code)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gpslib":
                todo.append(node.module)
                todo += [f"gpslib.{a.name}" for a in node.names if node.module == "gpslib"]
            elif isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.split(".")[0] == "gpslib"]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        path = Path(__file__).resolve().parent / (module.partition(".")[2].replace(".", "/") + ".py")
        # run_profiles defines SETTINGS; its own mentions (model_label's name of the paper's
        # model) are not a run reading a section.
        if module in seen or module in ("gpslib", "gpslib.run_profiles") or not path.is_file():
            continue
        seen.add(module)
        sections |= _settings_read_in(path.read_text(encoding="utf-8"))
        todo += gpslib_imports(module)
    return sorted(s for s in sections if s in SETTINGS)


def _seeds_in(settings: Any, prefix: str = "") -> dict[str, Any]:
    """Every value under a key containing "seed" in nested ``settings``, by dotted path."""
    found = {}
    if isinstance(settings, dict):
        for key, value in settings.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            found.update({path: value} if "seed" in str(key) else _seeds_in(value, path))
    return found


def run_record(executed: str | os.PathLike, files: list[str], profile: str | None = None,
               staging: str | os.PathLike | None = None) -> dict[str, Any]:
    """What produced ``files``: the provenance of one papermill run of a notebook.

    ``executed`` is the executed notebook papermill wrote; ``profile`` defaults to its
    injected ``profile`` parameter; ``staging`` is the folder the run wrote into (its
    :func:`record` file, if any, is merged in). Fields: notebook, profile, started_at,
    finished_at, wall_time_s, git (commit, dirty, dirty_paths), settings (sections, scope,
    hash of ``{section: SETTINGS[section][profile]}``), seeds (``setup``: the seed
    ``gpslib.runtime.setup`` printed; ``settings``: every seed in those sections; plus what
    :func:`record` added), packages, device, files.
    """
    executed = Path(executed)
    nb = nbformat.read(executed, as_version=4)
    meta = nb.metadata.get("papermill", {})
    profile = check_profile(profile or meta.get("parameters", {}).get("profile", ""))
    setup_seen = None
    for cell in nb.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.get("output_type") == "stream" and not setup_seen:
                setup_seen = _SETUP_LINE.search("".join(output.get("text", "")))
    sections = settings_sections([c.source for c in nb.cells if c.cell_type == "code"])
    scope = "sections read by the notebook and the gpslib modules it imports"
    if not sections:
        sections, scope = sorted(SETTINGS), "all sections (the notebook names none)"
    used = {section: SETTINGS[section][profile] for section in sections}
    recorded = {}
    if staging is not None and (Path(staging) / RECORD).exists():
        recorded = json.loads((Path(staging) / RECORD).read_text(encoding="utf-8"))
    seeds: dict[str, Any] = {"setup": int(setup_seen.group(2)) if setup_seen else None, "settings": _seeds_in(used)}
    seeds.update(recorded.pop("seeds", {}))
    device = device_info(int(setup_seen.group(4)) if setup_seen else None)
    device.update(recorded.pop("device", {}))
    duration = meta.get("duration")
    run = {
        "notebook": executed.name,
        "profile": profile,
        "started_at": meta.get("start_time"),
        "finished_at": meta.get("end_time") or datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "wall_time_s": None if duration is None else round(float(duration), 1),
        "git": git_state(),
        "settings": {"sections": sections, "scope": scope, "hash": settings_hash(used)},
        "seeds": seeds,
        "packages": package_versions(),
        "device": device,
        "files": sorted(files),
    }
    if recorded:
        run["recorded"] = recorded
    return run


def _published(folder: Path) -> list[str]:
    """The published files of ``folder``: plain files, not hidden, not the manifest."""
    return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST)


def load_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """``<folder>/manifest.json`` as a dict, or ``None`` if there is none."""
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def update_manifest(folder: str | os.PathLike, run: dict[str, Any]) -> dict[str, Any]:
    """Record ``run`` (a :func:`run_record`) as the origin of its files in ``<folder>/manifest.json``.

    The manifest lists every published file of ``folder`` (``files``: notebook, run,
    sha256, bytes) and the runs that wrote them (``runs``, keyed "<notebook> <finished_at>").
    A file no recorded run wrote (there before the manifest) is listed with notebook and run
    ``None``; a file another run wrote keeps that run's entry, hash included, so a file
    changed by hand since shows up in :func:`check_manifest`. Entries of files no longer in
    ``folder`` and runs no file refers to are dropped. Written atomically; returns the manifest.
    """
    folder = Path(folder)
    missing = [name for name in run["files"] if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"run of {run['notebook']} lists files not in {folder}: {missing}")
    manifest = load_manifest(folder) or {}
    files, runs = manifest.get("files", {}), manifest.get("runs", {})
    run_id = f"{run['notebook']} {run['finished_at']}"
    runs[run_id] = run
    present = _published(folder)
    for name in present:
        if name in run["files"] or name not in files:
            wrote = name in run["files"]
            files[name] = {"notebook": run["notebook"] if wrote else None, "run": run_id if wrote else None,
                           "sha256": file_sha256(folder / name), "bytes": (folder / name).stat().st_size}
    files = {name: files[name] for name in present}
    runs = {key: value for key, value in runs.items() if any(f["run"] == key for f in files.values())}
    manifest = {
        "about": "Provenance of every file in this folder, written by run_all.sh (gpslib.manifest.update_manifest); "
                 "files -> the run that wrote each, runs -> how. Check: python -m gpslib.manifest check <folder>",
        "format": 1,
        "files": files,
        "runs": dict(sorted(runs.items())),
    }
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=False) + "\n")
    return manifest


def manifest_entry(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    """Everything the manifest knows about file ``name``: its hash and size, and the run that wrote it."""
    if name not in manifest.get("files", {}):
        raise ValueError(f"file {name!r} is not in the manifest")
    entry = dict(manifest["files"][name])
    run = manifest["runs"].get(entry["run"], {}) if entry.get("run") else {}
    return {"file": name, **entry, **{k: v for k, v in run.items() if k != "files"}}


def check_manifest(folder: str | os.PathLike, require_notebook: bool = False) -> list[str]:
    """What is wrong between ``<folder>/manifest.json`` and the files of ``folder`` (empty: nothing).

    Every published file must be listed with its current SHA-256, every listed file must
    exist, and every run a file refers to must be recorded; with ``require_notebook``,
    every file must also have a notebook that wrote it.
    """
    folder = Path(folder)
    manifest = load_manifest(folder)
    if manifest is None:
        return [f"{folder / MANIFEST} does not exist"]
    listed, present = manifest.get("files", {}), set(_published(folder))
    problems = [f"{name}: in {folder} but not in the manifest" for name in sorted(present - set(listed))]
    problems += [f"{name}: in the manifest but not in {folder}" for name in sorted(set(listed) - present)]
    for name in sorted(present & set(listed)):
        entry = listed[name]
        if file_sha256(folder / name) != entry.get("sha256"):
            problems.append(f"{name}: changed since {entry.get('notebook') or 'the manifest'} wrote it "
                            "(its SHA-256 differs); rerun that notebook with ./run_all.sh")
        if entry.get("run") is not None and entry["run"] not in manifest.get("runs", {}):
            problems.append(f"{name}: its run {entry['run']!r} is not recorded")
        if require_notebook and not entry.get("notebook"):
            problems.append(f"{name}: no notebook recorded as writing it (there before the manifest, or written "
                            "by none now): rerun the notebook that writes it, or delete it")
    return problems


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    return f"{s // 60} min {s % 60:02d} s" if s < 3600 else f"{s // 3600} h {s % 3600 // 60:02d} min"


def write_report_index(report_dir: str | os.PathLike, publish_dir: str | os.PathLike) -> Path:
    """Rewrite ``<report_dir>/index.md`` from the run records stored in its notebooks (atomically)."""
    report_dir, publish_dir = Path(report_dir), Path(publish_dir)
    link = Path(os.path.relpath(publish_dir, report_dir)).as_posix()
    rows = []
    for notebook, run in _report_runs(report_dir):
        git = run.get("git", {})
        commit = f"`{git['commit'][:10]}`" if git.get("commit") else "not a git checkout"
        commit += " (uncommitted changes)" if git.get("dirty") else ""
        stems: dict[str, list[str]] = {}
        for name in run.get("files", []):
            stem, _, ext = name.rpartition(".")
            stems.setdefault(stem, []).append(f"[{ext}]({link}/{name})")
        made = "<br>".join(f"{stem} {' '.join(exts)}" for stem, exts in stems.items()) or "none"
        rows.append(f"| [{notebook}]({notebook}.ipynb) | {run.get('profile')} | {commit} | "
                    f"{_clock(run.get('wall_time_s'))} | {run.get('finished_at', '?')[:19]} | {made} |")
    text = "\n".join([
        "# Report: the executed notebooks",
        "",
        "Written by `./run_all.sh` (profiles `cpu` and `paper`; a `smoke` run never writes here): each",
        "notebook below is the copy papermill executed, its injected parameters included, with its",
        "run record in the notebook metadata (`gpslib`). Every file's hash and provenance:",
        f"[{link}/{MANIFEST}]({link}/{MANIFEST}).",
        "",
        "| notebook | profile | commit | wall time | finished (UTC) | figures and tables it made |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
    ])
    atomic_write_text(report_dir / "index.md", text)
    return report_dir / "index.md"


def _report_runs(report_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    runs = []
    for path in sorted(report_dir.glob("*.ipynb")):
        run = nbformat.read(path, as_version=4).metadata.get("gpslib")
        if run:
            runs.append((path.stem, run))
    return runs


def update_readme_times(readme: str | os.PathLike, report_dir: str | os.PathLike) -> None:
    """Put each notebook's wall time in the last run stored in ``report_dir`` into ``readme``.

    The block between ``<!-- times:start -->`` and ``<!-- times:end -->`` is generated from
    the run records (so the README never quotes a time no run measured): notebook, profile,
    wall time, when it finished, the commit and the machine's load average at its end, and
    the sum. When the rows come from more than one commit (a notebook rerun alone with
    ``--only``), the sum is labelled as such and the block says so: such a row can hold work a
    full run does in an earlier notebook (the base model's training), so the sum is then not
    the time of one run. Raises ValueError when the markers are missing.
    """
    readme, report_dir = Path(readme), Path(report_dir)
    text = readme.read_text(encoding="utf-8")
    start, end = README_TIMES
    if start not in text or end not in text:
        raise ValueError(f"{readme} lacks the markers {start} ... {end}")
    runs = _report_runs(report_dir)
    rows, total, commits = [], 0.0, set()
    for stem, run in runs:
        total += run.get("wall_time_s") or 0.0
        load = run.get("device", {}).get("load_average_at_end")
        commit = (run.get("git", {}).get("commit") or "?")[:10]
        commits.add(commit)
        rows.append(f"| {stem} | {run.get('profile')} | {_clock(run.get('wall_time_s'))} | "
                    f"{run.get('finished_at', '?')[:16].replace('T', ' ')} | `{commit}` | "
                    f"{'?' if not load else ' / '.join(f'{x:.1f}' for x in load)} |")
    cores = runs[0][1].get("device", {}).get("cpu_count", "?") if runs else "?"
    commits = sorted(commits)
    mixed = len(commits) > 1
    total_row = (f"| **sum of the rows** (runs of {len(commits)} commits) | | **{_clock(total)}** | | | |" if mixed
                 else f"| **all** | | **{_clock(total)}** | | | |")
    mixed_note = [
        "",
        f"_The rows come from runs of {len(commits)} commits ({', '.join(f'`{c}`' for c in commits)}): a notebook "
        "rerun alone with `--only` can include work that a full run does in an earlier notebook (training the "
        "base model), so the sum is not the time of one run._",
    ] if mixed else []
    block = "\n".join([
        start,
        f"_Generated by `./run_all.sh` from the run records in `{report_dir.name}/` ({cores} CPU cores; "
        "the load average is the machine's 1 / 5 / 15-minute load when the notebook ended: above the "
        "core count, other work shared the cores and the times are longer than on an idle machine)._",
        "",
        "| notebook | profile | wall time | finished (UTC) | commit | load average at end |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows,
        total_row,
        *mixed_note,
        end,
    ])
    head, rest = text.split(start, 1)
    atomic_write_text(readme, head + block + rest.split(end, 1)[1])


def publish_report(executed: str | os.PathLike, report_dir: str | os.PathLike, run: dict[str, Any],
                   publish_dir: str | os.PathLike) -> Path:
    """Store the executed notebook in ``report_dir`` with ``run`` in its metadata, then rewrite the index.

    The injected-parameters cell is kept; papermill's absolute input and output paths
    become paths relative to the repository (or bare names outside it).
    """
    executed, report_dir = Path(executed), Path(report_dir)
    nb = nbformat.read(executed, as_version=4)
    meta = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if meta.get(key):
            path = Path(meta[key]).resolve()
            meta[key] = path.relative_to(repo_root()).as_posix() if path.is_relative_to(repo_root()) else path.name
    nb.metadata["gpslib"] = run
    target = report_dir / executed.name
    atomic_write(target, lambda tmp: nbformat.write(nb, tmp))
    write_report_index(report_dir, publish_dir)
    return target


def main(argv: list[str] | None = None) -> int:
    """``python -m gpslib.manifest publish|check ...``: what run_all.sh calls; see ``--help``."""
    parser = argparse.ArgumentParser(
        prog="python -m gpslib.manifest",
        description="Record a notebook's published files in the manifest of their folder (and in report/), "
                    "or compare a folder with its manifest.")
    sub = parser.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish", help="record a notebook's published files in the manifest (and the report)")
    pub.add_argument("executed", help="the executed notebook papermill wrote")
    pub.add_argument("files", nargs="*", help="the file names it published")
    pub.add_argument("--publish-dir", required=True)
    pub.add_argument("--profile", default=None)
    pub.add_argument("--staging", default=None, help="the staging folder (holds what record() wrote)")
    pub.add_argument("--report-dir", default=None, help="also store the notebook there and rewrite its index.md")
    pub.add_argument("--readme", default=None,
                     help="with --report-dir: also rewrite this README's block of notebook times")
    chk = sub.add_parser("check", help="compare a folder with its manifest; exit 1 on any difference")
    chk.add_argument("folder")
    chk.add_argument("--require-notebook", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "check":
        problems = check_manifest(args.folder, args.require_notebook)
        print("\n".join(problems) or f"{args.folder}: every file matches {MANIFEST}")
        return 1 if problems else 0
    run = run_record(args.executed, args.files, args.profile, args.staging)
    update_manifest(args.publish_dir, run)
    if args.report_dir:
        publish_report(args.executed, args.report_dir, run, args.publish_dir)
        if args.readme:
            update_readme_times(args.readme, args.report_dir)
    elif args.readme:
        parser.error("--readme needs --report-dir (the times come from the report's run records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
