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

Rows without exactly one image, with an image that does not decode (corrupt,
truncated: checked at load time, not mid-training), with an empty question or
answer, or (150K) that are not a JSON object, whose ``<image>`` markers do not
match their one image, or whose image file is missing are skipped; each loader
returns a :class:`LoadReport` with a count per kind of reason and warns with
the first few rows skipped.

The conversation format is :mod:`gpslib.chat_format`'s.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from gpslib.chat_format import IGNORE_INDEX, IMAGE_TOKEN, conversation_text, first_turn, format_prompt
from gpslib.shapes_vqa import object_patches

__all__ = [
    "LoadReport",
    "load_hub_vsft",
    "load_llava_instruct",
    "VQACollator",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- reports
@dataclasses.dataclass
class LoadReport:
    """What a loader kept and skipped: ``skipped`` maps a reason to its count;
    ``examples`` holds the first few ``(row id, reason)`` pairs."""

    kept: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def skip(self, row_id: Any, reason: str, max_examples: int = 5, detail: str | None = None) -> None:
        """Count one skipped row under ``reason`` (a kind); ``detail`` (the file, the error)
        goes into ``examples`` only."""
        self.skipped[reason] += 1
        if len(self.examples) < max_examples:
            self.examples.append((str(row_id), f"{reason}: {detail}" if detail else reason))

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


def _check_max_rows(max_rows: Any) -> None:
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, (int, np.integer))
                                 or max_rows < 0):
        raise ValueError(f"max_rows must be None (all rows) or a non-negative int, got {max_rows!r}")


