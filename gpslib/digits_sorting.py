"""Sorting numbers shown as digit images with GPS (paper Section 4.5, Figure 5, on the literature's benchmark).

Figure 5 shows GPS memorising one permutation. The literature measures permutation
learners on a sorting benchmark instead (Mena et al. 2018; NeuralSort, Grover et al.,
ICLR 2019, Table 1): a sequence of ``n`` multi-digit numbers is shown only as images, a
CNN scores every image, a differentiable permutation sorts the sequence, and the whole is
trained end to end from the sorting permutation alone (no digit labels). This module runs
that protocol on the digit images that ship with scikit-learn, with no download:

* :func:`load_digit_pools`: the 1,797 bundled 8x8 digits (``sklearn.datasets.load_digits``),
  split per class into a training pool and a held-out test pool of digit images;
* :func:`compose_numbers` / :func:`sample_sequences`: a number of ``n_digits`` digits is the
  side-by-side concatenation of one random image of each of its digits (8 x 8*n_digits; 8x32
  for four digits, as NeuralSort's 4-digit large-MNIST numbers are 112x28); a sequence
  holds ``n`` distinct numbers drawn uniformly from ``0 .. 10**n_digits - 1``; its target
  ``order`` sorts it ascending (:mod:`gpslib.sinkhorn`'s convention: ``reordered[b, j] =
  images[b, order[b, j]]``);
* :class:`DigitSorter`: a small CNN embeds each number image into a token, a fixed
  sinusoidal position code is added (as in :mod:`gpslib.permutation_learning`'s ``"sort"``
  task: GPS is permutation-equivariant, so without a code no row of P could stand for
  output position ``j``), and :class:`~gpslib.gps.GumbelPermutationSinkformer` turns the
  tokens into P (B, n, n);
* :func:`run_digits_sorting`: one training run (loss :func:`~gpslib.permutation_learning.permutation_loss`,
  temperature :func:`~gpslib.sinkhorn.tau_schedule`), scored on held-out test sequences
  with noise off and the hard Hungarian P by
  :func:`~gpslib.permutation_learning.sorting_metrics` (exact, element-wise, Kendall's tau);
* :func:`run_digits_benchmark` / :func:`digits_sorting_table`: every ``n`` and seed of a
  profile's ``profile_settings("gps", p)["digits"]``, and the table beside NeuralSort's
  published large-MNIST figures (:data:`gpslib.paper.NEURALSORT_TABLE1`), labelled as
  theirs. :data:`PROTOCOL_DIFFERENCES` says what differs between the two tasks.

Choices where the literature leaves room: the numbers of a sequence are distinct, so the
target has no ties; train and test sequences draw on disjoint digit images, and the test
sequences are fixed per ``n`` (seeds vary initialisation, training draws and noise); the
model scored is the last one (no validation split); P is never hardened in training
(:func:`run_digits_sorting` says why); GPS's own settings (alpha 0.5, Gumbel noise, tau
2.0 -> 0.1, the authors' loss) are kept, with 20 Sinkhorn iterations (Mena et al.'s
default) in the ``cpu`` profile and the paper's 50 in ``paper``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from gpslib import paper
from gpslib.gps import GPSSettings, GumbelPermutationSinkformer
from gpslib.intervals import mean_ci
from gpslib.parallel import run_in_processes
from gpslib.permutation_learning import permutation_loss, sinusoid_code, sorting_metrics
from gpslib.sinkhorn import hard_permutation, order_to_perm_matrix, tau_schedule

__all__ = [
    "DIGIT_SIZE",
    "METRICS",
    "PROTOCOL_DIFFERENCES",
    "DigitPools",
    "DigitSorter",
    "compose_numbers",
    "digits_sorting_table",
    "load_digit_pools",
    "run_digits_benchmark",
    "run_digits_sorting",
    "sample_sequences",
]

DIGIT_SIZE = 8  # scikit-learn's bundled digits are 8x8, grey levels 0..16
METRICS = ("exact", "elementwise", "kendall_tau")  # the keys of sorting_metrics, in table order

PROTOCOL_DIFFERENCES = (
    "Ours vs NeuralSort's Table 1 (large-MNIST; their numbers, their task). Images: "
    "scikit-learn's 1,797 bundled 8x8 digits (4-digit numbers are 8x32) vs MNIST's 28x28 "
    "digits (112x28 numbers). Digit pools: about 1,200 training and 600 held-out test "
    "images (a per-class 2/3 : 1/3 split) vs MNIST's 55,000 training, 5,000 validation and "
    "10,000 test images. Training: 600 steps of 16 sequences on one CPU thread (profile "
    "'cpu'; 5,000 of 64 in 'paper') vs 200 epochs of 137 batches of 100 sequences with "
    "Adam at lr 1e-4, the best epoch chosen on validation; no validation or model "
    "selection here, the last step is scored. Model: a 2-layer strided 3x3 CNN (16/32 "
    "channels) whose tokens, with a position code, see each other through GPS's attention "
    f"(cross-entropy + MSE + entropy loss, cosine tau {GPSSettings.tau_start} -> {GPSSettings.tau_end}, "
    "Hungarian at test) vs "
    "their 2-layer 5x5 CNN (32/64 channels, max-pooling) scoring each image on its own "
    "(Gumbel-Sinkhorn: n scores per image form the n x n matrix; NeuralSort: one score "
    "per image; cross-entropy loss, row argmax at test). Numbers: n distinct values per "
    "sequence, sorted ascending, vs independent uniform draws sorted descending. Test "
    "sequences: 500 per n (2,000 in 'paper'), fixed, from held-out digit images only."
)


@dataclass(frozen=True)
class DigitPools:
    """Disjoint training and held-out test pools of 8x8 digit images.

    ``*_images`` (M, 8, 8) float in [0, 1]; ``*_labels`` (M,) long digit classes;
    ``*_source`` (M,) long row indices into ``sklearn.datasets.load_digits()`` (disjoint
    between the pools).
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    train_source: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    test_source: torch.Tensor

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (M, 8, 8), labels (M,)) of ``"train"`` or ``"test"``."""
        if name not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test'; got {name!r}")
        if name == "train":
            return self.train_images, self.train_labels
        return self.test_images, self.test_labels


def load_digit_pools(test_fraction: float = 1 / 3, split_seed: int = 0) -> DigitPools:
    """Split scikit-learn's bundled digits per class into training and held-out test pools.

    Each class's images are shuffled with ``split_seed`` and the first
    ``round(count * test_fraction)`` go to the test pool, so both pools hold every digit.
    """
    from sklearn.datasets import load_digits  # bundled, no download; imported here: ~2 s to import

    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1); got {test_fraction!r}")
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32) / 16.0  # (1797, 8, 8)
    labels = torch.as_tensor(digits.target, dtype=torch.long)  # (1797,)
    g = torch.Generator().manual_seed(split_seed)
    train, test = [], []
    for d in range(10):
        idx = (labels == d).nonzero().squeeze(-1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = round(len(idx) * test_fraction)
        if k < 1 or k >= len(idx):
            raise ValueError(f"test_fraction={test_fraction!r} leaves a pool without digit {d}")
        test.append(idx[:k])
        train.append(idx[k:])
    train_idx, test_idx = torch.cat(train).sort().values, torch.cat(test).sort().values
    return DigitPools(images[train_idx], labels[train_idx], train_idx,
                      images[test_idx], labels[test_idx], test_idx)


def _check_pool(images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.dim() != 3 or images.shape[1:] != (DIGIT_SIZE, DIGIT_SIZE) or labels.shape != images.shape[:1]:
        raise ValueError(f"images must have shape (M, 8, 8) and labels (M,); got {tuple(images.shape)} "
                         f"and {tuple(labels.shape)}")
    missing = sorted(set(range(10)) - set(labels.tolist()))
    if missing:
        raise ValueError(f"the pool has no image of the digits {missing}")


def compose_numbers(
    numbers: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, n_digits: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of ``numbers``: one random pool image per digit, most significant digit left.

    Args:
        numbers: (...,) long, each in ``[0, 10**n_digits)`` (leading zeros are drawn as 0s).
        images: (M, 8, 8) the digit pool; labels: (M,) its classes.
        n_digits: digits per number.
        generator: draws which image of each class is used.

    Returns:
        (number images (..., 8, 8 * n_digits), digit_index (..., n_digits)): the pool row of
        each digit's image, most significant first.
    """
    _check_pool(images, labels)
    if not isinstance(n_digits, int) or n_digits < 1:
        raise ValueError(f"n_digits must be an int >= 1; got {n_digits!r}")
    if numbers.numel() and (int(numbers.min()) < 0 or int(numbers.max()) >= 10 ** n_digits):
        raise ValueError(f"numbers must lie in [0, {10 ** n_digits}); got values in "
                         f"[{int(numbers.min())}, {int(numbers.max())}]")
    by_class = labels.argsort(stable=True)  # (M,): pool rows grouped by digit
    counts = torch.bincount(labels, minlength=10)  # (10,)
    starts = torch.cumsum(counts, 0) - counts  # (10,)
    powers = 10 ** torch.arange(n_digits - 1, -1, -1)  # (n_digits,) most significant first
    digits = numbers.long()[..., None] // powers % 10  # (..., n_digits)
    u = torch.rand(digits.shape, generator=generator)
    digit_index = by_class[starts[digits] + (u * counts[digits]).long()]  # (..., n_digits)
    tiles = images[digit_index]  # (..., n_digits, 8, 8)
    out = tiles.transpose(-3, -2).reshape(*numbers.shape, DIGIT_SIZE, DIGIT_SIZE * n_digits)
    return out, digit_index


