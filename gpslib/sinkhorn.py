"""Sinkhorn normalisation, Gumbel noise and hard permutations (paper Section 3.2, Algorithm 2).

The permutation convention of the whole project: an ``order`` is a LongTensor of gather
indices, ``reordered[b, j] = tokens[b, order[b, j]]``; its permutation matrix has
``perm_matrix[b, j, order[b, j]] = 1``, so ``reordered = perm_matrix @ tokens``
(:func:`order_to_perm_matrix`, :func:`perm_matrix_to_order`).

:func:`sinkhorn` is the log-domain iteration of Mena et al. (2018):
``x <- x - logsumexp(x, dim=-1)`` (rows), then ``x <- x - logsumexp(x, dim=-2)``
(columns), so the columns of the result sum to one up to rounding and the row error
shrinks with the iterations. Nothing is clamped: it is finite for any finite input.
Equivalently ``log P = log_alpha - r_t[:, None] - c_t[None, :]`` with cumulative
normaliser vectors ``r_t``, ``c_t``. One forward, two ways of computing the same iterates
(tests check they agree):

* the matrix loop above (on CUDA, and on CPU below ``_Stabilised.MIN_ELEMENTS`` entries):
  no host syncs; inside each logsumexp the max-shifted exponent is floored at ``-80``
  (``exp(-80) < 2e-35``, below float32 and float64 resolution next to the max term,
  which is 1), which avoids the slow path of ``exp`` for very negative arguments;
* on CPU from ``_Stabilised.MIN_ELEMENTS`` entries, the same potentials in scaling form
  with log-domain absorption (:class:`_Stabilised`): one matrix-vector product per
  half-step and N x N exponentials only when the kernel is rebuilt, with every row checked
  for exactness and recomputed in the log domain where the kernel cannot represent it.

One backward (:class:`_SinkhornFunction`): it saves only the 2 * n_iters normaliser
vectors (..., N) and recomputes the N x N weights of each step in two reused N x N
buffers (O(n_iters * N) memory instead of one N x N tensor per half-step). Speed against
the probability-domain loop: ``benchmarks/bench_sinkhorn.py``. The authors' clamped scheme
and the textbook loops live in :mod:`gpslib.comparison_only`.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = [
    "EXP_FLOOR",
    "HARD_METHODS",
    "gumbel_from_uniform",
    "gumbel_noise",
    "hard_permutation",
    "is_permutation",
    "order_to_perm_matrix",
    "perm_matrix_to_order",
    "row_error",
    "sinkhorn",
    "tau_schedule",
]

EXP_FLOOR = -80.0  # floor of the max-shifted exponent inside logsumexp
HARD_METHODS = ("hungarian", "argmax", "auto")  # see hard_permutation


# ----------------------------------------------------------------------------- helpers
def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_square(x: torch.Tensor, name: str) -> None:
    if x.dim() < 2 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"{name} must have shape (..., N, N); got {tuple(x.shape)}")


def _lse(x: torch.Tensor, dim: int) -> torch.Tensor:
    """logsumexp over ``dim`` (keepdim), the shifted exponent floored at EXP_FLOOR; no autograd."""
    m = x.amax(dim=dim, keepdim=True)
    return (x - m).clamp_min_(EXP_FLOOR).exp_().sum(dim=dim, keepdim=True).log_().add_(m)


def row_error(P: torch.Tensor) -> torch.Tensor:
    """Max |row sum - 1| per matrix. P (..., N, N) -> (...,)."""
    return (P.sum(dim=-1) - 1.0).abs().amax(dim=-1)


def _check_mask(log_alpha: torch.Tensor, mask: torch.Tensor) -> None:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != log_alpha.shape[:-1]:
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor of shape {tuple(log_alpha.shape[:-1])}; got {got}")


def _check_finite(log_alpha: torch.Tensor, mask: torch.Tensor | None) -> None:
    """ValueError unless every entry of log_alpha (..., N, N) that ``mask`` keeps is finite."""
    if mask is None and bool(torch.isfinite(log_alpha.detach().sum())):  # one pass, one host sync
        return  # a NaN or an infinite entry makes the sum non-finite; so may an overflow: exact check
    bad = ~torch.isfinite(log_alpha.detach())  # (..., N, N)
    if mask is not None:
        bad &= mask[..., :, None] & mask[..., None, :]
    if bool(bad.any()):  # one host sync on CUDA
        where = bad.nonzero()
        first = tuple(where[0].tolist())
        kept = " where mask keeps it (real rows and columns)" if mask is not None else ""
        raise ValueError(
            f"log_alpha must be finite{kept}; entry {first} is {float(log_alpha.detach()[first])} "
            f"({where.shape[0]} non-finite entries). Pad with mask= (entries in padded rows and "
            f"columns may be anything, e.g. -inf); forbid a pair with a large finite negative "
            f"score such as -1e4, not -inf"
        )


def _apply_mask(log_alpha: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Padded rows/columns become an identity block, real-to-padded entries -inf."""
    _check_mask(log_alpha, mask)
    n = log_alpha.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=log_alpha.device)  # (N, N)
    pair = mask[..., :, None] & mask[..., None, :]  # (..., N, N)
    pad_diag = eye & ~mask[..., :, None]  # (..., N, N)
    fill = torch.zeros((), dtype=log_alpha.dtype, device=log_alpha.device)
    neg_inf = torch.full((), -math.inf, dtype=log_alpha.dtype, device=log_alpha.device)
    return torch.where(pair, log_alpha, torch.where(pad_diag, fill, neg_inf))


