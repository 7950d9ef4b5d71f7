"""Puts the stored-outputs banner under the title of notebooks (default: every NN_*.ipynb; or the paths given)."""
import glob, os, sys
from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parents[1]
BANNER = ("> **Stored outputs: the `smoke` run** (a tiny random model; they check the code path, not the "
          "paper). The `cpu` run's executed copy is `report/{name}` and its figures and tables are in `figures/`.\n\n")
for path in sys.argv[1:] or sorted(glob.glob(str(NOTEBOOKS / "[0-9][0-9]_*.ipynb"))):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    src = first.source
    title, rest = src.split("\n", 1) if src.startswith("#") else ("", src)
    rest = rest.lstrip("\n")
    while rest.startswith("> **Stored outputs"):
        rest = rest.split("\n\n", 1)[1].lstrip("\n")
    first.source = (title + "\n\n" if title else "") + BANNER.format(name=os.path.basename(path)) + rest
    nbformat.write(nb, path)
