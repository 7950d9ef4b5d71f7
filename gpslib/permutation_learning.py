"""The permutation-learning experiment of the paper (Section 4.5, Figure 5) and its tests.

The paper trains GPS to output a random target permutation and reports 100% accuracy
within a few steps. In the authors' code that is one fixed batch of random tokens and
one fixed target per batch element, i.e. memorisation. :func:`run_permutation_learning`
reproduces that run with the authors' settings (loss = MSE + cross-entropy + 0.01 *
row entropy; AdamW lr 1e-4, wd 1e-5, cosine LR; grad-norm clip 0.5; batch 4; GPS and its
tau / hard schedule as :class:`gpslib.gps.GPSSettings` holds them) and adds switches for
the ablations and two generalisation tasks the paper did not test:

* ``task="fixed_batch"``: the paper's run (memorise one batch);
* ``task="fixed_perm_fresh_tokens"``: one fixed target order, fresh random tokens every step;
* ``task="sort"``: each token carries a hidden scalar ``s ~ U(0, 1)``; the target order sorts
  the tokens by it (Mena et al. 2018).

The two generalisation tasks add a fixed sinusoidal position code to the tokens: GPS has
no positions of its own and is permutation-equivariant, so without one no target tied to
positions can be expressed. Targets follow :mod:`gpslib.sinkhorn`'s convention:
``target[b, j, order[b, j]] = 1``, ``reordered = target @ tokens``.
"""

from __future__ import annotations

import math

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from gpslib.gps import GPSSettings, GumbelPermutationSinkformer
from gpslib.intervals import mean_ci
from gpslib.parallel import run_in_processes
from gpslib.sinkhorn import hard_permutation, order_to_perm_matrix, perm_matrix_to_order, row_error, tau_schedule

__all__ = [
    "ABLATIONS",
    "TASKS",
    "make_batch",
    "permutation_accuracy",
    "permutation_loss",
    "experiment_runs",
    "run_all_experiments",
    "run_permutation_learning",
    "summarise_seeds",
    "sinusoid_code",
    "sorting_metrics",
]

TASKS = ("fixed_batch", "fixed_perm_fresh_tokens", "sort")


def permutation_loss(
    P: torch.Tensor, target: torch.Tensor, mse_weight: float = 1.0, ce_weight: float = 1.0,
    entropy_weight: float = 0.01, eps: float = 1e-8,
) -> torch.Tensor:
    """The authors' loss: MSE(P, target) + CE of target rows + entropy of P's rows.

    P, target (B, N, N) -> scalar. ``eps`` inside the logs as in their code.
    """
    log_p = torch.log(P + eps)  # (B, N, N)
    loss = P.new_zeros(())
    if mse_weight:
        loss = loss + mse_weight * F.mse_loss(P, target)
    if ce_weight:
        loss = loss + ce_weight * -(target * log_p).sum(-1).mean()
    if entropy_weight:
        loss = loss + entropy_weight * -(P * log_p).sum(-1).mean()
    return loss


def permutation_accuracy(P: torch.Tensor, order: torch.Tensor) -> tuple[float, float, float]:
    """Row-argmax metrics of P (B, N, N) against order (B, N).

    Returns (fraction of rows correct, fraction of sequences exactly right, fraction of
    row argmaxes that are permutations).
    """
    pred = P.detach().argmax(-1)  # (B, N)
    correct = pred == order
    counts = torch.zeros_like(pred).scatter_add_(1, pred, torch.ones_like(pred))
    valid = (counts == 1).all(-1)
    return float(correct.float().mean()), float(correct.all(-1).float().mean()), float(valid.float().mean())


