"""The CPU forward path of gpslib.sinkhorn (scaling form with log-domain absorption): exactness."""

import pytest
import torch

import gpslib.sinkhorn as sk
from conftest import scores as _scores
from gpslib.comparison_only import sinkhorn_matrix_logsumexp
from gpslib.sinkhorn import sinkhorn


@pytest.fixture(autouse=True)
def scaling_path(monkeypatch):
    monkeypatch.setattr(sk._Stabilised, "MIN_ELEMENTS", 0)  # small test inputs take the scaling path too


def test_small_inputs_take_the_matrix_loop_and_large_ones_the_scaling_form(monkeypatch):
    monkeypatch.setattr(sk._Stabilised, "MIN_ELEMENTS", 32768)
    calls = []
    monkeypatch.setattr(sk, "_iterate_scaling", lambda *a: calls.append(a[0].numel()) or sk._iterate(*a))
    sinkhorn(_scores(2, 16, 16), 5)
    sinkhorn(_scores(2, 128, 128), 5)
    assert calls == [2 * 128 * 128]


@pytest.mark.parametrize("tau", [2.0, 0.1, 0.01])
def test_cpu_scaling_path_matches_the_float64_matrix_loop_in_float32(tau):
    la = _scores(3, 96, 96, seed=7, dtype=torch.float32) / tau
    truth = sinkhorn_matrix_logsumexp(la.double(), 50)
    P = sinkhorn(la, 50)
    assert P.dtype == torch.float32 and torch.isfinite(P).all()
    assert float((P.double() - truth).abs().max()) < 1e-5
    torch.testing.assert_close(P, sk._iterate(la, 50, None, 10)[0].exp(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("rebuild", [0.0, 1.0])
def test_cpu_scaling_path_is_exact_whether_failing_rows_rebuild_the_kernel_or_not(monkeypatch, rebuild):
    calls = {"log_rows": 0, "rebuild": 0}
    lse, rebuild_fn = sk._lse, sk._Stabilised._rebuild

    def counting_lse(x, dim):
        calls["log_rows"] += x.shape[0] if x.dim() == 2 else 0
        return lse(x, dim)

    def counting_rebuild(self, R, C):
        calls["rebuild"] += 1
        rebuild_fn(self, R, C)

    monkeypatch.setattr(sk, "_lse", counting_lse)
    monkeypatch.setattr(sk._Stabilised, "_rebuild", counting_rebuild)
    monkeypatch.setattr(sk._Stabilised, "_REBUILD", rebuild)
    la = _scores(2, 48, 48, seed=3) / 0.001  # low tau: rows fall out of the float64 kernel's range
    P = sinkhorn(la, 40)
    assert calls["log_rows"] > 0
    assert (calls["rebuild"] > 0) == (rebuild == 0.0)
    torch.testing.assert_close(P, sinkhorn_matrix_logsumexp(la, 40), atol=1e-12, rtol=0)


def test_cpu_scaling_path_keeps_float32_digits_for_large_potentials():
    la = _scores(2, 40, 40, seed=5, dtype=torch.float32) / 0.05
    la = la + torch.linspace(-3000, 3000, 40)[:, None] - torch.linspace(0, 2000, 40)[None, :]
    truth = sinkhorn_matrix_logsumexp(la.double(), 30)
    assert float((sinkhorn(la, 30).double() - truth).abs().max()) < 1e-5
    huge = _scores(1, 12, 12, seed=6, dtype=torch.float32) * 1e7  # past float32's grid: float64 differences
    torch.testing.assert_close(sinkhorn(huge, 20).double(), sinkhorn_matrix_logsumexp(huge.double(), 20),
                               atol=1e-6, rtol=0)
