"""Run profiles: one name -> the sizes every notebook and CLI uses.

A profile only changes sizes and sources, never the code path (DESIGN.md,
"Profiles"). Each notebook section reads its own block with
:func:`profile_settings`.

| profile | where | budget |
| --- | --- | --- |
| ``smoke`` | tests, CI, the committed notebook outputs | seconds per notebook |
| ``cpu``   | any laptop, no network (default of ``run_all.sh``) | whole run <= 30 min on 2 cores |
| ``paper`` | a CUDA machine with hub access | the paper's settings |
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["PROFILES", "SETTINGS", "check_profile", "profile_settings", "publishes_figures"]

PROFILES: tuple[str, ...] = ("smoke", "cpu", "paper")

# section -> profile -> settings. Keep each section next to the others so the
# cost of every profile can be read in one place.
SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    # notebooks/01_rope_positional_noise.ipynb (paper, Introduction)
    "rope": {
        "smoke": {"n_pairs": 1000, "head_dim": 64, "demo_dim": 2048, "n_image": 576, "n_text": 50},
        "cpu": {"n_pairs": 5000, "head_dim": 64, "demo_dim": 2048, "n_image": 576, "n_text": 50},
        "paper": {"n_pairs": 20000, "head_dim": 64, "demo_dim": 2048, "n_image": 576, "n_text": 50},
    },
}


def check_profile(profile: str) -> str:
    """Return ``profile`` if it is a known profile name, else raise ValueError naming it."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid profiles are {list(PROFILES)}")
    return profile


def profile_settings(section: str, profile: str) -> dict[str, Any]:
    """The settings of one notebook section under one profile (a fresh copy).

    Raises ValueError naming an unknown ``section`` or ``profile``.
    """
    check_profile(profile)
    if section not in SETTINGS:
        raise ValueError(f"unknown settings section {section!r}; valid sections are {sorted(SETTINGS)}")
    return copy.deepcopy(SETTINGS[section][profile])


def publishes_figures(profile: str) -> bool:
    """Whether a run in ``profile`` writes into ``figures/`` (``cpu`` and ``paper`` only)."""
    return check_profile(profile) != "smoke"