def sorting_metrics(pred: torch.Tensor, order: torch.Tensor) -> dict[str, float]:
    """The three permutation-learning metrics of Mena et al. 2018 and NeuralSort (Grover et al. 2019).

    Args:
        pred: predicted orders (B, N) (gather indices in ``[0, N)``), or hard permutation
            matrices (B, N, N), read through their row argmax (the Hungarian P of
            ``GumbelPermutationSinkformer(..., hard=True)``). A row argmax that repeats an
            item (the authors' ``"argmax"`` hardening) is scored as it is.
        order: target orders (B, N); every row a permutation of ``0..N-1``.

    Returns:
        ``{"exact": ..., "elementwise": ..., "kendall_tau": ...}``: the fraction of sequences
        entirely right (NeuralSort's "exact"; one minus Mena et al.'s "proportion of sequences
        with any error"), the fraction of positions right (NeuralSort's "element-wise", one
        minus Mena et al.'s "proportion wrong"), and Kendall's tau between predicted and true
        rankings, mean over sequences. Kendall's tau is that of the predicted sequence's true
        ranks ``rank[order_pred[j]]`` against the positions ``j`` (tau-b, so a repeated item is
        a tie): for a permutation it equals Kendall's tau between the predicted and the true
        rank of every item; 1 for the right order, -1 for its reversal, NaN for N = 1.
    """
    if order.dim() != 2:
        raise ValueError(f"order must have shape (B, N); got {tuple(order.shape)}")
    pred = pred.detach()
    if pred.dim() == 3:
        pred = perm_matrix_to_order(pred)  # (B, N)
    if pred.shape != order.shape:
        raise ValueError(f"pred must have shape {tuple(order.shape)} or (B, N, N); "
                         f"got {tuple(pred.shape)}")
    b, n = order.shape
    order, pred = order.long().cpu(), pred.long().cpu()
    if not torch.equal(order.sort(-1).values, torch.arange(n).expand(b, n)):
        raise ValueError("order must hold a permutation of 0..N-1 in every row")
    if bool(((pred < 0) | (pred >= n)).any()):
        raise ValueError(f"pred must hold indices in [0, {n}); "
                         f"got values in [{int(pred.min())}, {int(pred.max())}]")
    correct = pred == order  # (B, N)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n).expand(b, n))  # (B, N) per item
    y = rank.gather(1, pred).double()  # (B, N): true rank of the item at each output position
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)  # pairs j < l
    sign = torch.sign(y[:, None, :] - y[:, :, None])[:, upper]  # (B, N(N-1)/2): sign(y_l - y_j)
    pairs = n * (n - 1) / 2
    tau = sign.sum(-1) / torch.sqrt(pairs * (sign != 0).sum(-1).double())  # tau-b, ties only in y
    return {"exact": float(correct.all(-1).double().mean()),
            "elementwise": float(correct.double().mean()),
            "kendall_tau": float(tau.mean()) if n > 1 else math.nan}


