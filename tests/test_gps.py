"""Properties of gpslib.gps.GumbelPermutationSinkformer (Algorithm 2)."""

import pytest
import torch

from gpslib.comparison_only import sinkhorn_clamped_authors
from gpslib.gps import GPSSettings, GumbelPermutationSinkformer
from gpslib.sinkhorn import is_permutation


def _model(**kw):
    torch.manual_seed(0)
    return GumbelPermutationSinkformer(8, GPSSettings(num_layers=3, ffn_dim=16, sinkhorn_iters=10, **kw))


def _tokens(b=2, n=6, d=8, seed=1):
    return torch.randn(b, n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("hard", [False, True])
def test_every_parameter_receives_a_gradient(hard):
    model = _model()
    P = model(_tokens(), tau=0.5, hard=hard)
    (P * torch.randn(P.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_output_is_doubly_stochastic_with_shape_b_n_n():
    P = _model()(_tokens(), tau=1.0)
    assert P.shape == (2, 6, 6)
    torch.testing.assert_close(P.sum(-2), torch.ones(2, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(P.sum(-1), torch.ones(2, 6), atol=1e-3, rtol=0)


def test_inference_path_is_a_deterministic_permutation():
    model = _model().eval()
    x = _tokens()
    a = model(x, tau=0.1, hard=True, noise=False)
    b = model(x, tau=0.1, hard=True, noise=False)
    assert is_permutation(a).all() and torch.equal(a, b)


def test_noise_is_seeded_through_the_generator():
    model, x = _model(), _tokens()
    a = model(x, generator=torch.Generator().manual_seed(3))
    b = model(x, generator=torch.Generator().manual_seed(3))
    c = model(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_masked_positions_stay_fixed():
    model = _model()
    mask = torch.tensor([[True, True, True, True, False, False], [True] * 6])
    P = model(_tokens(), tau=0.2, mask=mask).detach()
    torch.testing.assert_close(P[0, 4:, 4:], torch.eye(2), atol=0, rtol=0)
    assert float(P[0, :4, 4:].abs().max()) == 0.0 and float(P[0, 4:, :4].abs().max()) == 0.0
    hard = model(_tokens(), tau=0.2, mask=mask, hard=True, noise=False)
    assert is_permutation(hard).all()
    torch.testing.assert_close(hard[0, 4:, 4:], torch.eye(2), atol=0, rtol=0)


def test_padded_tokens_do_not_change_the_real_block():
    model, x = _model(), _tokens(b=1, n=6)
    mask = torch.tensor([[True] * 4 + [False] * 2])
    full = model(x, tau=0.3, mask=mask, noise=False)
    x2 = x.clone()
    x2[:, 4:] = 100.0
    torch.testing.assert_close(model(x2, tau=0.3, mask=mask, noise=False), full, atol=1e-6, rtol=0)
    torch.testing.assert_close(full[:, :4, :4], model(x[:, :4], tau=0.3, noise=False), atol=1e-5, rtol=0)


def test_authors_sinkhorn_switch_uses_the_clamped_loop_and_rejects_mask():
    model, x = _model(sinkhorn_impl="authors"), _tokens()
    with torch.no_grad():
        log_alpha = model.scores(x) / 0.05  # tau 0.05: most entries lie past the clamp at 15
        expected = sinkhorn_clamped_authors(log_alpha, n_iters=10)
        ours = _model()(x, tau=0.05, noise=False)  # the same weights through the library's Sinkhorn
        P = model(x, tau=0.05, noise=False)
    torch.testing.assert_close(P, expected, atol=0, rtol=0)
    assert float((P - ours).abs().max()) > 0.1
    with pytest.raises(ValueError, match="mask"):
        model(x, mask=torch.ones(2, 6, dtype=torch.bool))


@pytest.mark.parametrize(
    "kwargs, match",
    [({"num_layers": 0}, "num_layers=0"), ({"sinkhorn_impl": "x"}, "'x'"), ({"noise_scale": -1.0}, "-1"),
     ({"hard_method": "max"}, "'max'"), ({"tau_end": 0.0}, "tau_end=0.0"), ({"hard_after": 1.5}, "hard_after=1.5"),
     ({"ffn_dim": 0}, "ffn_dim=0")],
)
def test_bad_settings_raise_value_error_naming_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPSSettings(**kwargs)


def test_settings_round_trip_through_a_dict_and_reject_unknown_keys():
    settings = GPSSettings(alpha=0.25, tau_start=3.0)
    assert GPSSettings.from_dict(settings.to_dict()) == settings
    assert GPSSettings.from_dict(None) == GPSSettings()
    with pytest.raises(ValueError, match="'layers'"):
        GPSSettings.from_dict({"layers": 2})


def test_bad_forward_arguments_raise_value_error_naming_the_value():
    model = _model()
    with pytest.raises(ValueError, match="tau.*0"):
        model(_tokens(), tau=0.0)
    with pytest.raises(ValueError, match=r"\(2, 6, 5\)"):
        model(torch.zeros(2, 6, 5))
