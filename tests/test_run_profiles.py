"""Properties of gpslib.run_profiles and gpslib.runtime."""

import numpy as np
import pytest
import torch

from gpslib import run_profiles as profiles
from gpslib import runtime


def test_every_section_defines_every_profile():
    for section, by_profile in profiles.SETTINGS.items():
        assert set(by_profile) == set(profiles.PROFILES), section


def test_smoke_and_cpu_settings_have_the_same_keys():
    # the paper profile may differ (e.g. it loads the hub model instead of pretraining)
    for section, by_profile in profiles.SETTINGS.items():
        assert set(by_profile["smoke"]) == set(by_profile["cpu"]), section


def test_profile_settings_returns_a_copy():
    a = profiles.profile_settings("rope", "smoke")
    a["n_pairs"] = -1
    assert profiles.profile_settings("rope", "smoke")["n_pairs"] != -1


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: profiles.profile_settings("rope", "laptop"), "'laptop'"),
        (lambda: profiles.profile_settings("nope", "cpu"), "'nope'"),
        (lambda: runtime.setup("gpu"), "'gpu'"),
        (lambda: runtime.setup("smoke", threads=0, verbose=False), "threads=0"),
    ],
)
def test_bad_input_raises_value_error_naming_the_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_only_cpu_and_paper_publish_figures():
    assert [p for p in profiles.PROFILES if profiles.publishes_figures(p)] == ["cpu", "paper"]


def test_setup_makes_draws_repeatable(monkeypatch):
    monkeypatch.setenv("GPSLIB_THREADS", "1")
    before = torch.get_num_threads()
    try:
        runtime.setup("smoke", seed=3, verbose=False)
        first = (np.random.rand(), torch.rand(1).item())
        runtime.setup("smoke", seed=3, verbose=False)
        assert (np.random.rand(), torch.rand(1).item()) == first
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_bad_thread_variable_raises_value_error_naming_it(monkeypatch):
    monkeypatch.setenv("GPSLIB_THREADS", "two")
    with pytest.raises(ValueError, match="'two'"):
        runtime.default_threads()
