"""Linear probe: a linear classifier trained on frozen image features, scored on the test split.

:func:`evaluate` returns ``(metrics, details)``: ``metrics`` is ``{"acc1", "acc5",
"mean_per_class_recall"}`` (``acc5`` only with at least 5 classes; plain floats in [0, 1]) and
``details`` says what was chosen and how (the regularisation, the search path, the split sizes).

Two variants (``variant=``, the suite's ``probe`` option):

``"clip"`` (default) -- the CLIP paper's probe (Radford et al. 2021, appendix A.3): multinomial
logistic regression with an L2 penalty on the weights (not on the bias), in scikit-learn's
convention ``min 0.5 * ||W||^2 + C * sum_i CE_i`` so that ``C`` means what it means to
``sklearn.linear_model.LogisticRegression`` (with two classes too: see "Fidelity").  The
solvers live in :mod:`harness.optim`, chosen by size (:func:`harness.optim.choose_solver`):
Newton with the exact Hessian for at most ``optim.NEWTON_MAX_PARAMS`` parameters ``(d + 1) * K``
(0: measured, the preconditioned L-BFGS was faster at every size tried), else full-batch L-BFGS
preconditioned by a Kronecker-factored Hessian approximation (memory 10, strong-Wolfe line
search); both run at most ``max_iter`` iterations and stop when the largest gradient entry of
the per-sample-averaged objective is ``<= tol`` -- scikit-learn's lbfgs criterion -- in torch:
float32 tensors (values and reductions accumulated in float64), on ``device``; the refit of a
small problem then goes on in float64 (see "Fidelity").  ``C`` is searched on the validation
split over ``logspace(-6, 6, 97)`` (8 steps per decade): the coarse grid 1e-6, 1e-4, ..., 1e6,
then a binary refinement (half-widths of 8, 4, 2, 1 grid steps around the best so far).  The chosen ``C`` is refit on train + validation and scored on test.
Ties in validation accuracy keep the incumbent; on the coarse grid, the smaller ``C``.

What makes it fast (same minimiser, the search's fits stop at scikit-learn's criterion; only the
path differs):
each fit is warm-started -- in the refinement from the solutions on both sides (quadratic
interpolation in log C), on the coarse grid from the previous ``C`` -- with the L-BFGS curvature
pairs carried over (exactly re-targeted to the new ``C``), and from cached logits, so that a
start that already meets the tolerance costs one matrix product; a cold start puts the bias at
the log class frequencies; the preconditioner takes out the features' correlation, which is
what made plain L-BFGS crawl on real embeddings (a 48,000 x 32 x 10 search: 343 -> 65
iterations); the logits are class-major, so the softmax runs over ``K`` long rows; where the
logits are small the line search works on ``Z + t U``, so an iteration costs two matrix products
however many trial steps it takes; the search runs as two chains of fits, side by side on CPU
(see :func:`_clip_variant`); the refit starts from the chosen solution with its curvature pairs.

Fidelity: the reference is scikit-learn *converged* -- ``LogisticRegression(C=C, tol=1e-10,
max_iter=100000)`` on the same standardised train + validation features.  Its default
(``tol=1e-4``, ``max_iter=1000``) stops at ``max|grad| <= 1e-4`` of the averaged objective, and
on small problems at large ``C`` (flat, nearly separable) that point can be far from the
optimum: on the demo's digits probes, at the ``C`` chosen, up to 160 % above the optimal
objective and 1.3 points of test accuracy off the converged fit (TinyCLIP-MAD, ``C = 3162``).
A float32 fit stopped at the same criterion was as far off (60 %, 1.8 points the other way), and
float32 cannot get much closer (``max|grad|`` stalls near 1e-6).  So the search's fits stop at
``tol`` (the validation accuracies choose ``C`` as scikit-learn's default fits would), and where
``n * (d + 1) * k <= _POLISH_LIMIT`` the refit continues in float64 to ``max|grad| <=
refit_tol`` (1e-8; a float64 copy of the labelled features, at most 128 MiB by the limit):
then its objective is within 1e-6 (measured: 1e-7 or better) of the converged reference's and
its test predictions are the reference's (tested:
``test_accuracy_equals_converged_sklearn_at_the_chosen_C``; 0.3-0.7 s more for a 48,000 x 32 x
10 problem).  Larger refits stop at ``tol`` in float32 (large problems are better determined:
without the float64 stage the 48,000 x 32 x 10 refit was 1e-6 above the optimal objective and
0.02 point off).  Two classes:
scikit-learn fits one binomial model, whose ``||w||^2`` at the same logit differences is twice
the multinomial ``||W||^2`` (``W = [-w/2, w/2]`` at the optimum), so the probe doubles its penalty
when two classes are present; ``C`` then means what it means there (a multinomial fit at ``C``
is scikit-learn's at ``2 C``: on two-class problems made of the demo's MAD/PAD features the
test accuracy at the chosen ``C`` was up to 5.6 points off scikit-learn's before).

Memory: where a standardised float32 copy of the features (labelled and test, with the bias's
column of ones) would pass ``_COPY_LIMIT`` (256 MB), the probe on CPU makes none: the solver reads
row chunks straight from the caller's arrays (the carved validation split through its index
arrays; memory-mapped arrays stay mapped) and standardises each chunk as it goes
(:class:`harness.optim.StandardizedRows`: the same objective, rows equal to the copy's up to
rounding; a search 5-10 % slower than on the copy at 100,000 x 256 x 100 classes on one
thread, none measurable at 1,000 classes); the mean and deviation come from two chunked
passes.  Below that, and on GPU (the features go to the device anyway), the labelled features
are copied once, standardised, in row chunks from the caller's arrays.  Where ``n x K`` logits
would exceed 256 MB the objective works in row chunks of 4,096 samples and validation
accuracies are counted chunk by chunk, so no ``n x K`` tensor is alive: the peak is the
features plus ``O(chunk x (d + K))`` per search chain plus ``O((d + 1) K)`` per stored solution
and curvature pair (measured at 200,000 x 512 features, 1,000 classes: the features plus
568 MB, against 1,005 MB with the copy).  (The test logits, ``n_test x K``, are made whole for
the metrics.)

Features: standardised per dimension with the mean and standard deviation of the labelled data
(train plus validation; never test) -- the paper used raw features; standardising only rescales
what ``C`` means and makes L-BFGS converge in far fewer iterations.  With no validation data
(``val_fraction=0`` and no ``val_x``), ``C = 1`` (scikit-learn's default) without a search.

``"clip-benchmark"`` -- CLIP_benchmark 1.6's probe: L2-normalised features, a ``torch.nn.Linear``
layer trained with AdamW (lr 0.1, cosine schedule without warm-up, 10 epochs, batch 64, cross
entropy, fp32), the weight decay searched on the validation split over ``logspace(-6, 2, 97)``
(coarse grid every 16th value, then refinement half-widths 8, 4, 2, 1; ties go to the first value
evaluated, in CLIP_benchmark's ``[left, best, right]`` order), 0 without a validation split;
refit on train + validation.  Seeded by ``seed`` (init and shuffling use a private generator; the
global RNG is untouched), so results repeat exactly on the same device.

Validation: ``val_x``/``val_y`` when the dataset has a split for it, otherwise
:func:`carve_validation` takes a stratified ``val_fraction`` of train, chosen by ``split_seed``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from harness import optim
from harness.protocols import ProtocolResult
from harness.protocols.zeroshot import classification_metrics

VARIANTS = ("clip", "clip-benchmark")
CARVES = ("stratified", "random")

C_GRID = np.logspace(-6, 6, 97)  # CLIP paper: 1e-6..1e6, 96 log steps (8 per decade)
WD_GRID = np.logspace(-6, 2, 97)  # CLIP_benchmark 1.6's weight decays
COARSE_STEP = 16  # coarse grid: every 16th value (7 values)
_DEFAULT_C = 1.0  # no validation data: scikit-learn's default
_SMALL_PROBLEM = 1 << 28  # n * d * k below which the clip probe runs on one thread
# (a 48,000 x 33 x 10 search on a loaded 2-core machine:
# 1.2 s on one thread, 2.4-5.6 s on two)
_LOGITS_CACHE = 256 << 20  # bytes of search logits kept to warm-start without products
_CACHE_BYTES = 256 << 20  # logits of one fit kept in memory up to this (else chunks)
_PARALLEL_LIMIT = 1 << 30  # bytes of per-chain working set up to which chains run
# side by side (ImageNet-sized problems run one at a time)
_POLISH_LIMIT = 1 << 25  # n * (d + 1) * k up to which the refit is continued in float64
# (a 48,000 x 33 x 10 refit: about 0.3-0.7 s more; ImageNet-sized refits stay in float32)
_COPY_LIMIT = 256 << 20  # bytes of standardised features (labelled + test, float32, with the
# bias column) up to which the clip probe on CPU works on one contiguous copy; above, it reads
# row chunks straight from the caller's arrays (optim.StandardizedRows) and makes no copy


# --------------------------------------------------------------------------------------------
# validation carve-out and the regularisation search
# --------------------------------------------------------------------------------------------


def carve_validation(
    labels, val_fraction: float = 0.2, seed: int = 0, *, carve: str = "stratified"
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices ``0..N-1`` into ``(train_idx, val_idx)``, stratified and deterministic.

    Each class with ``n_c >= 2`` samples gives ``min(round_half_up(val_fraction * n_c), n_c - 1)``
    of them, drawn by ``numpy.random.default_rng(seed)``, to validation; a class with a single
    sample stays in train.  Both index arrays are sorted ascending.  ``val_fraction`` must be in
    ``[0, 1)``; 0 gives an empty validation set.

    ``carve="random"`` is CLIP_benchmark 1.6's ``--val_proportion`` carve-out instead:
    ``torch.utils.data.random_split(train, [1 - val_fraction, val_fraction])`` -- not
    stratified -- with a ``torch.Generator`` seeded by ``seed`` (CLIP_benchmark uses the global
    RNG); the index arrays are sorted.
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {y.shape}")
    vf = float(val_fraction)
    if not 0.0 <= vf < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if carve not in CARVES:
        raise ValueError(f"carve must be one of {', '.join(map(repr, CARVES))}, got {carve!r}")
    if carve == "random":
        if vf == 0.0:
            return np.arange(y.size, dtype=np.int64), np.zeros(0, dtype=np.int64)
        g = torch.Generator().manual_seed(int(seed))
        order: Any = range(y.size)
        tr, va = torch.utils.data.random_split(order, [1.0 - vf, vf], generator=g)
        return (
            np.sort(np.asarray(tr.indices, dtype=np.int64)),
            np.sort(np.asarray(va.indices, dtype=np.int64)),
        )
    rng = np.random.default_rng(int(seed))
    val = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        k = min(math.floor(vf * members.size + 0.5), members.size - 1)
        perm = rng.permutation(members.size)
        if k > 0:
            val.append(members[perm[:k]])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    mask = np.ones(y.size, dtype=bool)
    mask[val_idx] = False
    return np.flatnonzero(mask).astype(np.int64), val_idx.astype(np.int64)


def peak_search(
    n_grid: int,
    score: Callable[[int], float] | None = None,
    *,
    batch: Callable[[list[int]], list[float]] | None = None,
    coarse_step: int = COARSE_STEP,
    ties: str = "incumbent",
) -> tuple[int, list[tuple[int, float]]]:
    """Coarse grid + binary refinement over grid indices ``0..n_grid-1`` maximising ``score``.

    Coarse: indices ``0, coarse_step, 2*coarse_step, ...`` (the last index included).  Then for
    half-widths ``coarse_step // 2, // 4, ..., 1``: score ``best - w`` and ``best + w`` (clipped
    to the grid) and move to the best of the three.  ``score`` is called once per distinct index.
    ``ties="incumbent"`` keeps the current best on a tie (the first on the coarse grid);
    ``ties="first"`` is CLIP_benchmark's rule: the first maximal in ``[left, best, right]`` order.
    ``batch(indices) -> scores``, when given instead of ``score``, receives each stage's new
    indices at once (the coarse grid, then each ``[left, right]`` pair) -- so that a caller can
    compute them together; the search is the same.
    Returns ``(best_index, [(index, score), ...])`` in evaluation order.
    """
    if ties not in ("incumbent", "first"):
        raise ValueError(f"ties must be 'incumbent' or 'first', got {ties!r}")
    if (score is None) == (batch is None):
        raise ValueError("give exactly one of score and batch")
    cache: dict[int, float] = {}
    history: list[tuple[int, float]] = []

    def ensure(indices: list[int]) -> None:
        new = [i for i in dict.fromkeys(indices) if i not in cache]
        if not new:
            return
        if batch is not None:
            values = batch(new)
        else:
            assert score is not None
            values = [score(i) for i in new]
        for i, v in zip(new, values):
            cache[i] = float(v)
            history.append((i, cache[i]))

    coarse = list(range(0, n_grid, coarse_step))
    if coarse[-1] != n_grid - 1:
        coarse.append(n_grid - 1)
    ensure(coarse)
    best = coarse[0]
    for i in coarse:
        if cache[i] > cache[best]:
            best = i
    w = coarse_step // 2
    while w > 0:
        left, right = max(best - w, 0), min(best + w, n_grid - 1)
        order = [left, best, right] if ties == "first" else [best, left, right]
        ensure([left, right])  # left before right, as CLIP_benchmark
        vals = {i: cache[i] for i in (left, best, right)}
        new = order[0]
        for i in order[1:]:
            if vals[i] > vals[new]:
                new = i
        best = new
        w //= 2
    return best, history


# --------------------------------------------------------------------------------------------
# the "clip" probe: L-BFGS on the multinomial logistic loss, in torch
# --------------------------------------------------------------------------------------------


class _ClipProbe:
    """Fits of one labelled set for many ``C``; solutions are full ``[d + 1, K]`` matrices.

    The solver is chosen by size (:func:`harness.optim.choose_solver`): Newton with the exact
    Hessian for few parameters, L-BFGS otherwise.  Where the logits of the set are small
    (``n * k`` floats within ``_CACHE_BYTES``) the objective keeps them and ``fit`` returns them
    (class-major ``[k, n]``, the present classes), so that a later warm start built from this
    solution can reuse them instead of a pass over ``X``; otherwise it works in row chunks and
    returns ``None``.
    """

    def __init__(
        self,
        X: optim.Rows,
        y: torch.Tensor,
        K: int,
        *,
        max_iter: int,
        tol: float,
        solver: str | None = None,
    ):
        self.classes = torch.unique(y)
        self.K, self.k, self.d1 = K, int(self.classes.numel()), X.shape[1]
        self.absent = torch.ones(K, dtype=torch.bool, device=y.device)
        self.absent[self.classes] = False
        remap = torch.full((K,), -1, dtype=torch.int64, device=y.device)
        remap[self.classes] = torch.arange(self.k, device=y.device)
        cache = 3 * X.shape[0] * self.k * X.element_size() <= _CACHE_BYTES
        self.obj = optim.SoftmaxObjective(X, remap[y], self.k, cache=cache)
        self.solver = solver or optim.choose_solver(self.d1 * self.k)
        self.memory = optim.LbfgsMemory(10)
        self._G_eig: Any = None  # the preconditioner's feature factor (the same for every C)
        self.max_iter, self.tol = max_iter, tol
        self.n_iter = 0
        counts = torch.bincount(remap[y], minlength=self.k).to(X.dtype)
        self._log_prior = counts.log() - counts.log().mean()

    def fit(
        self, C: float, warm: torch.Tensor | None, warm_z: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict, torch.Tensor | None]:
        """Solve for ``C`` from ``warm`` (full matrix; ``warm_z``: its logits here, if known).

        A cold start is ``W = 0`` with the bias at the centred log class frequencies -- the
        optimum of the bias alone, and on the same zero-sum bias subspace that scikit-learn's
        start at zero keeps to (the loss is invariant to a shift of all biases).
        """
        # scikit-learn fits two classes as one binomial model, whose ||w||^2 is twice the
        # multinomial ||W||^2 at the same logit differences (W = [-w/2, w/2] at the optimum):
        # the penalty doubles so that C means the same (present classes, as scikit-learn sees)
        self.obj.lam = (2.0 if self.k == 2 else 1.0) / (C * self.obj.n)
        X = self.obj.X
        if warm is None:
            x0 = torch.zeros(self.k, self.d1, dtype=X.dtype, device=X.device)
            x0[:, -1] = self._log_prior
            warm_z = None
        else:
            x0 = warm[:, self.classes].t().contiguous()
        if not self.obj.cache:
            warm_z = None
        if self.solver == "newton":
            x, info = optim.newton(self.obj, x0.view(-1), max_iter=self.max_iter, tol=self.tol, z0=warm_z)
        else:
            pre = optim.KfacPreconditioner(self.obj, x0.view(-1), G_eig=self._G_eig)
            self._G_eig, self.memory.precond = pre.G_eig, pre
            x, info = optim.lbfgs(
                self.obj, x0.view(-1), self.memory, max_iter=self.max_iter, tol=self.tol, z0=warm_z
            )
        self.n_iter += info["n_iter"]
        full = torch.zeros(self.d1, self.K, dtype=X.dtype, device=X.device)
        full[:, self.classes] = x.view(self.k, self.d1).t()
        return full, info, self.obj.logits

    def logits(self, full: torch.Tensor, X: optim.Rows) -> torch.Tensor:
        """Row-major ``[n, K]`` logits of ``X`` in ``full``'s dtype; absent classes at ``-inf``."""
        if isinstance(X, torch.Tensor) and X.dtype == full.dtype:
            z = X @ full
        else:
            z = torch.empty(X.shape[0], full.shape[1], dtype=full.dtype, device=full.device)
            for s in range(0, X.shape[0], optim.DEFAULT_CHUNK):
                e = min(s + optim.DEFAULT_CHUNK, X.shape[0])
                torch.mm(optim.row_chunk(X, s, e).to(full.dtype), full, out=z[s:e])
        z[:, self.absent] = -math.inf
        return z

    def class_major_logits(self, full: torch.Tensor, X: optim.Rows) -> torch.Tensor:
        """Class-major ``[K, n]`` logits of ``X`` (the layout of the objective's cache)."""
        if isinstance(X, torch.Tensor):
            z = torch.mm(full.t(), X.t())
        else:
            z = torch.empty(full.shape[1], X.shape[0], dtype=full.dtype)
            for s in range(0, X.shape[0], optim.DEFAULT_CHUNK):
                e = min(s + optim.DEFAULT_CHUNK, X.shape[0])
                z[:, s:e] = torch.mm(full.t(), X.rows(s, e).t())
        z[self.absent] = -math.inf
        return z

    def accuracy(self, full: torch.Tensor, X: optim.Rows, y: torch.Tensor) -> float:
        """Top-1 accuracy on ``(X, y)``, computed in row chunks (no ``n x K`` tensor)."""
        hits = 0
        for s in range(0, X.shape[0], optim.DEFAULT_CHUNK):
            e = min(s + optim.DEFAULT_CHUNK, X.shape[0])
            z = optim.row_chunk(X, s, e) @ full
            z[:, self.absent] = -math.inf
            hits += int((z.argmax(dim=1) == y[s:e]).sum())
        return hits / max(y.numel(), 1)


