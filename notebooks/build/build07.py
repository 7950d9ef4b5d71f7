from pathlib import Path
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = []
md = lambda s: cells.append(new_markdown_cell(s.strip("\n")))
code = lambda s, tags=None: cells.append(new_code_cell(s.strip("\n"), metadata={"tags": tags or []}))
md("""
# 07 · What was reproduced: the paper's claims, our evidence, a verdict for each

As reproducibility reports open (MLRC / ReScience): every claim of the paper that a number can
check, the table of this run that tests it, and a verdict decided by a rule written in the
library (`gpslib.claims`), never typed: **reproduced** (our number says what the paper's says:
rounds to its printed value, or the same direction with a 95% interval excluding zero), **not
reproduced** (our interval includes zero, or the value rounds elsewhere), **contradicted** (the
interval excludes zero on the other side), **not testable here** (the evidence needs the paper's
model or size; the reason says so). It reads the tables the notebooks 00-06 of this run wrote.
In the cpu and paper profiles the table is also written into the README, between its markers.
""")
code('profile = "smoke"  # smoke | cpu | paper (papermill parameter)', ["parameters"])
code("""
import pandas as pd

from gpslib.claims import claims_table, update_readme
from gpslib.figures import figures_dir, repo_root, save_table
from gpslib.run_profiles import publishes_figures
from gpslib.runtime import setup

setup(profile)
folder = repo_root() / ("figures" if publishes_figures(profile) else f"runs/{profile}/figures")
table = claims_table(folder, profile)
print(save_table(table.set_index("claim"), "table_claims", profile))
counts = table["verdict"].value_counts()
print(", ".join(f"{int(n)} {verdict}" for verdict, n in counts.items()) + f" (of {len(table)} claims)")
pd.set_option("display.max_colwidth", 90)
table[["claim", "section", "paper", "ours", "verdict", "why"]]
""")
code("""
if publishes_figures(profile):
    update_readme(table, repo_root() / "README.md")
    print("README.md: the claims block is regenerated")
else:
    print(f"{profile} profile: README.md is left alone")
""")
nb = new_notebook(cells=cells, metadata={"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                                          "language_info": {"name": "python", "version": "3.11.7"}})
nbformat.write(nb, Path(__file__).resolve().parents[1] / "07_claims.ipynb")
