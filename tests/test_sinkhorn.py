"""Properties of gpslib.sinkhorn: Sinkhorn operator, Gumbel noise, hard permutations, tau."""

import itertools
import math
import warnings

import pytest
import torch

import gpslib.sinkhorn as sk
from conftest import scores as _scores
from gpslib.sinkhorn import (
    gumbel_from_uniform,
    gumbel_noise,
    hard_permutation,
    is_permutation,
    order_to_perm_matrix,
    perm_matrix_to_order,
    row_error,
    sinkhorn,
    tau_schedule,
)
from gpslib.comparison_only import sinkhorn_clamped_authors, sinkhorn_matrix_logsumexp


@pytest.fixture(autouse=True, params=["matrix", "scaling"])
def cpu_path(request, monkeypatch):
    """Every property holds on both forward paths: the matrix loop and the CPU scaling form."""
    monkeypatch.setattr(sk._Stabilised, "MIN_ELEMENTS", math.inf if request.param == "matrix" else 0)
    return request.param


def test_columns_sum_to_one_after_last_step():
    P = sinkhorn(_scores(3, 6, 6) / 0.3, n_iters=5)
    torch.testing.assert_close(P.sum(-2), torch.ones(3, 6, dtype=torch.float64), atol=1e-12, rtol=0)


def test_row_error_shrinks_with_iterations():
    la = _scores(2, 8, 8) / 0.5
    errs = [float(row_error(sinkhorn(la, n_iters=t)).max()) for t in (1, 5, 20, 100)]
    assert errs[0] > errs[1] > errs[2] > errs[3]
    assert errs[3] < 1e-10


def test_invariant_to_adding_a_constant_to_a_row_or_column():
    la = _scores(1, 6, 6)
    shifted = la.clone()
    shifted[0, 2, :] += 7.5
    shifted[0, :, 4] -= 3.0
    torch.testing.assert_close(sinkhorn(shifted, 30), sinkhorn(la, 30), atol=1e-12, rtol=0)


def test_permutation_equivariance():
    la = _scores(1, 7, 7)
    g = torch.Generator().manual_seed(1)
    pr, pc = torch.randperm(7, generator=g), torch.randperm(7, generator=g)
    out = sinkhorn(la[:, pr][:, :, pc], 20)
    torch.testing.assert_close(out, sinkhorn(la, 20)[:, pr][:, :, pc], atol=1e-12, rtol=0)


def test_rank_one_input_gives_exactly_one_over_n():
    a, b = _scores(5, 1, seed=2), _scores(1, 5, seed=3)
    P = sinkhorn((a + b)[None] * 4.0, n_iters=1)
    torch.testing.assert_close(P, torch.full_like(P, 1 / 5), atol=1e-14, rtol=0)


def test_high_tau_gives_uniform():
    P = sinkhorn(_scores(2, 6, 6) / 1e4, n_iters=3)
    torch.testing.assert_close(P, torch.full_like(P, 1 / 6), atol=1e-4, rtol=0)


@pytest.mark.parametrize("n", [3, 5, 7])
def test_low_tau_with_margin_gives_the_brute_force_matching(n):
    g = torch.Generator().manual_seed(n)
    target = torch.randperm(n, generator=g)
    scores = torch.rand(n, n, generator=g, dtype=torch.float64)
    scores[torch.arange(n), target] += 1.0  # margin
    best = max(itertools.permutations(range(n)), key=lambda p: sum(scores[i, p[i]] for i in range(n)))
    P = sinkhorn(scores[None] / 0.05, n_iters=500)[0]
    assert torch.equal(P.argmax(-1), torch.tensor(best))
    assert float((P - order_to_perm_matrix(torch.tensor(best), P.dtype)).abs().max()) < 1e-3


def test_matches_the_matrix_logsumexp_loop():
    la = _scores(2, 16, 16, dtype=torch.float32) / 0.1
    torch.testing.assert_close(sinkhorn(la, 50), sinkhorn_matrix_logsumexp(la, 50), atol=1e-5, rtol=0)


