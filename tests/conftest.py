"""Shared fixtures of the test suite: the offline hub, one thread, the test-size model and data.

Every test runs offline (``HF_HUB_OFFLINE=1``, ``HF_DATASETS_OFFLINE=1``) with one torch
thread, so results do not depend on the machine's core count. Tests that start processes
(the 2-process fine-tune, the CLIs, ``run_all.sh``) carry the ``slow`` marker:
``pytest -m "not slow"`` skips them for a quick check; CI runs everything. Helpers that
several files need (``strip``, ``vsft_messages``, ``scores``, ``cli_flags``, ``tiny``, ``notebook``, ``WRITE``,
``load_script``) live here too, imported with ``from conftest import ...``, so no test file keeps a copy of its own.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from gpslib.data import VQACollator  # noqa: E402
from gpslib.model import build_model, build_processor  # noqa: E402
from gpslib.shapes_vqa import shapes_vqa  # noqa: E402

torch.set_num_threads(1)
N_ROWS = 4  # rows of the shared batches
PLAIN_INPUTS = ("input_ids", "attention_mask", "pixel_values", "labels")  # what plain LLaVA takes
REORDER_INPUTS = PLAIN_INPUTS + ("reorder_assignment",)  # ... and a reordering model too


def strip(batch, keys=REORDER_INPUTS):
    """The entries of a collated ``batch`` named in ``keys`` (the model inputs; the rest is bookkeeping)."""
    return {k: v for k, v in batch.items() if k in keys}


def vsft_messages(question, answer, n_image_parts=1):
    """One user turn (``n_image_parts`` image parts, then ``question``) and one assistant turn
    (``answer``), in the llava-instruct-mix-vsft ``messages`` schema."""
    user = [{"type": "image", "text": None}] * n_image_parts + [{"type": "text", "text": question}]
    return [{"role": "user", "content": user}, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]


def scores(*shape, seed=0, dtype=torch.float64):
    """Seeded standard-normal scores of ``shape`` (the Sinkhorn tests' log_alpha)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def cli_flags(settings):
    """``settings`` (config fields) as the CLIs' flags: ``--name value``, dicts as JSON, None as ``none``."""
    text = {dict: json.dumps, type(None): lambda v: "none"}
    return [a for k, v in settings.items() for a in (f"--{k}", text.get(type(v), str)(v))]


def tiny(base_dir, **overrides):
    """A validated ``FinetuneConfig`` of a seconds-long run on the saved test-size model (``base_dir``):
    8 training rows, 2 epochs of 2 steps, no early stopping, seed 0, strategy ``none`` unless overridden."""
    from gpslib.finetune import FinetuneConfig  # here: collecting the files that never fine-tune stays quick

    settings = dict(model=str(base_dir), train_samples=8, eval_samples=4, gen_samples=2, epochs=2,
                    batch_size=4, grad_accum=1, max_new_tokens=4, early_stopping_patience=None, seed=0)
    settings.update(overrides)
    return FinetuneConfig(**settings).validate()


def notebook(path: Path, *sources: str) -> None:
    """Write a fake notebook to ``path`` for run_all.sh: a cell tagged ``parameters`` setting
    ``profile = "smoke"``, then one code cell per source (a markdown cell for a source starting with #)."""
    import nbformat  # here: only the run_all.sh tests write notebooks

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('profile = "smoke"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbformat.v4.new_markdown_cell(s) if s.startswith("#") else nbformat.v4.new_code_cell(s)
                           for s in sources]
    nbformat.write(nb, path)


# A notebook cell publishing a one-cell table: ``WRITE.format(value=1, name="table_a")`` saves
# table_a (column v, value 1) through gpslib.figures.save_table under the notebook's profile.
WRITE = (
    "import pandas as pd\n"
    "from gpslib.figures import save_table\n"
    "save_table(pd.DataFrame({{'v': [{value}]}}), '{name}', profile)\n"
)


def load_script(path: Path):
    """The benchmark script at ``path`` (not a package module) imported as a module named after its
    file stem, executed afresh on every call, so a test can call its ``main(argv)`` in-process."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts processes (2-process run, CLIs, run_all.sh); deselect with -m 'not slow'")


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch):
    """huggingface_hub reads HF_HUB_OFFLINE at import; make sure it is on for every test."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session")
def processor():
    """The test-size LlavaProcessor (trained tokenizer, 32 px images, 16 image tokens)."""
    return build_processor("test")


@pytest.fixture(scope="session")
def plain():
    """The test-size plain LlavaForConditionalGeneration, seed 0, eval mode."""
    return build_model("test", seed=0)


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory):
    """The test-size model and processor saved with ``save_pretrained``: a local stand-in for a hub model."""
    path = tmp_path_factory.mktemp("base")
    build_model("test", seed=0).save_pretrained(path)
    build_processor("test").save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def rows():
    """N_ROWS ShapesVQA training rows at 32 px."""
    ds = shapes_vqa(N_ROWS, seed=0, split="train", image_size=32)
    return [ds[i] for i in range(N_ROWS)]


@pytest.fixture(scope="session")
def train_batch(processor, rows):
    """The rows collated for training (right padded, labels on the answers, oracle assignment)."""
    return VQACollator(processor, "train", grounding=True)(rows)


@pytest.fixture(scope="session")
def gen_batch(processor, rows):
    """The rows collated for generation (left padded, no labels, oracle assignment)."""
    return VQACollator(processor, "generate", grounding=True)(rows)


@pytest.fixture(scope="session")
def reordering_model():
    """``reordering_model(reorder, **settings)``: a test-size reordering model sharing ``plain``'s weights."""

    def make(reorder: str, **settings):
        return build_model("test", seed=0, reorder=reorder, **settings)

    return make
