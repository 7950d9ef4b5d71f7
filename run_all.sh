#!/usr/bin/env bash
# Regenerate every figure and table of the paper, or run the test suite.
#
#   ./run_all.sh                      bootstrap .venv if needed, run notebooks/NN_*.ipynb (cpu profile)
#   ./run_all.sh --profile paper      the paper's model and data (CUDA + hub access)
#   ./run_all.sh --only 03            run one notebook
#   ./run_all.sh --test               bootstrap, then pytest tests/ and --nbval notebooks/ (smoke profile)
#   ./run_all.sh --refresh            re-execute the notebooks in smoke and store their outputs in
#                                     notebooks/ (what nbval compares against); the only way to refresh them
#
# Executed copies go to runs/<profile>/, each with its full papermill log beside it
# (runs/<profile>/NN_name.log); the terminal shows one line per code cell started and,
# during a long cell, one a minute ($GPSLIB_PROGRESS_EVERY seconds), each with the
# notebook's name and elapsed time. A notebook's figures are staged in
# runs/<profile>/staging/<notebook>/ and moved into figures/ (runs/smoke/figures/
# for smoke) only when the notebook succeeds; then figures/manifest.json records, for
# each file, its SHA-256 and the run that wrote it (notebook, profile, commit, settings
# hash, seeds, wall time, package versions, device), and, for cpu and paper only, the
# executed notebook is stored in report/ and report/index.md rewritten. The first failing
# notebook stops the run with its name, the end of its log and a non-zero exit.
# Interrupted (Ctrl-C, SIGTERM, SIGHUP), the run stops its notebook, discards that
# notebook's staged files and exits 128+signal; a notebook's files are published all
# together, with their manifest entries and report, or not at all.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

PROFILE=cpu
ONLY=""
MODE=run
NOTEBOOKS_DIR="${GPSLIB_NOTEBOOKS_DIR:-$ROOT/notebooks}"
RUNS_DIR="${GPSLIB_RUNS_DIR:-$ROOT/runs}"
PUBLISH_DIR="${GPSLIB_PUBLISH_DIR:-}"
REPORT_DIR="${GPSLIB_REPORT_DIR:-}"
PROGRESS_EVERY="${GPSLIB_PROGRESS_EVERY:-60}"

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

# Every argument is checked here, before the bootstrap (which can take minutes).
# need_value OPTION [VALUE ...]: exit 2 naming OPTION when VALUE is missing, empty or another option.
need_value() {
  if [[ $# -lt 2 || -z "$2" || "$2" == -* ]]; then
    echo "run_all.sh: $1 needs a value" >&2; usage >&2; exit 2
  fi
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --profile) need_value "$@"; PROFILE="$2"; shift 2 ;;
    --profile=*) need_value --profile "${1#*=}"; PROFILE="${1#*=}"; shift ;;
    --only) need_value "$@"; ONLY="$2"; shift 2 ;;
    --only=*) need_value --only "${1#*=}"; ONLY="${1#*=}"; shift ;;
    --test) MODE=test; shift ;;
    --refresh) MODE=refresh; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_all.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
case "$PROFILE" in
  smoke|cpu|paper) ;;
  *) echo "run_all.sh: unknown profile '$PROFILE' (valid: smoke, cpu, paper)" >&2; exit 2 ;;
esac
if [[ ! "$PROGRESS_EVERY" =~ ^[1-9][0-9]*$ ]]; then
  echo "run_all.sh: GPSLIB_PROGRESS_EVERY must be a whole number of seconds >= 1; got '$PROGRESS_EVERY'" >&2; exit 2
fi
if [[ -n "$ONLY" && ! "$ONLY" =~ ^[0-9][0-9]$ ]]; then
  echo "run_all.sh: --only takes a two-digit notebook number such as 03; got '$ONLY'" >&2; exit 2
fi