def _image_problem(source: str | os.PathLike | bytes) -> str | None:
    """None when ``source`` (a file or encoded bytes) decodes as an image, else the error.

    A full decode (JPEG at 1/8 scale, which still reads every byte): ``verify()``
    passes truncated JPEGs, which would then fail at collation, mid-training."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            im.draft("RGB", (1, 1))
            im.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        return f"{type(e).__name__}: {e}"
    return None


# --------------------------------------------------------------------------- loaders
def load_hub_vsft(name_or_dir: str | os.PathLike = "unsloth/llava-instruct-mix-vsft-mini", split: str = "train",
                  cache_dir: str | None = None, max_rows: int | None = None, check_images: bool = True):
    """Load a llava-instruct-mix-vsft style split by hub name or from a local hub-layout directory.

    Returns ``(dataset, report)``; bad rows are skipped (see :class:`LoadReport`).
    ``max_rows`` (None or a non-negative int) keeps the first rows only.
    ``check_images`` decodes every kept row's image once (a few ms each), so a
    corrupt or truncated one is skipped here rather than failing at collation;
    ``False`` skips that check.
    """
    import datasets

    _check_max_rows(max_rows)
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
            if not _check_row(start + k, msgs or [], len(imgs), report):
                continue
            if check_images:
                source = imgs[0].get("bytes") or imgs[0]["path"]
                problem = _image_problem(source)
                if problem is not None:
                    report.skip(start + k, "unreadable image", detail=problem)
                    continue
            keep.append(start + k)
    report.kept = len(keep)
    report.announce(f"{name_or_dir} [{split}]")
    return (ds if len(keep) == len(ds) else ds.select(keep)), report


def _llava_image(record: Any) -> tuple[str | None, str | None, str | None]:
    """A LLaVA-Instruct record's image file name, or why it has none: ``(name, None, None)``
    or ``(None, reason, detail)``. A list of one name counts as that name."""
    if not isinstance(record, dict):
        return None, "row is not a JSON object", type(record).__name__
    image = record.get("image")
    if isinstance(image, list):
        if len(image) != 1:
            return None, f"{len(image)} images (need exactly 1)", None
        image = image[0]
    if image is None or image == "":
        return None, "no image", None
    if not isinstance(image, str):
        return None, "image is not a file name", repr(image)[:80]
    return image, None, None


def load_llava_instruct(json_path: str | os.PathLike, image_dir: str | os.PathLike, split: str = "train",
                        test_fraction: float = 0.1, seed: int = 0, max_rows: int | None = None,
                        check_images: bool = True):
    """LLaVA-Instruct-150K (``llava_instruct_150k.json`` + a COCO image folder) as a split.

    Images are assigned to ``"test"`` with probability ``test_fraction`` by a
    seeded permutation of the sorted image ids, so no image is in both splits.
    Every turn becomes a message; the ``<image>`` marker (exactly one per row)
    becomes the image part of the first user turn. Returns ``(dataset,
    report)``; images are opened lazily (``datasets.Image``). Rows without a
    usable image name (not a JSON object, no image, several) are reported with
    the train split only. ``max_rows`` (None or a non-negative int) caps the
    rows kept. ``check_images`` decodes each kept image file once (a few ms
    each), so a corrupt or truncated one is skipped here rather than failing at
    collation; ``False`` skips that check.
    """
    import datasets
    from tqdm import tqdm

    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; valid splits are ['train', 'test']")
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction!r}")
    _check_max_rows(max_rows)
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise ValueError(f"image_dir {str(image_dir)!r} is not a directory")
    try:
        records = json.loads(Path(json_path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{json_path} is not valid JSON: {e}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{json_path} is not UTF-8 text: {e}") from e
    if not isinstance(records, list):
        raise ValueError(f"{json_path} does not hold a list of conversations (it holds a "
                         f"{type(records).__name__})")
    names = [_llava_image(r) for r in records]
    ids = sorted({name for name, _, _ in names if name is not None})
    order = np.random.default_rng(seed).permutation(len(ids))
    test_ids = {ids[i] for i in order[: int(round(test_fraction * len(ids)))]}
    report, messages, images, decoded = LoadReport(), [], [], {}
    for index, (r, (image, problem, detail)) in enumerate(
            tqdm(list(zip(records, names)), desc=f"LLaVA-Instruct [{split}]", disable=len(records) < 10000)):
        if (image in test_ids if image is not None else False) != (split == "test"):
            continue  # rows without an image name are reported with the train split only
        if max_rows is not None and len(messages) >= max_rows:
            break
        row_id = r.get("id", f"#{index}") if isinstance(r, dict) else f"#{index}"
        if image is None:
            report.skip(row_id, problem, detail=detail)
            continue
        conversations = r.get("conversations")
        if not isinstance(conversations, list) or not all(isinstance(t, dict) for t in conversations):
            report.skip(row_id, "malformed conversations (need a list of objects)")
            continue
        msgs, n_markers = [], 0
        for turn in conversations:
            value = str(turn.get("value") or "")
            n_markers += value.count(IMAGE_TOKEN)
            content = [{"type": "text", "text": value.replace(IMAGE_TOKEN, "").strip()}]
            role = "user" if turn.get("from") == "human" else "assistant"
            if role == "user" and not msgs:
                content.insert(0, {"type": "image", "text": None})
            msgs.append({"role": role, "content": content})
        if n_markers != 1:
            report.skip(row_id, f"{n_markers} {IMAGE_TOKEN} markers for 1 image (need exactly 1)")
            continue
        if not _check_row(row_id, msgs, 1, report):
            continue
        file = image_dir / image
        if not file.is_file():
            report.skip(row_id, "missing image file", detail=str(file))
            continue
        if check_images:
            if file not in decoded:
                decoded[file] = _image_problem(file)
            if decoded[file] is not None:
                report.skip(row_id, "unreadable image", detail=f"{file}: {decoded[file]}")
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
    * ``mentioned_patches`` (B, M) bool, with ``mentioned=True`` only: True on the
      patches of the objects the question names (the objects of its ``mentions``; where
      objects overlap, the first object wins), what
      :func:`gpslib.answer_grounding.answer_grounding_loss` reads.

    ``max_length`` (None or a positive int) truncates training texts on the
    right. A prompt that would lose image tokens raises ValueError. A row that
    loses every answer token to truncation adds nothing to the loss: it draws a
    warning, and a batch in which no row keeps an answer token (its loss would
    be NaN) raises ValueError. A generation prompt is never truncated (it would
    lose ``ASSISTANT:``): one longer than ``max_length`` raises ValueError.
    """

    def __init__(self, processor, mode: str = "train", max_length: int | None = None, grounding: bool = False,
                 mentioned: bool = False):
        if mode not in ("train", "generate"):
            raise ValueError(f"unknown collator mode {mode!r}; valid modes are ['train', 'generate']")
        if max_length is not None and (isinstance(max_length, bool)
                                       or not isinstance(max_length, (int, np.integer)) or max_length < 1):
            raise ValueError(f"max_length must be None (no truncation) or a positive int, got {max_length!r}")
        self.processor, self.mode, self.max_length = processor, mode, max_length
        self.grounding, self.mentioned = grounding, mentioned
        self.tokenizer = processor.tokenizer
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        crop = processor.image_processor.crop_size
        n = (crop["height"] // processor.patch_size) * (crop["width"] // processor.patch_size)
        self.num_image_tokens = n + processor.num_additional_image_tokens - (
            processor.vision_feature_select_strategy == "default")

    def _encode(self, messages: list[dict]) -> tuple[list[int], list[int], int | None]:
        """Token ids, labels, and where the answer starts if truncation removed all of it (else None)."""
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
        answer_cut = None
        if self.max_length is not None and len(ids) > self.max_length:
            if self.mode == "generate":
                raise ValueError(f"max_length {self.max_length} is shorter than a generation prompt of {len(ids)} "
                                 f"tokens; generation prompts are never truncated (that would cut 'ASSISTANT:' "
                                 f"off): raise max_length or shorten the question")
            if self.image_token_id in ids[self.max_length:]:
                raise ValueError(f"max_length {self.max_length} would cut image tokens (prompt needs "
                                 f"{ids.index(self.image_token_id) + self.num_image_tokens})")
            answer = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
            ids, labels = ids[: self.max_length], labels[: self.max_length]
            if answer and answer[0] >= self.max_length:
                answer_cut = answer[0]
        return ids, labels, answer_cut

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if not rows:
            raise ValueError("cannot collate an empty batch")
        encoded = [self._encode(r["messages"]) for r in rows]
        cut = {b: start for b, (_, _, start) in enumerate(encoded) if start is not None}
        if cut:
            what = (f"max_length {self.max_length} removes every answer token of batch row(s) {list(cut)} "
                    f"(their answers start at token(s) {list(cut.values())})")
            if all(lab == IGNORE_INDEX for _, labels, _ in encoded for lab in labels):
                raise ValueError(f"{what}, and no row of the batch keeps one: its loss would be NaN. "
                                 f"Raise max_length")
            warnings.warn(f"{what}: they add nothing to the loss", stacklevel=2)
        encoded = [(ids, labels) for ids, labels, _ in encoded]
        maps = [self.grounding_maps(r) for r in rows] if self.grounding or self.mentioned else None
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
        if self.grounding:
            out["reorder_assignment"] = torch.tensor([g["assignment"] for g in maps], dtype=torch.long)
        if self.mentioned:
            named = [{m["object_index"] for m in r["mentions"]} for r in rows]
            out["mentioned_patches"] = torch.tensor([[o in objs for o in g["image_object"]]
                                                     for g, objs in zip(maps, named)], dtype=torch.bool)
        return out

    def grounding_tensors(self, rows: list[dict[str, Any]], n_text: int):
        """:meth:`grounding_maps` of ``rows`` as tensors: image_object (B, M), text_object (B, n_text)
        (padded with -1) and assignment (B, M). Raises ValueError when a row has more than
        ``n_text`` prompt text tokens (its maps would not line up with the model's)."""
        import torch

        maps = [self.grounding_maps(row) for row in rows]
        too_long = [i for i, g in enumerate(maps) if len(g["text_object"]) > n_text]
        if too_long:
            raise ValueError(f"rows {too_long} have more than n_text={n_text} prompt text tokens")
        return (torch.tensor([g["image_object"] for g in maps]),
                torch.tensor([g["text_object"] + [-1] * (n_text - len(g["text_object"])) for g in maps]),
                torch.tensor([g["assignment"] for g in maps]))

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