def sinusoid_code(n: int, dim: int) -> torch.Tensor:
    """Fixed sinusoidal position code (N, D)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]  # (N, 1)
    freq = torch.exp(-math.log(1e4) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (D/2,)
    code = torch.zeros(n, dim)
    code[:, 0::2] = torch.sin(pos * freq)
    code[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return code


def make_batch(task: str, batch_size: int, n_tokens: int, dim: int, generator: torch.Generator,
               fixed_order: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of ``task``: tokens (B, N, D) and target order (B, N), on the CPU.

    ``fixed_order`` (N,) is the shared target of ``"fixed_perm_fresh_tokens"``.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {task!r}")
    if task == "fixed_batch":
        tokens = torch.randn(batch_size, n_tokens, dim, generator=generator)
        order = torch.stack([torch.randperm(n_tokens, generator=generator) for _ in range(batch_size)])
        return tokens, order
    pos = sinusoid_code(n_tokens, dim)  # (N, D)
    if task == "fixed_perm_fresh_tokens":
        tokens = torch.randn(batch_size, n_tokens, dim, generator=generator) + pos
        return tokens, fixed_order.expand(batch_size, n_tokens).clone()
    s = torch.rand(batch_size, n_tokens, generator=generator)  # hidden scalars (B, N)
    g = torch.Generator().manual_seed(12345)  # fixed value embedding, the same for every batch
    freq = torch.randn(dim, generator=g) * 2 * math.pi * 3
    phase = torch.rand(dim, generator=g) * 2 * math.pi
    tokens = torch.sin(s[..., None] * freq + phase) * math.sqrt(2) + pos  # (B, N, D)
    return tokens, s.argsort(dim=-1)  # ascending: reordered[j] is the j-th smallest


def run_permutation_learning(
    n_tokens: int = 800, dim: int = 2048, gps: GPSSettings | dict | None = None,
    steps: int = 1000, batch_size: int = 4, lr: float = 1e-4, weight_decay: float = 1e-5,
    grad_clip: float = 0.5, mse_weight: float = 1.0, ce_weight: float = 1.0, entropy_weight: float = 0.01,
    task: str = "fixed_batch", eval_every: int | None = None, n_eval: int = 64, seed: int = 0,
    device: str | torch.device = "cpu", progress: bool = True,
) -> pd.DataFrame:
    """Train GPS on ``task`` and return its history, one row per step.

    ``gps``: the Sinkformer and its schedule (:class:`gpslib.gps.GPSSettings` or a dict of
    its fields; the defaults are the paper's: 4 blocks, FFN 4 x dim = 8192 at dim 2048,
    alpha 0.5, 50 Sinkhorn iterations, tau 2.0 -> 0.1, hard after half the steps).

    Columns: step, loss, tau, accuracy (row argmax of the training P against the target),
    valid_fraction (batch elements whose row argmax is a permutation), row_error (max
    |row sum - 1| of the soft P), and eval_accuracy / eval_exact / eval_kendall_tau (the
    element-wise, exact-sequence and Kendall's tau metrics of :func:`sorting_metrics` on
    held-out fresh batches for the generalisation tasks, the training batch for
    ``"fixed_batch"``; noise off, hard P; NaN except every ``eval_every`` steps and the
    last step).
    ``df.attrs`` holds the settings and the final eval metrics.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {task!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1; got {steps!r}")
    gps = gps if isinstance(gps, GPSSettings) else GPSSettings.from_dict(gps)
    settings = {k: v for k, v in locals().items() if k not in ("device", "progress")} | {"gps": gps.to_dict()}
    device = torch.device(device)
    data_gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
    torch.manual_seed(seed)
    model = GumbelPermutationSinkformer(dim, gps).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    fixed_order = torch.randperm(n_tokens, generator=data_gen)
    tokens, order = make_batch(task, batch_size, n_tokens, dim, data_gen, fixed_order)
    eval_gen = torch.Generator().manual_seed(seed + 2)
    eval_batches = [] if task == "fixed_batch" else [
        make_batch(task, batch_size, n_tokens, dim, eval_gen, fixed_order)
        for _ in range(max(1, n_eval // batch_size))
    ]
    eval_every = eval_every or steps

    def evaluate() -> tuple[float, float, float]:  # element-wise, exact, Kendall's tau
        model.eval()
        with torch.no_grad():
            batches = eval_batches or [(tokens, order)]
            scores = [sorting_metrics(model(x.to(device), tau=gps.tau_end, hard=True, noise=False), o)
                      for x, o in batches]
        model.train()
        return tuple(sum(m[k] for m in scores) / len(scores)
                     for k in ("elementwise", "exact", "kendall_tau"))

    rows = []
    for step in tqdm(range(steps), disable=not progress, desc=f"GPS {task}"):
        if task != "fixed_batch" and step > 0:
            tokens, order = make_batch(task, batch_size, n_tokens, dim, data_gen, fixed_order)
        x, o = tokens.to(device), order.to(device)
        target = order_to_perm_matrix(o)  # (B, N, N)
        tau = tau_schedule(step, steps, gps.tau_start, gps.tau_end)
        soft = model(x, tau=tau, noise=True, generator=noise_gen)  # (B, N, N)
        P = hard_permutation(soft, method=gps.hard_method) if step > steps * gps.hard_after else soft
        loss = permutation_loss(P, target, mse_weight, ce_weight, entropy_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=grad_clip)
        opt.step()
        sched.step()
        acc, _, valid = permutation_accuracy(P, o)
        row = {"step": step, "loss": float(loss.detach()), "tau": tau, "accuracy": acc, "valid_fraction": valid,
               "row_error": float(row_error(soft.detach()).max()),
               "eval_accuracy": math.nan, "eval_exact": math.nan, "eval_kendall_tau": math.nan}
        if (step + 1) % eval_every == 0 or step == steps - 1:
            row["eval_accuracy"], row["eval_exact"], row["eval_kendall_tau"] = evaluate()
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs.update(settings=settings, final_eval_accuracy=rows[-1]["eval_accuracy"],
                    final_eval_exact=rows[-1]["eval_exact"],
                    final_eval_kendall_tau=rows[-1]["eval_kendall_tau"])
    return df


# name -> overrides of run_permutation_learning for the notebook's ablations
ABLATIONS: dict[str, dict] = {
    "ours": {},
    "authors_clamped_sinkhorn": {"gps": {"sinkhorn_impl": "authors", "hard_method": "argmax"}},
    "ce_only": {"mse_weight": 0.0, "entropy_weight": 0.0},
    "mse_only": {"ce_weight": 0.0, "entropy_weight": 0.0},
    "no_noise": {"gps": {"noise_scale": 0.0}},
}


def experiment_runs(settings: dict) -> dict[str, dict]:
    """The runs of notebook 03 for one profile's ``settings`` (``profile_settings("gps", p)``): name -> kwargs.

    ``"ours"`` (Figure 5) and each other name of :data:`ABLATIONS` (the paper's task),
    ``"fixed_perm_fresh_tokens"`` and ``"sort_n{N}"`` for N in ``settings["sort_n_tokens"]``.
    """
    base = {k: settings[k] for k in ("n_tokens", "dim", "steps", "batch_size", "lr")}
    architecture = {k: settings[k] for k in ("ffn_dim", "num_layers", "sinkhorn_iters")}
    runs = {name: {**base, **over, "gps": {**architecture, **over.get("gps", {})}} for name, over in ABLATIONS.items()}
    gen = {**base, "gps": architecture, "steps": settings["gen_steps"], "n_eval": settings["n_eval"],
           "eval_every": max(1, settings["gen_steps"] // 10)}
    runs["fixed_perm_fresh_tokens"] = {**gen, "task": "fixed_perm_fresh_tokens"}
    for n in settings["sort_n_tokens"]:
        runs[f"sort_n{n}"] = {**gen, "task": "sort", "n_tokens": n}
    return runs


def _run(job: tuple[str, dict, int, str]) -> pd.DataFrame:
    _, kwargs, seed, device = job
    return run_permutation_learning(**kwargs, seed=seed, device=device, progress=False)


def run_all_experiments(settings: dict, seeds=(0,), device: str | torch.device = "cpu",
                        workers: int | None = None) -> dict[tuple[str, int], pd.DataFrame]:
    """Every run of :func:`experiment_runs` for every seed: ``(name, seed) -> history``.

    The runs go to single-threaded worker processes (:func:`gpslib.parallel.run_in_processes`;
    one on CUDA, where they run one after the other); each run's history depends only on
    its settings and seed.
    """
    device = str(device)
    workers = 1 if device.startswith("cuda") else workers
    jobs = [(name, kwargs, seed, device) for name, kwargs in experiment_runs(settings).items() for seed in seeds]
    histories = run_in_processes(_run, jobs, workers)
    return {(name, seed): h for (name, _, seed, _), h in zip(jobs, histories)}


def summarise_seeds(runs: dict[tuple[str, int], pd.DataFrame], names, confidence: float = 0.95) -> pd.DataFrame:
    """Per run name, over seeds: final training accuracy, first step at 100% (and in how many seeds),
    final loss, and the held-out metrics (exact, element-wise, Kendall's tau), each a mean with its
    Student-t half-width (``±``)."""
    rows = []
    for name in names:
        seeds = sorted(k for n, k in runs if n == name)
        hs = [runs[(name, k)] for k in seeds]
        first = [h.loc[h["accuracy"] >= 1.0, "step"] for h in hs]
        row = {"run": name, "seeds": len(seeds),
               "reached 100% (seeds)": sum(len(f) > 0 for f in first)}
        for label, values in (
            ("final accuracy", [h["accuracy"].iloc[-1] for h in hs]),
            ("first step at 100%", [float(f.iloc[0]) for f in first if len(f)]),
            ("final loss", [h["loss"].iloc[-1] for h in hs]),
            ("exact", [h.attrs["final_eval_exact"] for h in hs]),
            ("element-wise", [h.attrs["final_eval_accuracy"] for h in hs]),
            ("Kendall's tau", [h.attrs["final_eval_kendall_tau"] for h in hs]),
        ):
            mean, half = mean_ci(values, confidence) if values else (math.nan, math.nan)
            row[label], row[f"{label} ±"] = mean, half
        rows.append(row)
    return pd.DataFrame(rows).set_index("run")
