"""Real VQA data loaders and the training/generation collator (paper Section 4.2).

Every loader returns rows in the ``llava-instruct-mix-vsft`` schema
(``messages`` with role/content parts, ``images`` a list of one image), the
schema :func:`gpslib.shapes_vqa.shapes_vqa` also produces, so one collator serves
them all:

* :func:`load_hub_vsft`: ``unsloth/llava-instruct-mix-vsft-mini`` by name
  (``datasets.load_dataset``) or a local directory in the hub layout
  (``data/train-*.parquet``, ``data/test-*.parquet``);
* :func:`load_llava_instruct`: LLaVA-Instruct-150K from its JSON and a COCO
  image folder, split into train/test by image id with a seed.

Rows without exactly one image, with an empty question or answer, or (150K)
with a missing image file are skipped; each loader returns a
:class:`LoadReport` with the counts and warns with the first few reasons.

The conversation format is :mod:`gpslib.chat_format`'s.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from gpslib.chat_format import IMAGE_TOKEN, conversation_text, first_turn, format_prompt
from gpslib.shapes_vqa import object_patches

__all__ = [
    "LoadReport",
    "load_hub_vsft",
    "load_llava_instruct",
    "VQACollator",
]

logger = logging.getLogger(__name__)
IGNORE_INDEX = -100


# --------------------------------------------------------------------------- reports
@dataclasses.dataclass
class LoadReport:
    """What a loader kept and skipped: ``skipped`` maps a reason to its count;
    ``examples`` holds the first few ``(row id, reason)`` pairs."""

    kept: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def skip(self, row_id: Any, reason: str, max_examples: int = 5) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < max_examples:
            self.examples.append((str(row_id), reason))

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def announce(self, source: str) -> None:
        """Log the counts; warn with the first reasons when rows were skipped."""
        msg = f"{source}: kept {self.kept} rows, skipped {self.n_skipped} {dict(self.skipped)}"
        if self.n_skipped:
            warnings.warn(msg + f"; first: {self.examples}", stacklevel=3)
        logger.info(msg)


def _check_row(row_id: Any, messages: list[dict], n_images: int, report: LoadReport) -> bool:
    image_parts = sum(p.get("type") == "image" for m in messages for p in m["content"])
    if n_images != 1 or image_parts != 1:
        report.skip(row_id, f"{n_images} images / {image_parts} image parts (need exactly 1)")
        return False
    try:
        q, a = first_turn(messages)
    except (ValueError, KeyError, TypeError):
        report.skip(row_id, "no user/assistant exchange")
        return False
    if not q or not a:
        report.skip(row_id, "empty question" if not q else "empty answer")
        return False
    return True


# --------------------------------------------------------------------------- loaders
def load_hub_vsft(name_or_dir: str | os.PathLike = "unsloth/llava-instruct-mix-vsft-mini", split: str = "train",
                  cache_dir: str | None = None, max_rows: int | None = None):
    """Load a llava-instruct-mix-vsft style split by hub name or from a local hub-layout directory.

    Returns ``(dataset, report)``. Rows are checked without decoding their
    images; bad ones are skipped (see :class:`LoadReport`).
    """
    import datasets

    path = Path(name_or_dir)
    if path.is_dir():
        files = sorted(glob.glob(str(path / "data" / f"{split}-*.parquet")))
        if not files:
            raise ValueError(f"no data/{split}-*.parquet files in {path}")
        ds = datasets.load_dataset("parquet", data_files={split: files}, split=split, cache_dir=cache_dir)
    else:
        ds = datasets.load_dataset(str(name_or_dir), split=split, cache_dir=cache_dir)
    if max_rows is not None:
        ds = ds.select(range(min(max_rows, len(ds))))
    report, keep = LoadReport(), []
    arrow = ds.with_format("arrow")
    for start in range(0, len(ds), 1000):
        batch = arrow[start:start + 1000]
        messages = batch.column("messages").to_pylist()
        images = batch.column("images").to_pylist()
        for k, (msgs, imgs) in enumerate(zip(messages, images)):
            imgs = [im for im in (imgs or []) if im and (im.get("bytes") or im.get("path"))]
            if _check_row(start + k, msgs or [], len(imgs), report):
                keep.append(start + k)
    report.kept = len(keep)
    report.announce(f"{name_or_dir} [{split}]")
    return (ds if len(keep) == len(ds) else ds.select(keep)), report


def load_llava_instruct(json_path: str | os.PathLike, image_dir: str | os.PathLike, split: str = "train",
                        test_fraction: float = 0.1, seed: int = 0, max_rows: int | None = None):
    """LLaVA-Instruct-150K (``llava_instruct_150k.json`` + a COCO image folder) as a split.

    Images are assigned to ``"test"`` with probability ``test_fraction`` by a
    seeded permutation of the sorted image ids, so no image is in both splits.
    Every turn becomes a message; the ``<image>`` marker of the first human
    turn becomes the image part. Returns ``(dataset, report)``; images are
    opened lazily (``datasets.Image``).
    """
    import datasets
    from tqdm import tqdm

    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; valid splits are ['train', 'test']")
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction!r}")
    records = json.loads(Path(json_path).read_text())
    if not isinstance(records, list):
        raise ValueError(f"{json_path} does not hold a list of conversations")
    ids = sorted({str(r["image"]) for r in records if r.get("image")})
    order = np.random.default_rng(seed).permutation(len(ids))
    test_ids = {ids[i] for i in order[: int(round(test_fraction * len(ids)))]}
    report, messages, images = LoadReport(), [], []
    for r in tqdm(records, desc=f"LLaVA-Instruct [{split}]", disable=len(records) < 10000):
        image = r.get("image")
        if (str(image) in test_ids if image else False) != (split == "test"):
            continue  # rows without an image are reported with the train split only
        if max_rows is not None and len(messages) >= max_rows:
            break
        row_id = r.get("id", "?")
        msgs, n_markers = [], 0
        for turn in r.get("conversations") or []:
            value = str(turn.get("value") or "")
            n_markers += value.count(IMAGE_TOKEN)
            content = [{"type": "text", "text": value.replace(IMAGE_TOKEN, "").strip()}]
            role = "user" if turn.get("from") == "human" else "assistant"
            if role == "user" and not msgs:
                content.insert(0, {"type": "image", "text": None})
            msgs.append({"role": role, "content": content})
        if not image:
            report.skip(row_id, "no image")
            continue
        if not _check_row(row_id, msgs, 1, report):
            continue
        file = Path(image_dir) / str(image)
        if not file.is_file():
            report.skip(row_id, f"missing image file {file.name}")
            continue
        messages.append(msgs)
        images.append([str(file)])
    report.kept = len(messages)
    report.announce(f"{json_path} [{split}]")
    features = datasets.Features({
        "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.List(
            {"type": datasets.Value("string"), "text": datasets.Value("string")})}),
        "images": datasets.List(datasets.Image()),
    })
    return datasets.Dataset.from_dict({"messages": messages, "images": images}, features=features), report


# --------------------------------------------------------------------------- collator
class VQACollator:
    """Turn schema rows into model inputs.

    ``mode="train"``: the whole conversation (:func:`conversation_text`),
    right padded; ``labels`` copy ``input_ids`` on the answer tokens (with
    ``</s>``) and are -100 on prompt, image and padding tokens.
    ``mode="generate"``: the first question's prompt (:func:`gpslib.chat_format.format_prompt`),
    left padded, no labels. Returns a dict of tensors:

    * ``input_ids`` (B, L) long, ``<image>`` expanded to the vision tower's count;
    * ``attention_mask`` (B, L) long, 0 on padding;
    * ``labels`` (B, L) long (train only);
    * ``pixel_values`` (B, 3, H, W) float.

    * ``reorder_assignment`` (B, M) long, with ``grounding=True`` only: for
      each image token, the index (among the prompt's text tokens, BOS and
      image tokens excluded) of the first token of the first word that names
      the object the patch shows, or -1 (ShapesVQA's ``objects`` and
      ``mentions``; where objects overlap, the first object wins). This is
      what the ``"oracle"`` reordering consumes.

    ``max_length`` truncates training texts on the right; a prompt that
    would lose image tokens raises ValueError.
    """

    def __init__(self, processor, mode: str = "train", max_length: int | None = None, grounding: bool = False):
        if mode not in ("train", "generate"):
            raise ValueError(f"unknown collator mode {mode!r}; valid modes are ['train', 'generate']")
        self.processor, self.mode, self.max_length = processor, mode, max_length
        self.grounding = grounding
        self.tokenizer = processor.tokenizer
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        crop = processor.image_processor.crop_size
        n = (crop["height"] // processor.patch_size) * (crop["width"] // processor.patch_size)
        self.num_image_tokens = n + processor.num_additional_image_tokens - (
            processor.vision_feature_select_strategy == "default")

    def _encode(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        if self.mode == "train":
            text, spans = conversation_text(messages)
        else:
            text, spans = conversation_text(messages[:1], add_generation_prompt=True)
        enc = self.tokenizer(text, return_offsets_mapping=True)
        ids, labels = [], []
        for tok, (s, e) in zip(enc["input_ids"], enc["offset_mapping"]):
            if tok == self.image_token_id:
                ids += [tok] * self.num_image_tokens
                labels += [IGNORE_INDEX] * self.num_image_tokens
                continue
            supervised = any(e > a and s < b for a, b in spans)
            ids.append(tok)
            labels.append(tok if supervised else IGNORE_INDEX)
        if self.max_length is not None and len(ids) > self.max_length:
            if self.image_token_id in ids[self.max_length:]:
                raise ValueError(f"max_length {self.max_length} would cut image tokens (prompt needs "
                                 f"{ids.index(self.image_token_id) + self.num_image_tokens})")
            ids, labels = ids[: self.max_length], labels[: self.max_length]
        return ids, labels

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if not rows:
            raise ValueError("cannot collate an empty batch")
        encoded = [self._encode(r["messages"]) for r in rows]
        assignments = [self._assignment(r) for r in rows] if self.grounding else None
        images = []
        for r in rows:
            if len(r["images"]) != 1:
                raise ValueError(f"each row needs exactly one image, got {len(r['images'])}")
            images.append(r["images"][0].convert("RGB"))
        length = max(len(ids) for ids, _ in encoded)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(rows), length), dtype=torch.long)
        for b, (ids, lab) in enumerate(encoded):
            sl = slice(0, len(ids)) if self.mode == "train" else slice(length - len(ids), length)
            input_ids[b, sl] = torch.tensor(ids)
            labels[b, sl] = torch.tensor(lab)
            attention[b, sl] = 1
        pixel_values = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        out = {"input_ids": input_ids, "attention_mask": attention, "pixel_values": pixel_values}
        if self.mode == "train":
            out["labels"] = labels
        if assignments is not None:
            out["reorder_assignment"] = torch.tensor(assignments, dtype=torch.long)
        return out

    def _assignment(self, row: dict[str, Any]) -> list[int]:
        """Text-token index per image token for the row's grounding (see the class docstring)."""
        return self.grounding_maps(row)["assignment"]

    def grounding_maps(self, row: dict[str, Any]) -> dict[str, list[int]]:
        """A ShapesVQA row's grounding in token terms.

        Returns ``image_object`` (M,): the object each patch shows (first object
        where they overlap) or -1; ``text_object`` (N,): the object each prompt
        text token names (BOS and image tokens excluded) or -1; ``assignment``
        (M,): the oracle's text index per patch, the first token of the first word
        naming its object, or -1.
        """
        if "objects" not in row or "mentions" not in row:
            raise ValueError("grounding needs rows with 'objects' and 'mentions' (ShapesVQA); this row has neither")
        question = first_turn(row["messages"])[0]
        prompt = format_prompt(question)
        q_start = prompt.index(question)
        enc = self.tokenizer(prompt, return_offsets_mapping=True)
        bos = self.tokenizer.bos_token_id
        spans = []  # per prompt text token: its character span in the question
        for i, (tok, (s, e)) in enumerate(zip(enc["input_ids"], enc["offset_mapping"])):
            if tok == self.image_token_id or (i == 0 and tok == bos):
                continue
            spans.append((s - q_start, e - q_start))
        text_object = [-1] * len(spans)
        word_token: dict[int, int] = {}
        for mention in sorted(row["mentions"], key=lambda m: m["start"]):
            hits = [j for j, (s, e) in enumerate(spans) if e > mention["start"] and s < mention["end"]]
            for j in hits:
                text_object[j] = mention["object_index"]
            if hits and mention["object_index"] not in word_token:
                word_token[mention["object_index"]] = hits[0]
        image_size = row["images"][0].size[0]
        grid = int(round(self.num_image_tokens ** 0.5))
        if grid * grid != self.num_image_tokens or image_size % grid:
            raise ValueError(f"cannot map a {image_size} px image onto {self.num_image_tokens} patches")
        image_object = [-1] * self.num_image_tokens
        for obj_index, obj in enumerate(row["objects"]):
            for patch in object_patches(obj["box"], image_size, image_size // grid):
                if image_object[patch] == -1:
                    image_object[patch] = obj_index
        assignment = [word_token.get(o, -1) if o >= 0 else -1 for o in image_object]
        return {"image_object": image_object, "text_object": text_object, "assignment": assignment}