# ---------------------------------------------------------------- notebooks to run
if [[ "$MODE" != test ]]; then
  shopt -s nullglob
  notebooks=("$NOTEBOOKS_DIR"/[0-9][0-9]_*.ipynb)
  shopt -u nullglob
  if [[ ${#notebooks[@]} -eq 0 ]]; then
    echo "run_all.sh: no notebook matches NN_*.ipynb in $NOTEBOOKS_DIR" >&2; exit 1
  fi
  if [[ -n "$ONLY" ]]; then
    present=""
    selected=()
    for nb in "${notebooks[@]}"; do
      name="$(basename "$nb")"
      present+=" ${name:0:2}"
      [[ "$name" == "$ONLY"_* ]] && selected+=("$nb")
    done
    if [[ ${#selected[@]} -eq 0 ]]; then
      echo "run_all.sh: --only $ONLY: no notebook ${ONLY}_*.ipynb in $NOTEBOOKS_DIR (present:$present)" >&2
      exit 2
    fi
    notebooks=("${selected[@]}")
  fi
fi

# ---------------------------------------------------------------- bootstrap
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
STAMP="$VENV/.gpslib-installed"

find_python() {
  for cand in "${PYTHON:-}" python3.11 python3; do
    [[ -n "$cand" ]] || continue
    if command -v "$cand" >/dev/null 2>&1 && \
       "$cand" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
      echo "$cand"; return 0
    fi
  done
  echo "run_all.sh: Python 3.11 not found (tried \$PYTHON, python3.11, python3)" >&2
  return 1
}

want_stamp() { sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1; }

bootstrap() {
  if [[ ! -x "$PY" ]]; then
    local base; base="$(find_python)"
    echo "==> creating $VENV with $base"
    "$base" -m venv "$VENV"
  fi
  if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$(want_stamp)" ]]; then
    echo "==> installing gpslib and its pinned dependencies into .venv (a few minutes, once)"
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet -e "$ROOT"
    "$PY" -m ipykernel install --sys-prefix --name gpslib --display-name "Python (gpslib)" >/dev/null
    want_stamp > "$STAMP"
  fi
}

bootstrap
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
export TRANSFORMERS_VERBOSITY="${TRANSFORMERS_VERBOSITY:-error}"
if [[ "$PROFILE" == paper ]]; then unset HF_HUB_OFFLINE HF_DATASETS_OFFLINE; fi
export PYTHONHASHSEED=0 PYDEVD_DISABLE_FILE_VALIDATION=1
# the gpslib of this checkout, in papermill's kernels too, even where .venv's editable install points elsewhere
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# ---------------------------------------------------------------- tests
if [[ "$MODE" == test ]]; then
  export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
  set +e
  "$PY" -m pytest tests "$NOTEBOOKS_DIR" --nbval --nbval-current-env \
      --nbval-sanitize-with "$ROOT/tests/nbval_sanitize.cfg" --nbval-cell-timeout=900
  rc=$?
  set -e
  if [[ $rc -eq 5 ]]; then
    echo "run_all.sh: pytest collected no tests; that is a failure here" >&2
    exit 1
  fi
  exit $rc
fi

# ---------------------------------------------------------------- notebooks
if [[ "$MODE" == refresh ]]; then PROFILE=smoke; fi
if [[ -z "$PUBLISH_DIR" ]]; then
  if [[ "$PROFILE" == smoke ]]; then PUBLISH_DIR="$RUNS_DIR/smoke/figures"; else PUBLISH_DIR="$ROOT/figures"; fi
fi
# report/ lies beside the publish folder (figures/ -> report/; a test's own figures folder -> its own report/)
if [[ -z "$REPORT_DIR" ]]; then REPORT_DIR="$(dirname "$PUBLISH_DIR")/report"; fi
if [[ "$PROFILE" == smoke ]]; then REPORT_DIR=""; fi  # a smoke run never writes into report/
OUT_DIR="$RUNS_DIR/$PROFILE"
MANIFEST_NAME=manifest.json
# the README's block of notebook times is rewritten only from the repository's own report/
README_ARG=""
if [[ -n "$REPORT_DIR" && "$(cd "$(dirname "$REPORT_DIR")" 2>/dev/null && pwd)/$(basename "$REPORT_DIR")" == "$ROOT/report" ]]; then
  README_ARG="$ROOT/README.md"
fi
mkdir -p "$OUT_DIR" "$PUBLISH_DIR" ${REPORT_DIR:+"$REPORT_DIR"}

# Progress. clock SECONDS: m:ss. code_cells NOTEBOOK: how many code cells papermill will run and
# their positions (1-based) once it has injected the parameters cell (after the cell tagged
# "parameters", else first; in place of an earlier injected one).
clock() { printf '%d:%02d' $(($1 / 60)) $(($1 % 60)); }
rel() { echo "${1#"$ROOT"/}"; }  # a path as the user sees it: relative to the repository when inside it
code_cells() {
  "$PY" - "$1" <<'PYEOF'
import json, sys
cells = json.load(open(sys.argv[1], encoding="utf-8"))["cells"]
kinds = [c["cell_type"] for c in cells]
tags = [c.get("metadata", {}).get("tags", []) for c in cells]
if not any("injected-parameters" in t for t in tags):
    kinds.insert(next((i + 1 for i, t in enumerate(tags) if "parameters" in t), 0), "code")
positions = [i + 1 for i, kind in enumerate(kinds) if kind == "code"]
print(len(positions), *positions)
PYEOF
}
# progress LABEL START LOG TOTAL POSITION...: read papermill's log (--log-output) on stdin, keep
# all of it in LOG, print "[LABEL m:ss] cell i/TOTAL" when code cell i starts and, every
# PROGRESS_EVERY seconds without such a line, how long the cell has run and its last output.
progress() {
  set +e  # runs in a subshell of its own: an error here must not end the reading (papermill would lose its log)
  local label="$1" t0="$2" log="$3" total="$4"; shift 4
  local -A index=(); local i=0 pos
  for pos in "$@"; do i=$((i + 1)); index[$pos]=$i; done
  local line="" partial="" cell="" cell_t0=$SECONDS ended="" last="" said=$SECONDS wait_s rc
  exec 3> "$log"
  while :; do
    wait_s=$((PROGRESS_EVERY - (SECONDS - said))); [[ $wait_s -ge 1 ]] || wait_s=1
    rc=0; IFS= read -r -t "$wait_s" line || rc=$?
    if [[ $rc -eq 0 || ( $rc -le 128 && -n "$line" ) ]]; then  # a line (the last may lack its newline)
      line="$partial$line"; partial=""
      printf '%s\n' "$line" >&3
      if [[ "$line" =~ ^Executing\ Cell\ ([0-9]+)- ]]; then
        if [[ -n "${index[${BASH_REMATCH[1]}]:-}" ]]; then
          cell="${index[${BASH_REMATCH[1]}]}"; cell_t0=$SECONDS; ended=""; last=""; said=$SECONDS
          echo "    [$label $(clock $((SECONDS - t0)))] cell $cell/$total"
        fi
      elif [[ "$line" =~ ^Ending\ Cell\ ([0-9]+)- ]]; then
        [[ "${index[${BASH_REMATCH[1]}]:-}" != "$cell" ]] || ended=1
      elif [[ -n "${line//[[:space:]]/}" ]]; then
        last="${line##*$'\r'}"
      fi
    elif [[ $rc -gt 128 ]]; then  # timed out; keep what part of a line came
      partial="$partial$line"
    else
      break  # end of the log: papermill has exited
    fi
    if [[ $((SECONDS - said)) -ge $PROGRESS_EVERY ]]; then
      said=$SECONDS
      if [[ -n "$ended" ]]; then
        echo "    [$label $(clock $((SECONDS - t0)))] cell $cell/$total done; papermill is finishing"
      elif [[ -n "$cell" ]]; then
        last="${last:0:100}"
        echo "    [$label $(clock $((SECONDS - t0)))] cell $cell/$total running for" \
             "$(clock $((SECONDS - cell_t0)))${last:+; last output: $last}"
      else
        echo "    [$label $(clock $((SECONDS - t0)))] starting the kernel"
      fi
    fi
    line=""
  done
  [[ -z "$partial" ]] || printf '%s\n' "$partial" >&3
  exec 3>&-
}

# Interrupted: stop the running notebook, discard its staged files, say so, exit 128+signal.
# papermill runs in the background so that a signal sent to this script alone (timeout,
# kill PID) acts at once; bash starts background commands with SIGINT ignored, so a
# Ctrl-C reaches papermill as the SIGTERM forwarded here (its kernel, which runs in a session
# of its own, shuts itself down when papermill is gone).
name=""; staging=""; papermill_pid=""; progress_pid=""; fifo=""; phase=""
on_signal() {  # $1: signal name, $2: exit status
  trap - INT TERM HUP
  if [[ -n "$papermill_pid" ]]; then
    kill -TERM "$papermill_pid" 2>/dev/null || true
    wait "$papermill_pid" 2>/dev/null || true
  fi
  if [[ -n "$progress_pid" ]]; then
    kill -TERM "$progress_pid" 2>/dev/null || true
    wait "$progress_pid" 2>/dev/null || true
  fi
  [[ -n "$fifo" ]] && rm -f "$fifo"
  [[ -n "$staging" ]] && rm -rf "$staging"
  if [[ "$phase" == publishing ]]; then  # a signal waits for the publishing subshell to finish
    echo "run_all.sh: interrupted (SIG$1) after $name finished; its files were published" >&2
  elif [[ -n "$name" ]]; then
    echo "run_all.sh: interrupted (SIG$1) while running $name; nothing of it was published" >&2
  else
    echo "run_all.sh: interrupted (SIG$1)" >&2
  fi
  echo "run_all.sh: files in $(rel "$PUBLISH_DIR")/ are complete ones of notebooks that finished" >&2
  exit "$2"
}
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM
trap 'on_signal HUP 129' HUP

start_all=$SECONDS
for nb in "${notebooks[@]}"; do
  name="$(basename "$nb")"
  stem="${name%.ipynb}"
  staging="$OUT_DIR/staging/$stem"
  phase=running
  rm -rf "$staging"; mkdir -p "$staging"
  log="$OUT_DIR/$stem.log"
  echo "==> $name (profile $PROFILE; its log: $(rel "$log"))"
  start=$SECONDS
  # papermill logs each cell's start and output into a FIFO that progress() reads; both run in
  # the background, so that wait returns at once on a signal and both can be waited for
  read -r -a cells <<< "$(code_cells "$nb" || true)"
  [[ ${#cells[@]} -gt 0 ]] || cells=("?")
  fifo="$OUT_DIR/.$stem.fifo"
  rm -f "$fifo"; mkfifo "$fifo"
  progress "$stem" "$start" "$log" "${cells[@]}" < "$fifo" &
  progress_pid=$!
  GPSLIB_FIGURES_DIR="$staging" "$PY" -m papermill -k python3 --cwd "$NOTEBOOKS_DIR" \
      -p profile "$PROFILE" --log-output --no-progress-bar "$nb" "$OUT_DIR/$name" > "$fifo" 2>&1 &
  papermill_pid=$!
  rc=0; wait "$papermill_pid" || rc=$?
  papermill_pid=""
  # the reader ends when every writer has closed the FIFO; a process the notebook left behind
  # may hold it open, so give the reader 10 s to drain it, then stop it
  for _ in $(seq 100); do kill -0 "$progress_pid" 2>/dev/null || break; sleep 0.1; done
  kill -TERM "$progress_pid" 2>/dev/null || true
  wait "$progress_pid" 2>/dev/null || true
  progress_pid=""; rm -f "$fifo"; fifo=""
  if [[ $rc -ne 0 ]]; then
    echo "run_all.sh: FAILED: $name (profile $PROFILE) after $(clock $((SECONDS - start))); the end of its log:" >&2
    tail -n 25 "$log" | sed 's/^/    | /' >&2
    echo "run_all.sh: executed copy with the error: $OUT_DIR/$name; full log: $log" >&2
    echo "run_all.sh: files already in $(rel "$PUBLISH_DIR")/ were left as they were" >&2
    exit 1
  fi
  # Publish: in a subshell that ignores INT/TERM/HUP (as do the commands it runs), so a
  # signal takes effect only once every file of the notebook is in place, with its manifest
  # entries and report. Each file is first moved to a temporary name beside its target (a
  # copy if runs/ lies on another file system), then renamed over it, which is atomic; the
  # manifest and the report are written atomically by gpslib.manifest.
  phase=publishing
  (
    trap '' INT TERM HUP
    published=()
    for f in "$staging"/* ; do
      [[ -e "$f" ]] || continue
      base="$(basename "$f")"
      mv -f "$f" "$PUBLISH_DIR/.$base.tmp"
      mv -f "$PUBLISH_DIR/.$base.tmp" "$PUBLISH_DIR/$base"
      published+=("$base")
    done
    if ! "$PY" -m gpslib.manifest publish --profile "$PROFILE" --publish-dir "$PUBLISH_DIR" --staging "$staging" \
        ${REPORT_DIR:+--report-dir "$REPORT_DIR"} ${README_ARG:+--readme "$README_ARG"} -- "$OUT_DIR/$name" "${published[@]}"; then
      echo "run_all.sh: FAILED to record $name's files in $(rel "$PUBLISH_DIR")/$MANIFEST_NAME" >&2
      exit 1
    fi
    where="$(rel "$PUBLISH_DIR")/$MANIFEST_NAME"
    [[ -z "$REPORT_DIR" ]] || where+="; executed notebook in $(rel "$REPORT_DIR")/$name"
    echo "    ${#published[@]} file(s) published, recorded in $where"
    if [[ "$MODE" == refresh ]]; then
      # smoke outputs, without the injected-parameters cell, become the committed reference
      "$PY" - "$OUT_DIR/$name" "$nb" <<'PYEOF'
import os, sys, nbformat
src, dst = sys.argv[1], sys.argv[2]
nb = nbformat.read(src, as_version=4)
nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
for c in nb.cells:
    c.metadata.pop("papermill", None)
    c.metadata.pop("execution", None)
nb.metadata.pop("papermill", None)
tmp = os.path.join(os.path.dirname(dst), "." + os.path.basename(dst) + ".tmp")
nbformat.write(nb, tmp)
os.replace(tmp, dst)
PYEOF
      echo "    refreshed the stored smoke outputs of $name"
    fi
  )
  rm -rf "$staging"
  echo "    done in $((SECONDS - start)) s"
done
name=""; staging=""
where="$(rel "$PUBLISH_DIR")/"
[[ -z "$REPORT_DIR" ]] || where+=", executed notebooks in $(rel "$REPORT_DIR")/"
echo "==> all ${#notebooks[@]} notebook(s) ran in $((SECONDS - start_all)) s; figures and tables in $where"