# ----------------------------------------------------------------------------- Sinkhorn
def _iterate(la, n_iters, tol, check_every):
    """The matrix-form loop ``x -= lse_rows(x); x -= lse_cols(x)`` (no autograd).

    la (..., N, N) -> (log P (..., N, N), cumulative row / column normalisers as lists of
    (..., N) float64 tensors, last row error or None).
    """
    x = la.detach().clone()
    r_cum = torch.zeros(la.shape[:-1], dtype=torch.float64, device=la.device)  # (..., N)
    c_cum = torch.zeros_like(r_cum)
    rs, cs, err = [], [], None
    for it in range(1, n_iters + 1):
        for dim in (-1, -2):
            lse = _lse(x, dim)
            x.sub_(lse)
            if dim == -1:
                r_cum = r_cum + lse.squeeze(-1)
                rs.append(r_cum)
            else:
                c_cum = c_cum + lse.squeeze(-2)
                cs.append(c_cum)
        if tol is not None and (it % check_every == 0 or it == n_iters):
            err = float(row_error(x.detach().exp()).max())
            if err < tol:
                break
    return x, rs, cs, err


class _Stabilised:
    """Sinkhorn in scaling form with log-domain absorption: the CPU path of :func:`sinkhorn`.

    The iterate is ``log P = la - R[:, None] - C[None, :]`` with float64 potentials R
    (rows) and C (columns), exactly the cumulative normalisers of the matrix loop. With a
    kernel ``K = exp(la - Ra - Ca)`` for reference potentials (Ra, Ca) close to (R, C),
    a half-step is one matrix-vector product, ``R_i = Ra_i + log sum_j K_ij exp(Ca_j -
    C_j)`` (Schmitzer 2019, "Stabilized sparse scaling algorithms"): the N x N
    exponentials are paid only when K is rebuilt.

    * Entries of K and of the scaling vector are floored at ``exp(floor)`` (-40 in
      float32, so no product is a slow denormal; -300 in float64). That changes a sum by
      less than ``2 e N exp(floor)`` (K <= e), so every row whose sum is not at least
      ``1 / eps`` times that (eps = the dtype's resolution) is recomputed in the log
      domain from ``la``; when more than ``_REBUILD`` of the rows needed it, K is
      rebuilt at the new potentials.
    * The references are the potentials rounded to a power-of-two grid on which
      ``Ra_i + Ca_j`` is exact in the working dtype, so ``la - (Ra_i + Ca_j)`` is
      rounded once, relative to the result: large potentials (low tau) cost no digits.
    * The checks read values on the host, free on CPU; on CUDA :func:`sinkhorn` runs the
      matrix loop instead, which has no host sync.
    """

    _REBUILD = 0.1  # fraction of rows recomputed in the log domain above which K is rebuilt
    MIN_ELEMENTS = 32768  # B * N * N from which this path beats the matrix loop (measured, 1 thread)

    def __init__(self, la: torch.Tensor):  # la (B, N, N) float32 / float64
        self.dt = la.dtype
        self.floor = -40.0 if la.dtype == torch.float32 else -300.0
        n = la.shape[-1]
        self.min_log_sum = 1.0 + math.log(2 * n) + self.floor - math.log(torch.finfo(la.dtype).eps)
        # work on la minus its row maxima (one exact-as-possible subtraction per entry): P does
        # not change, and the potentials stay small next to la (1e30 + log 7 is 1e30 in float64)
        m = la.amax(dim=-1, keepdim=True)  # (B, N, 1)
        self.la, self.la_t = torch.sub(la, m), None
        self.shift = m.squeeze(-1).double()  # (B, N): potentials of la = these + shift
        k = self.la.clamp_min(self.floor).exp_()  # first row step
        s = k.sum(dim=-1, keepdim=True)
        self.K = k.div_(s)  # rows sum to one
        self.R0 = s.log().double().squeeze(-1)  # (B, N)
        self.ref = {-1: self.R0, -2: torch.zeros_like(self.R0)}  # {-1: Ra, -2: Ca}

    def _difference(self, R: torch.Tensor, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``la - Ra_i - Ca_j`` (B, N, N) in the working dtype with one rounding, and (Ra, Ca)."""
        bits = 24 if self.dt == torch.float32 else 53  # significand bits
        big = float(R.abs().amax()) + float(C.abs().amax()) + 1.0
        grid = 2.0 ** (math.ceil(math.log2(big)) + 1 - bits)
        if grid > 0.5:  # potentials beyond float32's resolution: subtract in float64
            return torch.sub(self.la, R.unsqueeze(-1)).sub_(C.unsqueeze(-2)).to(self.dt), R, C
        Ra, Ca = torch.round(R / grid) * grid, torch.round(C / grid) * grid
        t = Ra.to(self.dt).unsqueeze(-1) + Ca.to(self.dt).unsqueeze(-2)  # exact on the grid
        return torch.sub(self.la, t, out=t), Ra, Ca

    def _rebuild(self, R: torch.Tensor, C: torch.Tensor) -> None:
        x, Ra, Ca = self._difference(R, C)
        self.K = x.clamp_min_(self.floor).exp_()  # K <= e: the references are within half a grid step
        self.ref = {-1: Ra, -2: Ca}

    def step(self, dim: int, other: torch.Tensor) -> torch.Tensor:
        """Potential along ``dim`` (-1 rows, -2 columns) given the other one, exact per row."""
        d = self.ref[-2 if dim == -1 else -1] - other  # (B, N) log scaling of the other side
        m = d.amax(dim=-1, keepdim=True)
        w = (d - m).to(self.dt).clamp_min_(self.floor).exp_()  # (B, N), max 1
        k = self.K.transpose(-1, -2) if dim == -1 else self.K
        log_s = torch.bmm(w.unsqueeze(-2), k).squeeze(-2).double().log()  # (B, N)
        new = self.ref[dim] + m + log_s
        bad = ~(log_s >= self.min_log_sum)
        n_bad = int(bad.sum())
        if n_bad:
            b, i = bad.nonzero(as_tuple=True)
            if dim == -1:
                lines = self.la[b, i]  # (n_bad, N)
            else:
                if self.la_t is None:
                    self.la_t = self.la.transpose(-1, -2).contiguous()
                lines = self.la_t[b, i]
            new[b, i] = _lse(torch.sub(lines, other[b]), -1).squeeze(-1)  # float64
            if n_bad > self._REBUILD * bad.numel():
                self._rebuild(*((new, other) if dim == -1 else (other, new)))
        return new

    def log_p(self, R: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        x, Ra, Ca = self._difference(R, C)
        return x.sub_((R - Ra).to(self.dt).unsqueeze(-1)).sub_((C - Ca).to(self.dt).unsqueeze(-2))


def _iterate_scaling(la, n_iters, tol, check_every):
    """Same contract as :func:`_iterate`, in scaling form (:class:`_Stabilised`)."""
    shape = la.shape
    st = _Stabilised(la.detach().reshape(-1, *shape[-2:]))
    R, C = st.R0, None
    rs, cs, err = [], [], None
    for it in range(1, n_iters + 1):
        if R is None:
            R = st.step(-1, C)
        rs.append(R)
        C = st.step(-2, R)
        cs.append(C)
        R_done, R = R, None
        if tol is not None and (it % check_every == 0 or it == n_iters):
            R = st.step(-1, C)  # next row normaliser: row sums of P are exp(R - R_done)
            err = float(torch.expm1(R - R_done).abs().amax())
            if err < tol:
                break
    log_p = st.log_p(R_done, C).reshape(shape)
    batch = shape[:-1]
    return log_p, [(r + st.shift).reshape(batch) for r in rs], [c.reshape(batch) for c in cs], err


def _forward(la, n_iters, tol, check_every):
    """The no-autograd loop: scaling form on CPU for all but small inputs, the sync-free matrix
    loop elsewhere (below ``_Stabilised.MIN_ELEMENTS`` entries its fixed cost per half-step,
    about 20 vector operations, exceeds the matrix loop's)."""
    if la.device.type == "cpu" and la.numel() >= _Stabilised.MIN_ELEMENTS:
        return _iterate_scaling(la, n_iters, tol, check_every)
    return _iterate(la, n_iters, tol, check_every)


class _SinkhornFunction(torch.autograd.Function):
    """log P from log_alpha, saving only the per-iteration normaliser vectors (O(T N))."""

    @staticmethod
    def forward(ctx, log_alpha, n_iters, tol, check_every, info):  # log_alpha (..., N, N)
        log_p, rs, cs, info["err"] = _forward(log_alpha, n_iters, tol, check_every)
        ctx.save_for_backward(log_alpha, torch.stack(rs), torch.stack(cs))  # (T, ..., N)
        return log_p

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_log_p):  # g_log_p (..., N, N)
        # Two N x N work buffers, reused for every step (fresh N x N temporaries cost a page-
        # faulting allocation each on CPU), and the row / column sums as matrix-vector products.
        log_alpha, rs, cs = ctx.saved_tensors
        rs, cs = rs.to(log_alpha.dtype), cs.to(log_alpha.dtype)
        grad = g_log_p.clone()  # d/d log_alpha of log P = log_alpha - r_T - c_T
        g_r_last = -g_log_p.sum(dim=-1)  # (..., N) gradient w.r.t. r_T
        g_c = -g_log_p.sum(dim=-2)  # (..., N) gradient w.r.t. c_T
        shifted = torch.empty_like(log_alpha)  # (..., N, N) log_alpha - r_t
        w = torch.empty_like(log_alpha)  # (..., N, N) weights of one half-step
        for t in range(rs.shape[0] - 1, -1, -1):
            torch.sub(log_alpha, rs[t].unsqueeze(-1), out=shifted)
            # c_t = lse_i(log_alpha - r_t): weights are the column-normalised matrix
            torch.sub(shifted, cs[t].unsqueeze(-2), out=w).clamp_min_(EXP_FLOOR).exp_()
            grad.addcmul_(w, g_c.unsqueeze(-2))
            g_r = torch.matmul(g_c.unsqueeze(-2), w.mT).squeeze(-2).neg_()  # (..., N) = -w @ g_c
            if t == rs.shape[0] - 1:
                g_r += g_r_last
            # r_t = lse_j(log_alpha - c_{t-1}): weights are the row-normalised matrix
            if t > 0:
                torch.sub(shifted, cs[t - 1].unsqueeze(-2), out=w)
            else:
                w.copy_(shifted)
            w.clamp_min_(EXP_FLOOR).exp_()
            grad.addcmul_(w, g_r.unsqueeze(-1))
            g_c = torch.matmul(g_r.unsqueeze(-2), w).squeeze(-2).neg_()  # (..., N)
        return grad, None, None, None, None


def sinkhorn(
    log_alpha: torch.Tensor,
    n_iters: int = 50,
    tol: float | None = None,
    check_every: int = 10,
    mask: torch.Tensor | None = None,
    return_log: bool = False,
    check_finite: bool = True,
) -> torch.Tensor:
    """Log-domain Sinkhorn operator S(log_alpha) (Mena et al. 2018; Algorithm 2, line 11).

    Args:
        log_alpha: (..., N, N) scores, typically ``(S + G) / tau``. Half precision is
            upcast to float32; float64 stays float64. Every entry must be finite, except
            in the rows and columns ``mask`` pads (which it replaces; an attention key
            mask puts -inf there): NaN or +inf have no meaning as scores, and -inf ("this
            pair is forbidden") is refused too, because a row or column of -inf has no
            normalisation (NaN) and forbidden pairs can leave no permutation at all, so
            the iteration would not converge. Pad with ``mask``; to forbid a pair, give
            it a large finite negative score (-1e4: its weight is below float resolution,
            and exactly 0 in P).
            N = 0 (and an empty batch) gives an empty result of the same shape.
        n_iters: maximum number of (row, column) iterations, >= 1.
        tol: if given, the row error (max |row sum - 1|) is checked every ``check_every``
            iterations and the loop stops below ``tol``; a warning is issued when
            ``n_iters`` ends first. ``None`` runs exactly ``n_iters``, with no host syncs
            on CUDA (the CPU path reads its exactness checks on the host, which costs
            nothing there).
        check_every: iterations between convergence checks (only with ``tol``).
        mask: optional (..., N) bool, True = real token. Padded positions map to
            themselves (identity block) and never mix with real ones.
        return_log: return ``log P`` instead of ``P``.
        check_finite: raise ValueError on non-finite ``log_alpha`` (see above). On CUDA
            the check is one host sync; ``False`` keeps a ``tol=None`` call sync-free, and
            non-finite input then gives NaN (matrix loop) or an error (CPU scaling form).

    Returns:
        P (..., N, N) (or log P) in float32/float64; columns sum to one after the last
        step, rows within the row error.
    """
    if not isinstance(log_alpha, torch.Tensor):
        raise ValueError(f"log_alpha must be a torch.Tensor; got {type(log_alpha).__name__}")
    _check_square(log_alpha, "log_alpha")
    if not isinstance(n_iters, int) or n_iters < 1:
        raise ValueError(f"n_iters must be an int >= 1; got {n_iters!r}")
    if tol is not None and not tol > 0:
        raise ValueError(f"tol must be > 0 or None; got {tol!r}")
    if not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every must be an int >= 1; got {check_every!r}")
    la = log_alpha.to(_compute_dtype(log_alpha))
    if mask is not None:
        _check_mask(la, mask)
    if check_finite:
        _check_finite(la, mask)  # before masking, which puts -inf in on purpose
    if la.numel() == 0:  # N = 0 or an empty batch: nothing to normalise
        return la.clone() if return_log else la.exp()
    if mask is not None:
        la = _apply_mask(la, mask)

    if la.requires_grad and torch.is_grad_enabled():
        info: dict = {}
        log_p = _SinkhornFunction.apply(la, n_iters, tol, check_every, info)
        err = info["err"]
    else:
        log_p, _, _, err = _forward(la, n_iters, tol, check_every)
    if tol is not None and err >= tol:
        warnings.warn(
            f"sinkhorn did not converge: row error {err:.3g} >= tol={tol} after "
            f"n_iters={n_iters} iterations (lower tau needs more iterations)",
            RuntimeWarning,
            stacklevel=2,
        )
    return log_p if return_log else _exp_floored(log_p)


def _exp_floored(log_p: torch.Tensor) -> torch.Tensor:
    """exp with entries below EXP_FLOOR set to exactly 0 (|error| < 2e-35, no slow denormal exps)."""
    if log_p.requires_grad:
        return log_p.exp()
    return log_p.masked_fill(log_p < EXP_FLOOR, -math.inf).exp_()


# ----------------------------------------------------------------------------- Gumbel
def gumbel_from_uniform(u: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``-log(-log U) * scale`` with U clamped into the open interval; (...) -> (...), finite."""
    dt = _compute_dtype(u)
    u = u.to(dt)
    fi = torch.finfo(dt)
    u = u.clamp(fi.tiny, 1.0 - fi.eps / 2)  # largest float below 1 is 1 - eps/2
    return -torch.log(-torch.log(u)) * scale


def gumbel_noise(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    scale: float = 1.0,
) -> torch.Tensor:
    """Standard Gumbel samples of ``shape`` times ``scale`` (0 = deterministic zeros).

    Sampled in float32 (float64 if asked), then cast to ``dtype``; finite by construction.
    """
    if not scale >= 0:
        raise ValueError(f"scale must be >= 0; got {scale!r}")
    sample_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    if scale == 0:
        return torch.zeros(shape, device=device, dtype=dtype)
    u = torch.rand(shape, generator=generator, device=device, dtype=sample_dtype)
    return gumbel_from_uniform(u, scale).to(dtype)


# ----------------------------------------------------------------------------- permutations
def order_to_perm_matrix(order: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """order (..., N) gather indices -> perm_matrix (..., N, N) with P[..., j, order[j]] = 1."""
    n = order.shape[-1]
    return torch.nn.functional.one_hot(order.long(), n).to(dtype)


def perm_matrix_to_order(perm_matrix: torch.Tensor) -> torch.Tensor:
    """perm_matrix (..., N, N) -> order (..., N): the column of each row's 1 (row argmax)."""
    _check_square(perm_matrix, "perm_matrix")
    return perm_matrix.argmax(dim=-1)


def is_permutation(perm_matrix: torch.Tensor) -> torch.Tensor:
    """(..., N, N) -> bool (...,): entries exactly 0/1 and every row and column sums to 1."""
    _check_square(perm_matrix, "perm_matrix")
    p = perm_matrix.detach()
    binary = ((p == 0) | (p == 1)).flatten(-2).all(dim=-1)
    rows = (p.sum(dim=-1) == 1).all(dim=-1)
    cols = (p.sum(dim=-2) == 1).all(dim=-1)
    return binary & rows & cols


def _hungarian_orders(P: torch.Tensor) -> torch.Tensor:
    """MAP orders maximising sum_j log P[j, order[j]]; P (M, N, N) -> order (M, N)."""
    tiny = torch.finfo(torch.float64).tiny
    log_p = P.detach().to("cpu", torch.float64).clamp_min(tiny).log().numpy()
    orders = np.empty(log_p.shape[:2], dtype=np.int64)
    for m in range(log_p.shape[0]):
        rows, cols = linear_sum_assignment(log_p[m], maximize=True)
        orders[m, rows] = cols
    return torch.from_numpy(orders).to(P.device)


def hard_permutation(
    P: torch.Tensor, method: str = "hungarian", return_valid: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Hard permutation with a straight-through gradient: ``P_hard + (P - P.detach())``.

    Args:
        P: (..., N, N) soft permutation.
        method: ``"hungarian"`` (scipy ``linear_sum_assignment`` maximising log P; always
            a permutation, the optimal one), ``"argmax"`` (the authors' row argmax; may
            repeat columns) or ``"auto"`` (argmax, Hungarian only where argmax fails).
        return_valid: also return a bool (...,) tensor telling which results are
            permutations (always True for ``"hungarian"`` and ``"auto"``).

    Returns:
        P_hard (..., N, N) with forward values exactly 0/1 and the gradient of P;
        with ``return_valid``, the tuple (P_hard, valid).
    """
    _check_square(P, "P")
    if method not in HARD_METHODS:
        raise ValueError(f"method must be one of {HARD_METHODS}; got {method!r}")
    n = P.shape[-1]
    flat = P.detach().reshape(-1, n, n)  # (M, N, N)
    if method == "hungarian":
        order = _hungarian_orders(flat)  # (M, N)
    else:
        order = flat.argmax(dim=-1)  # (M, N)
        counts = torch.zeros_like(order).scatter_add_(1, order, torch.ones_like(order))
        ok = (counts == 1).all(dim=-1)  # (M,)
        if method == "auto" and not bool(ok.all()):
            bad = (~ok).nonzero().squeeze(-1)
            order[bad] = _hungarian_orders(flat[bad])
            ok = torch.ones_like(ok)
    valid = (torch.ones(flat.shape[0], dtype=torch.bool, device=P.device)
             if method == "hungarian" else ok)
    p_hard = order_to_perm_matrix(order, P.dtype).reshape(P.shape)  # (..., N, N)
    out = p_hard + (P - P.detach())
    if return_valid:
        return out, valid.reshape(P.shape[:-2])
    return out


# ----------------------------------------------------------------------------- schedule
def tau_schedule(step: int, total_steps: int, tau_start: float, tau_end: float) -> float:
    """The paper's cosine temperature (Section 3.2): tau_end + (tau_start - tau_end)(1 + cos(pi s/S))/2.

    ``step`` is a non-negative int (a float, NaN included, raises ValueError). Returns
    ``tau_end`` for ``step >= total_steps``.
    """
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an int >= 1; got {total_steps!r}")
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise ValueError(f"step must be a non-negative int; got {step!r} ({type(step).__name__})")
    if step < 0:
        raise ValueError(f"step must be >= 0; got {step!r}")
    if not (tau_start > 0 and tau_end > 0):
        raise ValueError(f"tau_start and tau_end must be > 0; got tau_start={tau_start!r}, tau_end={tau_end!r}")
    if step >= total_steps:
        return float(tau_end)
    return float(tau_end + 0.5 * (tau_start - tau_end) * (1.0 + math.cos(math.pi * step / total_steps)))