def test_gradcheck_float64():
    la = _scores(2, 5, 5).requires_grad_()
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    for m in (None, mask):
        assert torch.autograd.gradcheck(lambda x: sinkhorn(x / 0.7, n_iters=6, mask=m), (la,))


@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float64, 1e-10, 1e-8), (torch.float32, 1e-5, 1e-4)])
def test_gradient_matches_autograd_through_the_textbook_loop(dtype, atol, rtol):
    la = _scores(2, 12, 12, dtype=dtype) / 0.3
    w = _scores(2, 12, 12, seed=4, dtype=dtype)
    grads = []
    for fn in (lambda x: sinkhorn(x, 20), lambda x: sinkhorn_matrix_logsumexp(x, 20)):
        x = la.clone().requires_grad_()
        (fn(x) * w).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=atol, rtol=rtol)


def test_masked_positions_stay_fixed():
    la = _scores(2, 6, 6) / 0.1
    mask = torch.tensor([[True, True, True, True, False, False], [True, False, True, True, True, False]])
    P = sinkhorn(la, 40, mask=mask)
    for b in range(2):
        pad = (~mask[b]).nonzero().squeeze(-1)
        real = mask[b].nonzero().squeeze(-1)
        torch.testing.assert_close(P[b][pad][:, pad], torch.eye(len(pad), dtype=P.dtype), atol=0, rtol=0)
        assert float(P[b][real][:, pad].abs().max()) == 0.0
        assert float(P[b][pad][:, real].abs().max()) == 0.0
        torch.testing.assert_close(P[b][real][:, real].sum(-2), torch.ones(len(real), dtype=P.dtype))


def test_a_constant_row_of_any_magnitude_gives_uniform():
    for value in (0.0, 1e6, 1e30, -1e30):
        P = sinkhorn(torch.full((2, 7, 7), value), 10)
        torch.testing.assert_close(P, torch.full_like(P, 1 / 7), atol=1e-6, rtol=0)


def test_finite_for_extreme_finite_input_and_half_is_upcast():
    la = _scores(2, 8, 8) * 1e6
    assert torch.isfinite(sinkhorn(la, 50)).all()
    P = sinkhorn(_scores(1, 8, 8).half(), 20)
    assert P.dtype == torch.float32 and torch.isfinite(P).all()


def test_tol_stops_early_and_warns_when_n_iters_ends_first():
    la = _scores(1, 8, 8) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sinkhorn(la, n_iters=200, tol=1e-8, check_every=5)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        sinkhorn(_scores(1, 8, 8) / 0.01, n_iters=3, tol=1e-8)


def test_tol_stops_at_the_same_iteration_on_the_cpu_and_the_matrix_paths():
    la = _scores(2, 10, 10) / 0.5
    fast = sinkhorn(la, n_iters=300, tol=1e-9, check_every=7, return_log=True)
    ref, _, _, err = sk._iterate(la, 300, 1e-9, 7)
    assert err < 1e-9
    torch.testing.assert_close(fast, ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"log_alpha": torch.zeros(3, 4)}, r"\(3, 4\)"),
        ({"log_alpha": torch.zeros(4, 4), "n_iters": 0}, "n_iters.*0"),
        ({"log_alpha": torch.zeros(4, 4), "tol": -1.0}, "tol.*-1"),
    ],
)
def test_bad_sinkhorn_arguments_raise_value_error_naming_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sinkhorn(**kwargs)


def test_authors_clamp_leaves_p_near_uniform_at_low_tau():
    la = _scores(1, 64, 64, dtype=torch.float32) / 0.01
    P = sinkhorn_clamped_authors(la)
    ours = sinkhorn(la, 50)
    assert float((la.abs() > 15).float().mean()) > 0.8  # the clamp saturates most entries
    # uniform is 1/64 = 0.016 per entry: the clamped P's rows peak at 0.05, ours near one
    assert float(P.amax(-1).mean()) < 0.1 and float(P.amax()) < 0.2
    assert float(ours.amax(-1).mean()) > 0.8


