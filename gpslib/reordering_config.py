"""The typed config of a reordering LLaVA (paper Figures 1-2): one name, one default and one check per setting.

:class:`ReorderingLlavaConfig` is transformers' ``LlavaConfig`` with the reordering and position
settings as real fields, registered with ``AutoConfig`` under ``model_type="reordering_llava"``
(the model class registers itself with the Auto model classes in :mod:`gpslib.reordering`), so
a saved reordering model comes back with its settings through transformers' own entry points.
Every field is checked when it is set, at construction and on later assignment; a bad value
raises ValueError naming it.

Fields (defaults in brackets):

* ``reorder`` ["none"]: the strategy, one of :data:`STRATEGIES`: ``"none"`` (plain LLaVA),
  ``"cosine"`` (TokenMixer, Algorithm 1), ``"gps"`` (the Gumbel Permutation Sinkformer,
  Algorithm 2), ``"oracle"`` (ShapesVQA's grounding; the upper bound), ``"random"`` (as many
  image tokens moved as ``"cosine"`` moves, each to a random word: the proximity control).
* ``threshold`` [0.1, :data:`gpslib.paper.SIMILARITY_THRESHOLD`]: TokenMixer's cosine-similarity
  threshold, the paper's tau_align (0.1 in Table 3; the authors' code uses
  :data:`gpslib.paper.AUTHORS_CODE_THRESHOLD`).
* ``placement`` ["before"]: where a matched image token goes relative to its word
  (:data:`gpslib.tokenmixer.PLACEMENTS`).
* ``gps`` [:class:`gpslib.gps.GPSSettings` defaults]: GPS's architecture and schedule, a dict.
* ``position_gap`` [0]: g virtual RoPE positions between the leading block of image tokens
  and everything after it (what g filler tokens would do, without their compute).
* ``position_scheme`` ["sequential"]: the positions of the image tokens, one of
  :data:`gpslib.positions.POSITION_SCHEMES` (``"v2pe"``, ``"cca"``: position-only baselines).
* ``v2pe_delta`` [None = 1/M, the whole image on one position]: V2PE's step per image token.
* ``assistant_separator_ids`` [None]: token ids of ``ASSISTANT:`` (:func:`gpslib.chat_format.
  assistant_separator_ids`); the reorderable prompt ends with them. :func:`gpslib.model.load_model`
  fills them from the processor's tokenizer.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import AutoConfig, LlavaConfig

from gpslib.gps import GPSSettings
from gpslib.paper import SIMILARITY_THRESHOLD
from gpslib.positions import POSITION_SCHEMES
from gpslib.tokenmixer import check_placement, check_threshold

__all__ = ["STRATEGIES", "LAYOUTS", "REORDERING_FIELDS", "ReorderingLlavaConfig", "check_reordering_settings", "reordering_config"]

STRATEGIES = ("none", "cosine", "gps", "oracle", "random")
# Named layouts: an order (strategy) and the positions of the image tokens. What the distance
# experiment (gpslib.distance) evaluates and what the mixed-layout base model
# (gpslib.pretrain) is trained on, so that no layout it is tested on is new to it.
LAYOUTS: dict[str, dict[str, str]] = {
    "none": {"reorder": "none", "position_scheme": "sequential"},
    "oracle": {"reorder": "oracle", "position_scheme": "sequential"},
    "cosine": {"reorder": "cosine", "position_scheme": "sequential"},
    "random": {"reorder": "random", "position_scheme": "sequential"},
    "v2pe": {"reorder": "none", "position_scheme": "v2pe"},
    "cca": {"reorder": "none", "position_scheme": "cca"},
}
REORDERING_FIELDS = ("reorder", "threshold", "placement", "gps", "position_gap", "position_scheme", "v2pe_delta",
                     "assistant_separator_ids")


def _check_reorder(value: Any) -> str:
    if value not in STRATEGIES:
        raise ValueError(f"reorder must be one of {STRATEGIES}; got reorder={value!r}")
    return value


def _check_gap(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"position_gap must be an int >= 0; got position_gap={value!r}")
    return value


def _check_scheme(value: Any) -> str:
    if value not in POSITION_SCHEMES:
        raise ValueError(f"position_scheme must be one of {POSITION_SCHEMES}; got position_scheme={value!r}")
    return value


def _check_delta(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < 1) or not math.isfinite(value):
        raise ValueError(f"v2pe_delta must be None (1/M) or a number with 0 < delta < 1; got v2pe_delta={value!r}")
    return float(value)


def _check_separator(value: Any) -> list[int] | None:
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
        raise ValueError(f"assistant_separator_ids must be None or a non-empty list of token ids; got {value!r}")
    return [int(v) for v in value]


_CHECKS = {
    "reorder": _check_reorder,
    "threshold": check_threshold,
    "placement": check_placement,
    "gps": lambda value: (value if isinstance(value, GPSSettings) else GPSSettings.from_dict(value)).to_dict(),
    "position_gap": _check_gap,
    "position_scheme": _check_scheme,
    "v2pe_delta": _check_delta,
    "assistant_separator_ids": _check_separator,
}


def check_reordering_settings(**settings: Any) -> dict[str, Any]:
    """Check reordering settings without building a config (e.g. before a model is loaded).

    Returns them normalised (``gps`` with its defaults filled in); raises ValueError naming an
    unknown setting or a bad value, exactly as :class:`ReorderingLlavaConfig` would.
    """
    unknown = sorted(set(settings) - set(REORDERING_FIELDS))
    if unknown:
        raise ValueError(f"unknown reordering settings {unknown}; valid ones are {list(REORDERING_FIELDS)}")
    return {k: _CHECKS[k](v) for k, v in settings.items()}


class ReorderingLlavaConfig(LlavaConfig):
    """``LlavaConfig`` plus the reordering and position settings (see the module docstring)."""

    model_type = "reordering_llava"

    reorder: str = "none"
    threshold: float = SIMILARITY_THRESHOLD
    placement: str = "before"
    gps: dict | None = None
    position_gap: int = 0
    position_scheme: str = "sequential"
    v2pe_delta: float | None = None
    assistant_separator_ids: list[int] | None = None

    def __setattr__(self, key: str, value: Any) -> None:
        if key in _CHECKS:
            value = _CHECKS[key](value)
        super().__setattr__(key, value)

    @property
    def gps_settings(self) -> GPSSettings:
        """``gps`` as :class:`gpslib.gps.GPSSettings`."""
        return GPSSettings.from_dict(self.gps)

    @property
    def default_positions(self) -> bool:
        """Whether positions are plain LLaVA's (no gap, sequential scheme)."""
        return self.position_gap == 0 and self.position_scheme == "sequential"


def reordering_config(config: LlavaConfig, **settings: Any) -> ReorderingLlavaConfig:
    """A :class:`ReorderingLlavaConfig` with the architecture of ``config`` and the given settings.

    ``config`` is a ``LlavaConfig`` (or a reordering one, whose settings are kept unless
    overridden); ``settings`` are fields of :class:`ReorderingLlavaConfig`; an unknown name
    raises ValueError naming it.
    """
    check_reordering_settings(**settings)
    values = config.to_dict()
    values.pop("model_type", None)
    values.pop("transformers_version", None)
    values.update(settings)
    return ReorderingLlavaConfig(**values)


AutoConfig.register(ReorderingLlavaConfig.model_type, ReorderingLlavaConfig, exist_ok=True)