def fit_logistic(
    x,
    y,
    C: float,
    *,
    n_classes: int | None = None,
    max_iter: int = 1000,
    tol: float = 1e-4,
    device: str | torch.device = "cpu",
    solver: str | None = None,
    chunk: int | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One L2-regularised multinomial logistic regression, as the ``clip`` probe solves it.

    Same problem and stopping rule as ``LogisticRegression(C=C, solver="lbfgs", tol=tol,
    max_iter=max_iter)`` on the features as given (no standardisation here; two classes: the
    binomial model's ``C``, see the module's "Fidelity"), in float32 (no float64 continuation).
    Returns ``(weight [D, K], bias [K], info)`` (float32; ``logits = x @ weight + bias``); classes
    without training samples get a bias of ``-inf``.  ``info``: ``n_iter`` (iterations),
    ``n_trials`` (line-search trial steps), ``converged`` (``max|grad| <= tol`` reached),
    ``solver``.  ``solver``: ``"newton"`` or ``"lbfgs"`` (default: chosen by size, see
    :func:`harness.optim.choose_solver`); ``chunk``: work in row chunks of that many samples
    instead of keeping the logits (default: chunks only where the logits would be large).
    """
    if solver not in (None, "newton", "lbfgs"):
        raise ValueError(f"solver must be 'newton' or 'lbfgs', got {solver!r}")
    X = _features(x, "x")
    yy = _labels(y, X.shape[0], "y")
    K = int(n_classes) if n_classes is not None else int(yy.max()) + 1
    if yy.max() >= K:
        raise ValueError(f"labels go up to {int(yy.max())} but n_classes is {K}")
    if not float(C) > 0:
        raise ValueError(f"C must be > 0, got {C!r}")
    Xa = np.empty((X.shape[0], X.shape[1] + 1), dtype=np.float32)
    Xa[:, :-1], Xa[:, -1] = X, 1.0
    dev = torch.device(device)
    probe = _ClipProbe(
        torch.from_numpy(Xa).to(dev),
        torch.from_numpy(yy).to(dev),
        K,
        max_iter=int(max_iter),
        tol=float(tol),
        solver=solver,
    )
    if chunk is not None:
        probe.obj.cache, probe.obj.chunk = False, max(1, int(chunk))
    with torch.no_grad(), _single_thread_on_cpu(dev, Xa.size * K < _SMALL_PROBLEM):
        sol, info, _ = probe.fit(float(C), None)
        sol[-1, probe.absent] = -math.inf
    full = sol.cpu().numpy()
    return np.ascontiguousarray(full[:-1]), full[-1].copy(), info


def _warm_start(solved: list[int], i: int) -> list[tuple[int, float]]:
    """Start for grid index ``i`` as ``[(solved index, weight), ...]``: where solved indices
    lie on both sides (the binary refinement always has them), Lagrange interpolation in log C
    through the three nearest that bracket ``i``; otherwise the nearest (no extrapolation);
    ``[]`` (a cold start) when nothing is solved."""
    lower = sorted(j for j in solved if j < i)
    upper = sorted(j for j in solved if j > i)
    if not (lower and upper):
        return [(lower[-1] if lower else upper[0], 1.0)] if (lower or upper) else []
    nodes = sorted(set(lower[-2:] + upper[:2]), key=lambda j: (abs(j - i), j))[:3]
    if not min(nodes) < i < max(nodes):
        nodes = [lower[-1], upper[0]]
    out = []
    for a in nodes:
        w = 1.0
        for b in nodes:
            if b != a:
                w *= (i - b) / (a - b)
        out.append((a, w))
    return out


def _combine(terms: list[tuple[int, float]], tensors: dict[int, torch.Tensor]):
    """``sum(w * tensors[j])``; ``None`` when there are no terms or a tensor is missing."""
    if not terms or any(j not in tensors for j, _ in terms):
        return None
    (j0, w0), rest = terms[0], terms[1:]
    out = tensors[j0] * w0
    for j, w in rest:
        out.add_(tensors[j], alpha=w)
    return out


@contextlib.contextmanager
def _torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _polish(final: _ClipProbe, full: torch.Tensor, C: float, Xall, yall, K, *, max_iter, tol):
    """The refit continued in float64 from ``full`` until ``max|grad| <= tol`` (or ``max_iter``).

    In float32 the fits cannot get much below ``max|grad|`` of 1e-6: near the optimum of a
    nearly separable problem the residuals ``p - 1`` of well-fit samples and the float32
    products lose what is left to descend, and at large ``C`` the objective is so flat there
    that a fit stopped at scikit-learn's 1e-4 can sit far from the optimum (the demo's
    ``tiny-mad`` digits at C = 3162: 60 % above the optimal objective, 1.8 points of test
    accuracy off).  Small problems only (``_POLISH_LIMIT``): a float64 copy of the labelled
    features, the float32 curvature pairs carried over.
    """
    X64 = Xall.double() if isinstance(Xall, torch.Tensor) else Xall.take(np.arange(Xall.n)).double()
    probe = _ClipProbe(X64, yall, K, max_iter=max_iter, tol=tol)
    probe.memory.pairs = [(s.double(), y.double(), rho) for s, y, rho in final.memory.pairs]
    probe.memory.lam = final.memory.lam
    return probe.fit(C, full.double())[:2]


def _clip_variant(Xall, yall, n_fit, Xtest, K, *, max_iter, tol, have_val, refit_tol=None):
    """The ``clip`` probe's search, refit and test logits.

    The search runs as two chains of fits, each with its own L-BFGS memory and warm starts: the
    coarse grid's lower half ascending from the smallest ``C`` and its upper half ascending
    from the middle (cold), then each refinement level's left and right points.  A fit's start
    depends only on the solutions of earlier stages and of its own chain, so the result is the
    same whether the chains run one after the other or side by side.  On CPU with two or more
    torch threads (and a working set under ``_PARALLEL_LIMIT``) they run side by side, each with
    half the threads: two independent single-threaded solvers keep both cores busy where one
    two-thread solver stalls at OpenMP barriers whenever another process holds a core.
    """
    if isinstance(Xall, torch.Tensor):
        Xtr, Xval = Xall[:n_fit], Xall[n_fit:]
    else:  # row ranges of the caller's arrays (a chunk buffer per thread: chains may share them)
        Xtr, Xval = Xall.slice(0, n_fit), Xall.slice(n_fit, Xall.n)
    ytr, yval = yall[:n_fit], yall[n_fit:]
    details: dict[str, Any] = {}
    n_fits = 0
    memory = warm = warm_z = None
    if have_val:
        probes = [_ClipProbe(Xtr, ytr, K, max_iter=max_iter, tol=tol) for _ in range(2)]
        solutions: dict[int, torch.Tensor] = {}
        train_logits: dict[int, torch.Tensor] = {}  # kept while they fit in _LOGITS_CACHE
        val_logits: dict[int, torch.Tensor] = {}
        keep_logits = (
            probes[0].obj.cache and n_fit * K * Xall.element_size() * len(C_GRID) // 6 <= _LOGITS_CACHE
        )
        owner: dict[int, int] = {}
        threads = torch.get_num_threads()
        rows = n_fit if probes[0].obj.cache else min(n_fit, probes[0].obj.chunk)
        working_set = 4 * rows * K * Xall.element_size()  # logits, direction, trial, residual
        parallel = Xall.device.type == "cpu" and threads >= 2 and working_set <= _PARALLEL_LIMIT

        @torch.no_grad()
        def run_chain(
            c: int, indices: list[int], known: dict[int, torch.Tensor], known_z: dict[int, torch.Tensor]
        ):
            local, local_z, out = dict(known), dict(known_z), []
            for i in indices:
                terms = _warm_start(list(local), i)
                sol, _, z = probes[c].fit(float(C_GRID[i]), _combine(terms, local), _combine(terms, local_z))
                local[i] = sol
                if keep_logits:
                    local_z[i] = z
                if keep_logits:
                    zv = probes[c].class_major_logits(sol, Xval)
                    acc = float((zv.argmax(dim=0) == yval).sum()) / yval.numel()
                else:
                    zv, acc = None, probes[c].accuracy(sol, Xval, yval)
                out.append((i, sol, z if keep_logits else None, zv if keep_logits else None, acc))
            return out

        def batch(indices: list[int]) -> list[float]:
            nonlocal n_fits
            half = len(indices) // 2 if len(indices) > 2 else 1
            chains = [indices[:half], indices[half:]]
            args = (dict(solutions), dict(train_logits))
            if parallel and all(chains):
                with _torch_threads(max(1, threads // 2)), concurrent.futures.ThreadPoolExecutor(2) as pool:
                    results = list(pool.map(run_chain, (0, 1), chains, (args[0],) * 2, (args[1],) * 2))
            else:
                results = [run_chain(c, chain, *args) for c, chain in enumerate(chains)]
            scores = {}
            for c, result in enumerate(results):
                for i, sol, z, zv, acc in result:
                    solutions[i], owner[i], scores[i] = sol, c, acc
                    if z is not None:
                        train_logits[i], val_logits[i] = z, zv
                    n_fits += 1
            return [scores[i] for i in indices]

        best, history = peak_search(len(C_GRID), batch=batch, ties="incumbent")
        C = float(C_GRID[best])
        warm, memory = solutions[best], probes[owner[best]].memory
        if best in train_logits:  # the refit starts at the chosen solution: its logits too
            warm_z = torch.cat([train_logits[best], val_logits[best][probes[0].classes]], dim=1)
        details.update(
            val_acc1=dict(history)[best],
            search=[(float(C_GRID[i]), a) for i, a in history],
            search_iterations=sum(p.n_iter for p in probes),
        )
    else:
        C = _DEFAULT_C
    final = _ClipProbe(Xall, yall, K, max_iter=max_iter, tol=tol)
    same_classes = have_val and torch.equal(final.classes, probes[0].classes)
    if same_classes:
        final.memory = memory  # approximate curvature (train part) to start the refit with
    full, info, _ = final.fit(C, warm, warm_z if same_classes else None)
    n_fits += 1
    details.update(C=C, n_fits=n_fits, final_iterations=info["n_iter"])
    if refit_tol is not None and Xall.shape[0] * Xall.shape[1] * final.k <= _POLISH_LIMIT:
        full, info = _polish(final, full, C, Xall, yall, K, max_iter=max_iter, tol=refit_tol)
        details.update(polish_iterations=info["n_iter"])
    details.update(
        final_converged=bool(info["max_grad"] <= tol),
        final_max_grad=float(info["max_grad"]),
        solver=info["solver"],
        features="standardized",
    )
    return final.logits(full, Xtest), details


# --------------------------------------------------------------------------------------------
# the "clip-benchmark" probe: AdamW on a Linear layer
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _single_thread_on_cpu(device: torch.device, enabled: bool = True):
    """Run torch single-threaded on CPU for the block (then restore the thread count).

    Small tensors are not worth splitting: with two threads each tiny op waits at an OpenMP
    barrier, which on a busy 2-core machine made a batch-64 AdamW step ~300x slower (0.4 ms ->
    125 ms).  Used for the mini-batch probe and for small full-batch problems; one thread also
    makes those results independent of the core count.
    """
    if device.type != "cpu" or not enabled:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_linear(X, y, K, weight_decay, *, lr=0.1, epochs=10, batch_size=64, seed=0):
    g = torch.Generator().manual_seed(int(seed))
    n, d = X.shape
    bound = 1.0 / math.sqrt(d)  # nn.Linear's default init, drawn from our generator
    layer = torch.nn.Linear(d, K).to(X.device)
    with torch.no_grad():
        layer.weight.copy_(torch.empty(K, d).uniform_(-bound, bound, generator=g))
        layer.bias.copy_(torch.empty(K).uniform_(-bound, bound, generator=g))
    opt = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=float(weight_decay))
    per_epoch = math.ceil(n / batch_size)
    total = epochs * per_epoch
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g).to(X.device)
        for i in range(per_epoch):
            step = i + epoch * per_epoch
            for group in opt.param_groups:
                group["lr"] = 0.5 * (1.0 + math.cos(math.pi * step / total)) * lr
            idx = perm[i * batch_size : (i + 1) * batch_size]
            loss = torch.nn.functional.cross_entropy(layer(X[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return layer


def _benchmark_variant(Xall, yall, n_fit, Xtest, K, *, seed, have_val):
    Xtr, ytr = Xall[:n_fit], yall[:n_fit]
    Xval, yval = Xall[n_fit:], yall[n_fit:]
    details: dict[str, Any] = {}
    n_fits = 0
    if have_val:

        def score(i: int) -> float:
            nonlocal n_fits
            layer = _train_linear(Xtr, ytr, K, WD_GRID[i], seed=seed)
            n_fits += 1
            with torch.no_grad():
                pred = layer(Xval).argmax(dim=1)
            return float((pred == yval).sum()) / yval.numel()

        best, history = peak_search(len(WD_GRID), score, ties="first")
        wd = float(WD_GRID[best])
        details.update(val_acc1=dict(history)[best], search=[(float(WD_GRID[i]), a) for i, a in history])
    else:
        wd = 0.0
    layer = _train_linear(Xall, yall, K, wd, seed=seed)
    n_fits += 1
    with torch.no_grad():
        logits = layer(Xtest)
    details.update(weight_decay=wd, n_fits=n_fits, features="l2-normalized")
    return logits, details


# --------------------------------------------------------------------------------------------
# the public entry point
# --------------------------------------------------------------------------------------------


def _features(x, what: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{what} must be [N, D], got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{what} is empty")
    if a.dtype.kind not in "fiu":
        raise ValueError(f"{what} must be numeric, got dtype {a.dtype}")
    for s in range(0, a.shape[0], _PREP_CHUNK):  # in chunks: no n x d temporary
        if not np.all(np.isfinite(a[s : s + _PREP_CHUNK])):
            raise ValueError(f"{what} contains NaN or infinite values")
    return a


def _labels(y, n: int, what: str) -> np.ndarray:
    a = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"{what} must be a 1-D array of {n} labels, got shape {a.shape}")
    if a.dtype.kind == "f" and np.all(a == np.round(a)):
        a = a.astype(np.int64)
    if a.dtype.kind not in "iub":
        raise ValueError(f"{what} must be integer class labels, got dtype {a.dtype}")
    a = a.astype(np.int64)
    if a.size and a.min() < 0:
        raise ValueError(f"{what} must be >= 0, got a label of {int(a.min())}")
    return a


_PREP_CHUNK = 16384


def _gather(parts, extra: int) -> np.ndarray:
    """``concatenate([src[idx] ...])`` as float32 with ``extra`` trailing columns of ones, filled
    in row chunks (no other copy of the features)."""
    n = sum(src.shape[0] if idx is None else idx.size for src, idx in parts)
    d = parts[0][0].shape[1]
    out = np.empty((n, d + extra), dtype=np.float32)
    pos = 0
    for src, idx in parts:
        m = src.shape[0] if idx is None else idx.size
        for s in range(0, m, _PREP_CHUNK):
            e = min(s + _PREP_CHUNK, m)
            out[pos + s : pos + e, :d] = src[s:e] if idx is None else src[idx[s:e]]
        pos += m
    if extra:
        out[:, d:] = 1.0
    return out


def _part_blocks(parts):
    """The rows of ``parts`` (as :func:`_gather` concatenates them) in float32 blocks of
    ``optim.DEFAULT_CHUNK`` rows: views where no cast or gather is needed."""
    for src, idx in parts:
        m = src.shape[0] if idx is None else idx.size
        for s in range(0, m, optim.DEFAULT_CHUNK):
            e = min(s + optim.DEFAULT_CHUNK, m)
            yield np.asarray(src[s:e] if idx is None else src[idx[s:e]], dtype=np.float32)


def _moments_of_parts(parts) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_moments` of the rows of ``parts`` without gathering them all: two passes of
    row blocks (equal to it up to the order of the float64 sums)."""
    n = sum(src.shape[0] if idx is None else idx.size for src, idx in parts)
    total = np.zeros(parts[0][0].shape[1])
    for block in _part_blocks(parts):
        total += block.sum(axis=0, dtype=np.float64)
    mu = total / max(n, 1)
    ss = np.zeros_like(mu)
    for block in _part_blocks(parts):
        dev = np.subtract(block, mu)
        del block  # one block and its float64 deviations alive at a time
        ss += np.square(dev, out=dev).sum(axis=0)
        del dev
    return mu, np.sqrt(ss / max(n, 1))