def test_gumbel_is_finite_at_forced_u_zero_and_one():
    for dtype in (torch.float32, torch.float64):
        g = gumbel_from_uniform(torch.tensor([0.0, 1.0, 0.5], dtype=dtype))
        assert torch.isfinite(g).all()
        assert math.isclose(float(g[2]), -math.log(math.log(2.0)), rel_tol=1e-6)


def test_gumbel_noise_is_seeded_scaled_and_zero_at_scale_zero():
    a = gumbel_noise((500,), generator=torch.Generator().manual_seed(0))
    b = gumbel_noise((500,), generator=torch.Generator().manual_seed(0), scale=0.5)
    torch.testing.assert_close(b, 0.5 * a)
    assert abs(float(a.mean()) - 0.5772) < 0.15  # Euler-Mascheroni
    assert torch.equal(gumbel_noise((3, 3), scale=0.0), torch.zeros(3, 3))
    assert gumbel_noise((4,), dtype=torch.float16).dtype == torch.float16
    with pytest.raises(ValueError, match="-1"):
        gumbel_noise((2,), scale=-1.0)


@pytest.mark.parametrize("method", ["hungarian", "argmax", "auto"])
def test_hard_output_is_a_permutation_and_passes_the_soft_gradient(method):
    la = (_scores(3, 6, 6, dtype=torch.float32) / 0.05).requires_grad_()
    P = sinkhorn(la, 200)
    hard, valid = hard_permutation(P, method=method, return_valid=True)
    assert set(hard.detach().unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(is_permutation(hard), valid)
    if method != "argmax":
        assert valid.all()
    w = _scores(3, 6, 6, seed=9, dtype=torch.float32)
    g_hard = torch.autograd.grad((hard * w).sum(), la)[0]
    g_soft = torch.autograd.grad((sinkhorn(la, 200) * w).sum(), la)[0]
    torch.testing.assert_close(g_hard, g_soft)


def test_argmax_flags_non_permutations_and_auto_repairs_them():
    P = torch.tensor([[[0.6, 0.4], [0.7, 0.3]]])  # both rows pick column 0
    hard, valid = hard_permutation(P, method="argmax", return_valid=True)
    assert not bool(valid[0]) and not bool(is_permutation(hard)[0])
    auto = hard_permutation(P, method="auto")
    assert torch.equal(perm_matrix_to_order(auto), torch.tensor([[1, 0]]))  # max log-prob matching
    with pytest.raises(ValueError, match="'nope'"):
        hard_permutation(P, method="nope")


def test_order_and_perm_matrix_follow_the_gather_convention():
    g = torch.Generator().manual_seed(0)
    order = torch.stack([torch.randperm(5, generator=g) for _ in range(2)])  # (2, 5)
    tokens = torch.randn(2, 5, 3, generator=g)
    P = order_to_perm_matrix(order)
    torch.testing.assert_close(P @ tokens, tokens.gather(1, order[..., None].expand(-1, -1, 3)))
    assert torch.equal(perm_matrix_to_order(P), order)
    assert is_permutation(P).all()


def test_tau_schedule_is_the_paper_cosine_and_clamps_after_the_end():
    assert tau_schedule(0, 100, 2.0, 0.1) == pytest.approx(2.0)
    assert tau_schedule(50, 100, 2.0, 0.1) == pytest.approx(1.05)
    # a quarter and three quarters of the way: 0.1 + 0.95 (1 +- cos(pi / 4)); a straight line gives 1.525, 0.575
    assert tau_schedule(25, 100, 2.0, 0.1) == pytest.approx(1.7217514421, abs=1e-9)
    assert tau_schedule(75, 100, 2.0, 0.1) == pytest.approx(0.3782485579, abs=1e-9)
    assert tau_schedule(100, 100, 2.0, 0.1) == pytest.approx(0.1)
    assert tau_schedule(250, 100, 2.0, 0.1) == pytest.approx(0.1)
    taus = [tau_schedule(s, 100, 2.0, 0.1) for s in range(101)]
    assert all(a >= b for a, b in zip(taus, taus[1:]))


@pytest.mark.parametrize(
    "args, match",
    [((0, 0, 2.0, 0.1), "total_steps.*0"), ((-1, 10, 2.0, 0.1), "step.*-1"), ((0, 10, 0.0, 0.1), "tau_start=0.0"),
     ((math.nan, 10, 2.0, 0.1), "step .*got nan"), ((math.inf, 10, 2.0, 0.1), "step .*got inf"),
     ((2.5, 10, 2.0, 0.1), r"step .*got 2\.5"), ((3.0, 10, 2.0, 0.1), r"step .*got 3\.0 \(float\)"),
     ((True, 10, 2.0, 0.1), "step .*got True")],
)
def test_bad_tau_schedule_arguments_raise_value_error_naming_the_value(args, match):
    with pytest.raises(ValueError, match=match):
        tau_schedule(*args)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("tol", [None, 1e-6])
def test_non_finite_log_alpha_raises_naming_the_entry(value, tol):
    la = _scores(2, 5, 5)
    la[1, 2, 3] = value
    with pytest.raises(ValueError, match=rf"finite; entry \(1, 2, 3\) is {value}"):
        sinkhorn(la, 10, tol=tol)
    with pytest.raises(ValueError, match="finite"):
        sinkhorn(la.requires_grad_(), 10, tol=tol)


def test_non_finite_entries_in_padded_rows_and_columns_are_allowed():
    la = _scores(2, 6, 6)
    mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    padded = la.clone()
    padded[0, :, 4:] = -math.inf  # what an attention key mask puts there
    padded[0, 4:, :] = math.nan
    torch.testing.assert_close(sinkhorn(padded, 20, mask=mask), sinkhorn(la, 20, mask=mask), atol=0, rtol=0)
    padded[1, 0, 0] = -math.inf  # a real pair
    with pytest.raises(ValueError, match=r"where mask keeps it .* entry \(1, 0, 0\) is -inf"):
        sinkhorn(padded, 20, mask=mask)


def test_check_finite_false_skips_the_check(cpu_path):
    if cpu_path == "scaling":
        pytest.skip("the opt-out is for the sync-free matrix loop (CUDA); the CPU scaling form may raise")
    la = _scores(1, 4, 4)
    la[0, 0, 0] = math.nan
    assert torch.isnan(sinkhorn(la, 5, check_finite=False)).any()


@pytest.mark.parametrize("shape", [(2, 0, 0), (0, 3, 3), (0, 0)])
def test_empty_input_gives_an_empty_result(shape):
    la = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    for kwargs in ({}, {"tol": 1e-6}, {"return_log": True},
                   {"mask": torch.ones(shape[:-1], dtype=torch.bool)}):
        P = sinkhorn(la, 10, **kwargs)
        assert P.shape == shape and P.dtype == torch.float64, kwargs
    sinkhorn(la, 10).sum().backward()
    assert la.grad.shape == shape


def test_finite_input_whose_sum_overflows_is_accepted():
    la = torch.full((1, 4, 4), 3e38)  # finite entries; their float32 sum is inf
    P = sinkhorn(la, 5)
    torch.testing.assert_close(P, torch.full_like(P, 0.25), atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", [(6, 6), (2, 3, 6, 6)])
def test_gradient_matches_the_textbook_loop_for_any_leading_dimensions(shape):
    la = _scores(*shape) / 0.2
    w = _scores(*shape, seed=5)
    grads = []
    for fn in (lambda x: sinkhorn(x, 15), lambda x: sinkhorn_matrix_logsumexp(x, 15)):
        x = la.clone().requires_grad_()
        (fn(x) * w).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-10, rtol=1e-8)