def sample_sequences(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int, n: int, n_digits: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``batch_size`` sequences of ``n`` distinct random numbers, shown as images from the pool.

    The numbers of a sequence are a uniform sample without replacement from
    ``0 .. 10**n_digits - 1`` (so the target order has no ties), each shown by
    :func:`compose_numbers`.

    Args:
        images: (M, 8, 8) digit pool; labels: (M,) its classes.

    Returns:
        sequences (B, n, 8, 8 * n_digits), numbers (B, n) long, order (B, n): the target
        that sorts each sequence ascending (``numbers[b, order[b, j]]`` is the j-th smallest).
    """
    if not isinstance(n, int) or not 2 <= n <= 10 ** n_digits:
        raise ValueError(f"n must be an int in [2, 10**n_digits]; got {n!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}")
    keys = torch.rand(batch_size, 10 ** n_digits, generator=generator, dtype=torch.float64)
    numbers = keys.topk(n, dim=-1).indices  # (B, n): n distinct values, uniform, in random order
    sequences, _ = compose_numbers(numbers, images, labels, n_digits, generator)
    return sequences, numbers, numbers.argsort(-1)


class DigitSorter(nn.Module):
    """CNN tokens + position code -> GPS: number images (B, n, 8, 8 * n_digits) -> P (B, n, n).

    The CNN (two 3x3 convolutions of stride 2 with ReLU, then a linear layer) embeds each
    image into a ``dim``-wide token (strides instead of NeuralSort's max-pooling: on one CPU
    thread max-pooling these small maps cost as much as the convolutions, with no gain in
    accuracy measured); a fixed sinusoidal code of the input position is
    added, so row ``j`` of P can stand for output position ``j``. ``gps``: the Sinkformer's
    :class:`~gpslib.gps.GPSSettings`.
    """

    def __init__(self, n_digits: int = 4, dim: int = 32, channels: tuple[int, int] = (16, 32),
                 gps: GPSSettings | None = None):
        super().__init__()
        if not isinstance(n_digits, int) or n_digits < 1:
            raise ValueError(f"n_digits must be an int >= 1; got {n_digits!r}")
        c1, c2 = channels
        self.n_digits, self.dim = n_digits, dim
        self.cnn = nn.Sequential(
            nn.Conv2d(1, c1, 3, stride=2, padding=1), nn.ReLU(),  # (c1, 4, 4 * n_digits)
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU(),  # (c2, 2, 2 * n_digits)
            nn.Flatten(), nn.Linear(c2 * 4 * n_digits, dim),
        )
        self.gps = GumbelPermutationSinkformer(dim, gps)

    def tokens(self, sequences: torch.Tensor) -> torch.Tensor:
        """sequences (B, n, 8, 8 * n_digits) -> tokens (B, n, dim), position code included."""
        shape = (DIGIT_SIZE, DIGIT_SIZE * self.n_digits)
        if sequences.dim() != 4 or tuple(sequences.shape[2:]) != shape:
            raise ValueError(f"sequences must have shape (B, n, {shape[0]}, {shape[1]}); "
                             f"got {tuple(sequences.shape)}")
        b, n = sequences.shape[:2]
        x = self.cnn(sequences.reshape(b * n, 1, *shape)).reshape(b, n, self.dim)  # (B, n, dim)
        return x + sinusoid_code(n, self.dim).to(x)

    def forward(self, sequences: torch.Tensor, tau: float = 1.0, hard: bool = False, noise: bool = True,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """sequences (B, n, 8, 8 * n_digits) -> P (B, n, n); ``noise=False, hard=True`` at test."""
        return self.gps(self.tokens(sequences), tau=tau, hard=hard, noise=noise, generator=generator)


def _evaluate(model: DigitSorter, batches, tau: float) -> dict[str, float]:
    """Mean sorting metrics over equal-sized test batches, noise off, hard Hungarian P."""
    model.eval()
    with torch.no_grad():
        scores = [sorting_metrics(model(x, tau=tau, hard=True, noise=False), o) for x, o in batches]
    model.train()
    return {k: sum(s[k] for s in scores) / len(scores) for k in METRICS}


def run_digits_sorting(
    n: int, n_digits: int = 4, steps: int = 600, batch_size: int = 16, dim: int = 32,
    channels: tuple[int, int] = (16, 32), gps: GPSSettings | dict | None = None, lr: float = 3e-3,
    weight_decay: float = 1e-5, grad_clip: float = 5.0, n_test: int = 500, test_batch_size: int = 250, eval_every: int | None = None, seed: int = 0,
    pools: DigitPools | None = None, device: str | torch.device = "cpu", progress: bool = False,
) -> pd.DataFrame:
    """Train a :class:`DigitSorter` to sort ``n`` numbers of ``n_digits`` digits; return its history.

    Each step draws ``batch_size`` fresh training sequences from the training pool; the
    loss is :func:`~gpslib.permutation_learning.permutation_loss` (the authors' MSE +
    cross-entropy + 0.01 * row entropy) of P against the sorting permutation, at the
    cosine temperature :func:`~gpslib.sinkhorn.tau_schedule` (``tau_start`` ->
    ``tau_end`` of ``gps``, :class:`~gpslib.gps.GPSSettings` or a dict of its fields), with
    Gumbel noise; after ``gps.hard_after * steps`` steps P is made hard (straight-through;
    1.0 = never). AdamW with a cosine learning rate, gradient-norm clipping at
    ``grad_clip``. The profiles set a smaller GPS than the paper's (``"gps"`` in their
    ``"digits"`` block).

    The profiles set ``hard_after`` to 1.0 (never), unlike Figure 5's run (half the steps): here the
    straight-through P, whose cross-entropy ``-log(P_hard + 1e-8)`` is ``18.4`` on every
    wrong entry, stalls learning (measured at 300 steps, n = 5: exact 0.14 against 0.49
    without it; n = 9: 0.03 against 0.14).

    The test set is ``n_test`` sequences from the held-out digit images, fixed per ``n``
    (the same for every ``seed``: seeds vary the initialisation, the training draws and the
    noise). It is scored with noise off and the hard Hungarian P at ``tau_end``.

    Returns one row per step: step, loss, tau, train_elementwise (row argmax of the
    training P against the target), and test_exact / test_elementwise / test_kendall_tau
    (NaN except every ``eval_every`` steps and the last). ``df.attrs`` holds the settings,
    the final test metrics (``exact``, ``elementwise``, ``kendall_tau``) and ``seconds``.
    """
    for name, value in (("steps", steps), ("n_test", n_test), ("test_batch_size", test_batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1; got {name}={value!r}")
    if n_test % test_batch_size:
        raise ValueError(f"n_test must be a multiple of test_batch_size; got n_test={n_test!r}, "
                         f"test_batch_size={test_batch_size!r}")
    gps = gps if isinstance(gps, GPSSettings) else GPSSettings.from_dict(gps)
    settings = {k: v for k, v in locals().items() if k not in ("pools", "device", "progress")} | {"gps": gps.to_dict()}
    device = torch.device(device)
    start = time.perf_counter()
    pools = load_digit_pools() if pools is None else pools
    test_gen = torch.Generator().manual_seed(1_000_003 * n_digits + n)  # fixed per (n, n_digits)
    test_batches = []
    for _ in range(n_test // test_batch_size):
        x, _, o = sample_sequences(*pools.split("test"), test_batch_size, n, n_digits, test_gen)
        test_batches.append((x.to(device), o))
    data_gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
    torch.manual_seed(seed)
    model = DigitSorter(n_digits, dim, tuple(channels), gps).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    eval_every = eval_every or steps
    rows = []
    for step in tqdm(range(steps), disable=not progress, desc=f"GPS digits n={n}"):
        x, _, order = sample_sequences(*pools.split("train"), batch_size, n, n_digits, data_gen)
        x, order = x.to(device), order.to(device)
        tau = tau_schedule(step, steps, gps.tau_start, gps.tau_end)
        soft = model(x, tau=tau, noise=True, generator=noise_gen)  # (B, n, n)
        P = hard_permutation(soft, method=gps.hard_method) if step >= steps * gps.hard_after else soft
        loss = permutation_loss(P, order_to_perm_matrix(order, P.dtype))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=grad_clip)
        opt.step()
        sched.step()
        row = {"step": step, "loss": float(loss.detach()), "tau": tau,
               "train_elementwise": float((soft.detach().argmax(-1) == order).double().mean()),
               **{f"test_{k}": math.nan for k in METRICS}}
        if (step + 1) % eval_every == 0 or step == steps - 1:
            row.update({f"test_{k}": v for k, v in _evaluate(model, test_batches, gps.tau_end).items()})
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs.update(settings=settings, seconds=time.perf_counter() - start,
                    **{k: rows[-1][f"test_{k}"] for k in METRICS})
    return df


def _run_one(job: tuple[int, int, dict, str]) -> dict:
    n, seed, settings, device = job
    h = run_digits_sorting(n, seed=seed, device=device, progress=False, **settings)
    return {"n": n, "seed": seed, **{k: h.attrs[k] for k in METRICS}, "seconds": h.attrs["seconds"]}


def run_digits_benchmark(settings: dict, device: str | torch.device = "cpu", workers: int | None = None) -> pd.DataFrame:
    """Every run of the digits benchmark: one row per (n, seed) with its test metrics.

    ``settings`` is a profile's ``profile_settings("gps", profile)["digits"]``: ``n_values``,
    ``seeds`` and the keyword arguments of :func:`run_digits_sorting`. The runs go to
    single-threaded worker processes (:func:`gpslib.parallel.run_in_processes`; one on CUDA).

    Returns columns n, seed, exact, elementwise, kendall_tau, seconds; ``df.attrs["seconds"]``
    is the wall time of the whole benchmark. The ``cpu`` profile (5 n x 3 seeds) measured
    93 s of CPU time with one thread.
    """
    missing = sorted({"n_values", "seeds"} - set(settings))
    if missing:
        raise ValueError(f"settings lacks {missing}; pass profile_settings('gps', profile)['digits']")
    settings = dict(settings)
    n_values, seeds = settings.pop("n_values"), settings.pop("seeds")
    device = str(device)
    start = time.perf_counter()
    jobs = [(n, seed, settings, device) for n in n_values for seed in seeds]
    df = pd.DataFrame(run_in_processes(_run_one, jobs, 1 if device.startswith("cuda") else workers))
    df.attrs["seconds"] = time.perf_counter() - start
    return df


def digits_sorting_table(results: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """The table ``figures/table_gps_digits_sorting``: ours per n beside NeuralSort's (theirs, large-MNIST).

    ``results`` has columns n, seed, exact, elementwise, kendall_tau (one row per run, as
    :func:`run_digits_benchmark` returns). One row per n: for each metric, the mean over
    seeds and the half-width of its Student-t interval (:func:`gpslib.intervals.mean_ci`;
    NaN with one seed), the number of seeds, chance (a uniformly random order: exact 1/n!,
    element-wise 1/n, Kendall's tau 0), then NeuralSort's published Table 1 figures
    for Gumbel-Sinkhorn and Deterministic NeuralSort (:data:`gpslib.paper.NEURALSORT_TABLE1`;
    NaN where they report no such n). ``df.attrs["note"]`` is :data:`PROTOCOL_DIFFERENCES`.

    Example (notebook 03)::

        from gpslib.digits_sorting import digits_sorting_table, run_digits_benchmark
        results = run_digits_benchmark(profile_settings("gps", profile)["digits"])
        table = digits_sorting_table(results)
        print(save_table(table, "table_gps_digits_sorting", profile))
        print(table.attrs["note"])
    """
    missing = sorted({"n", *METRICS} - set(results.columns))
    if missing:
        raise ValueError(f"results lacks the columns {missing}")
    level = f"{round(confidence * 100)}%"
    names = {"exact": "exact", "elementwise": "element-wise", "kendall_tau": "Kendall's tau"}
    rows = {}
    for n, part in results.groupby("n", sort=True):
        row = {}
        for key in METRICS:
            mean, half = mean_ci(part[key].tolist(), confidence)
            row[f"GPS {names[key]}"], row[f"GPS {names[key]} ±{level}"] = mean, half
        row["seeds"] = len(part)
        row["chance exact"], row["chance element-wise"] = 1 / math.factorial(int(n)), 1 / int(n)
        for method, by_metric in paper.NEURALSORT_TABLE1.items():
            for key, values in by_metric.items():
                row[f"NeuralSort Table 1 (large-MNIST): {method} {names[key]}"] = values.get(int(n), math.nan)
        rows[int(n)] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "n"
    table.attrs["note"] = PROTOCOL_DIFFERENCES
    return table