def _is_all_rows(idx: np.ndarray, src: np.ndarray) -> bool:
    """Whether ``idx`` is ``0, 1, ..., len(src) - 1`` (then ``src[idx]`` is ``src``)."""
    n = src.shape[0]
    return idx.size == n and (
        n == 0 or (int(idx[0]) == 0 and int(idx[-1]) == n - 1 and bool(np.all(np.diff(idx) == 1)))
    )


def _moments(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and (population) standard deviation in float64, in row chunks."""
    mu = a.mean(axis=0, dtype=np.float64)
    ss = np.zeros(a.shape[1])
    for s in range(0, a.shape[0], _PREP_CHUNK):
        ss += np.square(a[s : s + _PREP_CHUNK] - mu).sum(axis=0)
    return mu, np.sqrt(ss / max(a.shape[0], 1))


def _standardize(a: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> None:
    """In place: ``(a[:, :-1] - mu) / sd`` (the last column is the bias's ones)."""
    sd32 = sd.astype(np.float32)
    for s in range(0, a.shape[0], _PREP_CHUNK):
        block = a[s : s + _PREP_CHUNK, :-1]
        np.subtract(block, mu, out=block, casting="unsafe")
        block /= sd32


def _l2_normalize(a: np.ndarray) -> None:
    for s in range(0, a.shape[0], _PREP_CHUNK):
        block = a[s : s + _PREP_CHUNK]
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)


def evaluate(
    train_x,
    train_y,
    test_x,
    test_y,
    val_x=None,
    val_y=None,
    *,
    variant: str = "clip",
    val_fraction: float = 0.2,
    split_seed: int = 0,
    val_carve: str = "stratified",
    clip_benchmark_defaults: bool = False,
    device: str | torch.device = "cpu",
    n_classes: int | None = None,
    max_iter: int = 1000,
    tol: float = 1e-4,
    refit_tol: float | None = 1e-8,
    seed: int = 0,
) -> ProtocolResult:
    """Train a linear probe on ``train`` (+ ``val``), choose its regularisation, score ``test``.

    Arrays are numpy arrays or tensors: features ``[N, D]``, labels ``[N]`` ints in
    ``0..n_classes-1`` (``n_classes`` defaults to the largest label seen + 1).  Without
    ``val_x``/``val_y``, a stratified ``val_fraction`` of train chosen by ``split_seed`` is the
    validation split (see :func:`carve_validation`); ``val_carve="random"`` carves it as
    CLIP_benchmark's ``--val_proportion`` does (``random_split``, not stratified).
    ``clip_benchmark_defaults=True`` (``clip-benchmark`` probe only) is CLIP_benchmark 1.6 run
    without ``--val_split``/``--val_proportion``: no validation split at all (a dataset's own
    is ignored, nothing is carved), weight decay 0, trained on train.  ``max_iter``/``tol`` are
    the ``clip`` probe's solver limits (scikit-learn's meaning) for every fit; where the
    problem is small (``n * (d + 1) * k`` within ``_POLISH_LIMIT``) the refit is then continued
    in float64 to ``max|grad| <= refit_tol`` (``None``: not continued) so that it is the
    optimum, not one of the points that meet ``tol``; ``seed`` seeds the ``clip-benchmark``
    probe.

    Returns ``(metrics, details)``.  ``metrics``: ``acc1``, ``acc5`` (``n_classes >= 5``),
    ``mean_per_class_recall`` as plain floats.  ``details``: ``variant``; the chosen ``C``
    (``clip``) or ``weight_decay`` (``clip-benchmark``); ``val_split`` (``"given"``,
    ``"carved"`` or ``"none"``); ``n_train``, ``n_val``; ``val_acc1`` and ``search`` (a list of
    ``(value, validation acc1)`` in evaluation order) when there was a search; ``n_fits``;
    ``seconds``; for ``clip`` also ``search_iterations``, ``final_iterations`` (the float32
    refit), ``polish_iterations`` (its float64 continuation, where there was one),
    ``final_max_grad`` (``max|grad|`` of the averaged objective at the refit's solution),
    ``final_converged`` (``final_max_grad <= tol``: scikit-learn's criterion met), ``solver``
    (``"newton"`` or ``"lbfgs"``); ``features`` (the preprocessing applied).
    """
    t_start = time.perf_counter()
    if variant not in VARIANTS:
        raise ValueError(
            f"unknown linear probe variant {variant!r}; expected one of "
            + ", ".join(repr(v) for v in VARIANTS)
        )
    if (val_x is None) != (val_y is None):
        raise ValueError("give both val_x and val_y, or neither")
    if int(max_iter) < 1 or not float(tol) > 0:
        raise ValueError(f"max_iter must be >= 1 and tol > 0, got {max_iter!r}, {tol!r}")
    if refit_tol is not None and not float(refit_tol) > 0:
        raise ValueError(f"refit_tol must be > 0 or None, got {refit_tol!r}")
    Xtr = _features(train_x, "train_x")
    ytr = _labels(train_y, Xtr.shape[0], "train_y")
    Xte = _features(test_x, "test_x")
    yte = _labels(test_y, Xte.shape[0], "test_y")
    if Xte.shape[1] != Xtr.shape[1]:
        raise ValueError(f"test_x has dimension {Xte.shape[1]} but train_x has {Xtr.shape[1]}")
    if clip_benchmark_defaults and variant != "clip-benchmark":
        raise ValueError(
            f"clip_benchmark_defaults applies to the 'clip-benchmark' probe only, not {variant!r}"
        )
    if clip_benchmark_defaults:  # CLIP_benchmark 1.6 without --val_split/--val_proportion
        val_x = val_y = None
        val_fraction = 0.0
    if val_x is not None:
        Xva = _features(val_x, "val_x")
        yva = _labels(val_y, Xva.shape[0], "val_y")
        if Xva.shape[1] != Xtr.shape[1]:
            raise ValueError(f"val_x has dimension {Xva.shape[1]} but train_x has {Xtr.shape[1]}")
        val_split = "given"
        parts: list[tuple[np.ndarray, np.ndarray | None]] = [(Xtr, None), (Xva, None)]
    else:
        tr_idx, va_idx = carve_validation(ytr, val_fraction, split_seed, carve=val_carve)
        parts = [(Xtr, tr_idx), (Xtr, va_idx)]
        ytr, yva = ytr[tr_idx], ytr[va_idx]
        val_split = "carved" if va_idx.size else "none"
    seen = max(int(ytr.max()), int(yte.max()), int(yva.max()) if yva.size else 0) + 1
    if n_classes is None:
        K = seen
    else:
        K = int(n_classes)
        if seen > K:
            raise ValueError(f"labels go up to {seen - 1} but n_classes is {K}")
    have_val = yva.size > 0
    n_fit = ytr.size

    clip = variant == "clip"
    dev = torch.device(device)
    labelled = parts if have_val else parts[:1]
    yall = np.concatenate([ytr, yva]) if have_val else ytr
    copy_bytes = (yall.size + Xte.shape[0]) * (Xtr.shape[1] + 1) * 4
    tX: optim.Rows
    tXte: optim.Rows
    if clip and dev.type == "cpu" and copy_bytes > _COPY_LIMIT:
        # Large problem on CPU: no copy.  The solver reads standardised row chunks straight from
        # the caller's arrays (the carved splits through their index arrays), equal to the
        # copy's rows up to rounding; the statistics come from two chunked passes.
        labelled = [
            (src, None if idx is not None and _is_all_rows(idx, src) else idx) for src, idx in labelled
        ]
        mu, sd = _moments_of_parts(labelled)
        sd = np.where(sd > 1e-12 * max(float(sd.max()), 1e-300), sd, 1.0)
        tX = optim.StandardizedRows(labelled, mu, sd)
        tXte = optim.StandardizedRows([(Xte, None)], mu, sd)
    else:
        # One contiguous [train; val] block (train a prefix view, the refit uses all of it),
        # built in row chunks straight from the caller's arrays: the only copy of the features.
        Xall = _gather(labelled, extra=1 if clip else 0)
        if clip:
            mu, sd = _moments(Xall[:, :-1])
            sd = np.where(sd > 1e-12 * max(float(sd.max()), 1e-300), sd, 1.0)
            _standardize(Xall, mu, sd)
            Xte_p = _gather([(Xte, None)], extra=1)
            _standardize(Xte_p, mu, sd)
        else:
            _l2_normalize(Xall)
            Xte_p = _gather([(Xte, None)], extra=0)
            _l2_normalize(Xte_p)
        tX = torch.from_numpy(Xall).to(dev)
        tXte = torch.from_numpy(Xte_p).to(dev)
    ty = torch.from_numpy(yall).to(dev)

    with torch.no_grad():
        if variant == "clip":
            small = tX.shape[0] * tX.shape[1] * K < _SMALL_PROBLEM
            with _single_thread_on_cpu(dev, small):
                logits, details = _clip_variant(
                    tX,
                    ty,
                    n_fit,
                    tXte,
                    K,
                    max_iter=int(max_iter),
                    tol=float(tol),
                    have_val=have_val,
                    refit_tol=None if refit_tol is None else float(refit_tol),
                )
        else:
            with torch.enable_grad(), _single_thread_on_cpu(dev):
                logits, details = _benchmark_variant(tX, ty, n_fit, tXte, K, seed=seed, have_val=have_val)
    metrics = classification_metrics(logits.float().cpu(), yte)
    details = {
        "variant": variant,
        "val_split": val_split,
        "n_train": int(n_fit),
        "n_val": int(yva.size),
        **details,
        "seconds": time.perf_counter() - t_start,
    }
    return ProtocolResult(metrics, details)
