"""Linear probe: a linear classifier trained on frozen image features, scored on the test split.

:func:`evaluate` returns ``(metrics, details)``: ``metrics`` is ``{"acc1", "acc5",
"mean_per_class_recall"}`` (``acc5`` only with at least 5 classes; plain floats in [0, 1]) and
``details`` says what was chosen and how (the regularisation, the search path, the split sizes).

Two variants (``variant=``, the suite's ``probe`` option):

``"clip"`` (default) -- the CLIP paper's probe (Radford et al. 2021, appendix A.3): multinomial
logistic regression with an L2 penalty on the weights (not on the bias), in scikit-learn's
convention ``min 0.5 * ||W||^2 + C * sum_i CE_i`` so that ``C`` means what it means to
``sklearn.linear_model.LogisticRegression``.  It is solved by full-batch L-BFGS (memory 10,
strong-Wolfe line search, at most ``max_iter`` iterations, stop when the largest gradient entry of
the per-sample-averaged objective is ``<= tol`` -- scikit-learn's lbfgs criterion) written in
torch: float32 tensors (values and reductions accumulated in float64), on ``device``.  ``C`` is
searched on the validation split over ``logspace(-6, 6, 97)`` (8 steps per decade): the coarse
grid 1e-6, 1e-4, ..., 1e6, then a binary refinement (half-widths of 8, 4, 2, 1 grid steps
around the best so far).  The chosen ``C`` is refit on train + validation and scored on test.
Ties in validation accuracy keep the incumbent; on the coarse grid, the smaller ``C``.

What makes it fast (same minimiser, same stopping rule as scikit-learn; only the path differs):
each fit is warm-started -- in the refinement from the solutions on both sides (quadratic
interpolation in log C), on the coarse grid from the previous ``C`` -- with the L-BFGS curvature
pairs carried over (exactly re-targeted to the new ``C``), and from cached logits, so that a
start that already meets the tolerance costs one matrix product; a cold start puts the bias at
the log class frequencies; the line search works on ``Z + t U`` with ``U = X @ direction``, so an
iteration costs two matrix products however many trial steps it takes; the search runs as two
chains of fits, side by side on CPU (see :func:`_clip_variant`); the refit starts from the
chosen solution with its curvature pairs.

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
from typing import Any, Callable

import numpy as np
import torch

from harness.protocols import ProtocolResult
from harness.protocols.zeroshot import classification_metrics

VARIANTS = ("clip", "clip-benchmark")

C_GRID = np.logspace(-6, 6, 97)       # CLIP paper: 1e-6..1e6, 96 log steps (8 per decade)
WD_GRID = np.logspace(-6, 2, 97)      # CLIP_benchmark 1.6's weight decays
COARSE_STEP = 16                      # coarse grid: every 16th value (7 values)
_DEFAULT_C = 1.0                      # no validation data: scikit-learn's default
_SMALL_PROBLEM = 1 << 24              # n * d * k below which the clip probe runs on one thread
_LOGITS_CACHE = 1 << 30               # bytes of search logits kept to warm-start without products
_PARALLEL_LIMIT = 1 << 30             # bytes of per-chain working set up to which chains run
                                      # side by side (ImageNet-sized problems run one at a time)


# --------------------------------------------------------------------------------------------
# validation carve-out and the regularisation search
# --------------------------------------------------------------------------------------------

def carve_validation(labels, val_fraction: float = 0.2, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Split indices ``0..N-1`` into ``(train_idx, val_idx)``, stratified and deterministic.

    Each class with ``n_c >= 2`` samples gives ``min(round_half_up(val_fraction * n_c), n_c - 1)``
    of them, drawn by ``numpy.random.default_rng(seed)``, to validation; a class with a single
    sample stays in train.  Both index arrays are sorted ascending.  ``val_fraction`` must be in
    ``[0, 1)``; 0 gives an empty validation set.
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {y.shape}")
    vf = float(val_fraction)
    if not 0.0 <= vf < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    rng = np.random.default_rng(int(seed))
    val = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        k = min(int(math.floor(vf * members.size + 0.5)), members.size - 1)
        perm = rng.permutation(members.size)
        if k > 0:
            val.append(members[perm[:k]])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    mask = np.ones(y.size, dtype=bool)
    mask[val_idx] = False
    return np.flatnonzero(mask).astype(np.int64), val_idx.astype(np.int64)


def peak_search(n_grid: int, score: Callable[[int], float] | None = None, *,
                batch: Callable[[list[int]], list[float]] | None = None,
                coarse_step: int = COARSE_STEP, ties: str = "incumbent",
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
        values = batch(new) if batch is not None else [score(i) for i in new]
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

class _SoftmaxObjective:
    """``f(theta) = mean_i CE_i + 0.5 * lam * ||W||^2`` with ``lam = 1 / (C * n)``.

    ``X`` carries a trailing column of ones, so ``theta`` is ``[W; b]`` flattened row-major
    (``(d + 1) x k``, the last row the unpenalised bias).  Values in float64, the rest in the
    dtype of ``X``.

    The solver drives it through lines: :meth:`line` computes ``U = X @ D`` for a direction
    once, after which every trial step ``t`` of the line search costs only elementwise work on
    the logits ``Z + t U`` (value and slope), and the accepted step one more matrix product
    for the gradient -- two products per iteration, however many trials the line search needs
    (evaluating ``f`` and its gradient from scratch costs two products per trial).
    """

    def __init__(self, X: torch.Tensor, y: torch.Tensor, k: int):
        self.X, self.y, self.k = X, y, k
        self.n, self.d1 = X.shape
        self.lam = 0.0
        self._z: torch.Tensor | None = None   # logits at the current iterate
        self._flat_y = torch.arange(self.n, device=X.device) * k + y
        self._minus_one = torch.full((self.n,), -1.0, dtype=X.dtype, device=X.device)

    @property
    def logits(self) -> torch.Tensor:
        """``X @ theta`` at the current iterate (kept up to date by the solver)."""
        return self._z

    def penalty_mask(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with its bias entries zeroed (the part the penalty acts on)."""
        out = x.clone()
        out[-self.k:] = 0
        return out

    def _residual(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy (float64) and ``softmax(z) - onehot(y)``."""
        r = torch.softmax(z, dim=1)  # (softmax, then log of n entries: the cheapest route)
        p_y = r.view(-1).index_select(0, self._flat_y)
        tiny = p_y < _TINY_P
        if bool(tiny.any()):  # underflow: exact log-probabilities for those rows
            rows = tiny.nonzero().squeeze(1)
            p_y = p_y.log()
            p_y[rows] = z[rows].log_softmax(dim=1).gather(1, self.y[rows, None]).squeeze(1)
            data = -p_y.sum(dtype=torch.float64) / self.n
        else:
            data = -p_y.log_().sum(dtype=torch.float64) / self.n
        r.view(-1).index_add_(0, self._flat_y, self._minus_one)
        return data, r

    def _gradient(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        Wb = x.view(self.d1, self.k)
        g = torch.addmm(Wb, self.X.t(), r, beta=self.lam, alpha=1.0 / self.n)
        g[-1].sub_(Wb[-1], alpha=self.lam)  # the bias is not penalised
        return g.view(-1)

    def start(self, x: torch.Tensor, z: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
        """Value and gradient at ``x``, which becomes the current iterate; ``z``: its logits
        ``X @ x`` when the caller has them (one matrix product fewer)."""
        self._z = torch.mm(self.X, x.view(self.d1, self.k)) if z is None else z
        data, r = self._residual(self._z)
        W = x[:-self.k]
        f = data + 0.5 * self.lam * torch.dot(W, W).double()
        return float(f), self._gradient(x, r)

    def line(self, x: torch.Tensor, d: torch.Tensor):
        """``(phi, accept)`` for ``theta(t) = x + t d``: ``phi(t) -> (f, f')`` and
        ``accept(t) -> gradient at theta(t)``, which becomes the current iterate."""
        U = torch.mm(self.X, d.view(self.d1, self.k))
        W, DW = x[:-self.k], d[:-self.k]
        ww, wd, dd = (float(torch.dot(a, b)) for a, b in ((W, W), (W, DW), (DW, DW)))
        lam, n = self.lam, self.n
        last: dict[str, Any] = {}

        def phi(t: float) -> tuple[float, float]:
            zt = torch.add(self._z, U, alpha=t)
            data, r = self._residual(zt)
            slope = (float(torch.linalg.vecdot(r, U).sum(dtype=torch.float64)) / n
                     + lam * (wd + t * dd))
            last.update(t=t, z=zt, r=r)
            return float(data) + 0.5 * lam * (ww + t * (2.0 * wd + t * dd)), slope

        def accept(t: float) -> torch.Tensor:
            if last.get("t") != t:
                phi(t)
            self._z = last["z"]
            return self._gradient(torch.add(x, d, alpha=t), last["r"])

        return phi, accept


def _cubic_step(t1, f1, g1, t2, f2, g2, lo, hi):
    """Minimiser of the cubic matching values and slopes at t1, t2, clamped to [lo, hi]."""
    try:
        d1 = g1 + g2 - 3.0 * (f1 - f2) / (t1 - t2)
        disc = d1 * d1 - g1 * g2
        if disc >= 0.0:
            d2 = math.copysign(math.sqrt(disc), t2 - t1)
            t = t2 - (t2 - t1) * (g2 + d2 - d1) / (g2 - g1 + 2.0 * d2)
            if math.isfinite(t):
                return min(max(t, lo), hi)
    except (ZeroDivisionError, OverflowError, ValueError):
        pass
    return 0.5 * (lo + hi)


def _strong_wolfe(phi, f0: float, gd0: float, t: float, *, c1=1e-4, c2=0.9, max_evals=25):
    """Line search for a step satisfying the strong Wolfe conditions (bracket, then zoom;
    Nocedal and Wright, algorithms 3.5 and 3.6, cubic interpolation).

    ``phi(t) -> (f, slope)``.  Returns ``(t, f)``; ``t == 0`` when no step with sufficient
    decrease was found.  If the evaluation budget runs out, the best step with sufficient
    decrease so far is returned.
    """
    evals = 0
    prev = (0.0, f0, gd0)
    bracket = None
    while evals < max_evals:
        f, gd = phi(t)
        evals += 1
        if not math.isfinite(f) or f > f0 + c1 * t * gd0 or (evals > 1 and f >= prev[1]):
            bracket = [prev, (t, f, gd)]
            break
        if abs(gd) <= -c2 * gd0:
            return t, f
        if gd >= 0.0:
            bracket = [(t, f, gd), prev]
            break
        t_new = _cubic_step(prev[0], prev[1], prev[2], t, f, gd, t + 0.01 * (t - prev[0]), 10.0 * t)
        prev = (t, f, gd)
        t = t_new
    else:
        return prev[0], prev[1]
    lo, hi = bracket  # lo: the lowest value satisfying sufficient decrease so far
    while evals < max_evals:
        a, b = sorted((lo[0], hi[0]))
        width = b - a
        if width <= 1e-12 * max(b, 1e-12):
            break
        if math.isfinite(hi[1]):
            t = _cubic_step(lo[0], lo[1], lo[2], hi[0], hi[1], hi[2],
                            a + 0.1 * width, b - 0.1 * width)
        else:
            t = 0.5 * (a + b)
        f, gd = phi(t)
        evals += 1
        if not math.isfinite(f) or f > f0 + c1 * t * gd0 or f >= lo[1]:
            hi = (t, f, gd)
        else:
            if abs(gd) <= -c2 * gd0:
                return t, f
            if gd * (hi[0] - lo[0]) >= 0.0:
                hi = lo
            lo = (t, f, gd)
    return lo[0], lo[1]


class _LbfgsMemory:
    """The last ``m`` curvature pairs, stacked as rows of ``H = [S; Y]`` on the device.

    The direction ``-H_k g`` uses the compact form of the limited-memory inverse Hessian
    (Byrd, Nocedal and Schnabel 1994): the same direction as the two-loop recursion, from two
    matrix-vector products with ``H`` instead of ``4 m`` small vector operations; the
    ``2m x 2m`` algebra runs in float64 on the host.  Pairs with ``s'y <= eps * y'y`` are not
    stored.  :meth:`shift` re-targets the pairs to another L2 strength (``y += dlam * P s``),
    which is exact for the same data: a warm-started fit starts with the curvature it had.
    """

    def __init__(self, p: int, m: int, dtype, device):
        self.m = m
        self.H = torch.zeros(2 * m, p, dtype=dtype, device=device)
        self.StY = np.zeros((m, m))
        self.YtY = np.zeros((m, m))
        self.order: list[int] = []   # valid slots, oldest first
        self.lam: float | None = None

    def clear(self) -> None:
        self.order = []

    def direction(self, g: torch.Tensor) -> torch.Tensor | None:
        """``-H_k g``; ``None`` if the small system is numerically singular."""
        m, o = self.m, np.array(self.order)
        last = self.order[-1]
        gamma = self.StY[last, last] / self.YtY[last, last]
        proj = (self.H @ g).double().cpu().numpy()
        a, b = proj[o], gamma * proj[m + o]
        Sy = self.StY[np.ix_(o, o)]
        R = np.triu(Sy)
        try:
            u = np.linalg.solve(R, a)
            p1 = np.linalg.solve(R.T, (np.diag(np.diag(Sy)) + gamma * self.YtY[np.ix_(o, o)]) @ u
                                 - b)
        except np.linalg.LinAlgError:
            return None
        if not (np.all(np.isfinite(u)) and np.all(np.isfinite(p1)) and math.isfinite(gamma)):
            return None
        coef = np.zeros(2 * m)
        coef[o], coef[m + o] = p1, -gamma * u
        coef_t = torch.from_numpy(coef).to(device=g.device, dtype=g.dtype)
        return torch.addmv(g, self.H.t(), coef_t, beta=gamma).neg_()

    def push(self, s: torch.Tensor, y: torch.Tensor) -> None:
        m = self.m
        slot = next((i for i in range(m) if i not in self.order), None)
        if slot is None:
            slot = self.order.pop(0)
        self.H[slot].copy_(s)
        self.H[m + slot].copy_(y)
        dots = (self.H @ self.H[[slot, m + slot]].t()).double().cpu().numpy()  # [2m, 2]
        ys, yy = dots[m + slot, 0], dots[m + slot, 1]
        if ys > _EPS32 * yy:
            self.StY[slot, :] = dots[m:, 0]          # s_slot . y_j
            self.StY[:, slot] = dots[:m, 1]          # s_i . y_slot
            self.YtY[slot, :] = self.YtY[:, slot] = dots[m:, 1]
            self.order.append(slot)

    def shift(self, lam: float, mask_bias: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Move the stored pairs from L2 strength ``self.lam`` to ``lam``."""
        if self.lam is not None and self.order and lam != self.lam:
            m = self.m
            for i in self.order:
                self.H[m + i].add_(mask_bias(self.H[i]), alpha=lam - self.lam)
            G = (self.H @ self.H.t()).double().cpu().numpy()
            self.StY[:, :] = G[:m, m:]
            self.YtY[:, :] = G[m:, m:]
            self.order = [i for i in self.order if self.StY[i, i] > _EPS32 * self.YtY[i, i]]
        self.lam = lam


_EPS32 = float(np.finfo(np.float32).eps)
_TINY_P = 1e-30  # below this a float32 probability's log is recomputed from the logits


def _lbfgs(obj: _SoftmaxObjective, x0: torch.Tensor, memory: _LbfgsMemory, *,
           max_iter: int = 1000, tol: float = 1e-4, ftol: float = 64 * np.finfo(float).eps,
           refresh: int = 20, z0: torch.Tensor | None = None,
           ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Minimise ``obj`` from ``x0`` by L-BFGS with a strong-Wolfe line search.

    Stops when ``max|grad| <= tol`` (converged: scikit-learn's lbfgs criterion, on the same
    averaged objective), when the relative decrease of the value is ``<= ftol`` or the line
    search finds no decrease along ``-grad`` (as scipy's L-BFGS-B), or after ``max_iter``
    iterations.  ``memory`` may hold pairs from an earlier fit on the same data (it is shifted
    to ``obj.lam``).  ``z0``: the logits at ``x0``, if known.  The logits are recomputed from
    scratch every ``refresh`` iterations so that the running ``Z + t U`` updates cannot drift.
    Returns ``(x, info)``; the logits at ``x`` are left in ``obj.logits``.
    """
    x = x0.clone()
    memory.shift(obj.lam, obj.penalty_mask)
    f, g = obj.start(x, z0)
    n_iter, n_trials, converged = 0, 0, False
    while True:
        if n_iter and n_iter % refresh == 0:
            f, g = obj.start(x)
        if float(torch.linalg.vector_norm(g, ord=math.inf)) <= tol:
            converged = True
            break
        if n_iter >= max_iter:
            break
        d = memory.direction(g) if memory.order else None
        if d is not None:
            t0 = 1.0
        else:
            memory.clear()
            d = g.neg()
            # the first step: scipy's 1/||g||, capped by the curvature lam of the penalty
            t0 = min(1.0, 1.0 / max(float(torch.linalg.vector_norm(g)), 1e-30))
            if obj.lam > 0:
                t0 = min(t0, 1.0 / obj.lam)
        gd0 = float(torch.dot(g, d))
        if not gd0 < 0.0:  # not a descent direction: restart from steepest descent
            if memory.order and math.isfinite(gd0):
                memory.clear()
                continue
            break
        phi, accept = obj.line(x, d)
        counted = [0]

        def counting_phi(t):
            counted[0] += 1
            return phi(t)

        t, f_new = _strong_wolfe(counting_phi, f, gd0, t0)
        n_trials += counted[0]
        if t == 0.0:
            if memory.order:     # drop the curvature memory and retry along -grad
                memory.clear()
                continue
            break
        g_new = accept(t)
        memory.push(d * t, g_new - g)
        x.add_(d, alpha=t)
        n_iter += 1
        f_old, f, g = f, f_new, g_new
        if (f_old - f) <= ftol * max(abs(f_old), abs(f), 1.0):
            converged = float(torch.linalg.vector_norm(g, ord=math.inf)) <= tol
            break
    return x, {"n_iter": n_iter, "n_trials": n_trials, "converged": converged}


class _ClipProbe:
    """Fits of one labelled set for many ``C``; solutions are full ``[d + 1, K]`` matrices.

    ``fit`` also returns the fit's logits on this set (``[n, k]``, the present classes), which a
    later warm start built from this solution can reuse instead of a matrix product.
    """

    def __init__(self, X: torch.Tensor, y: torch.Tensor, K: int, *, max_iter: int, tol: float):
        self.classes = torch.unique(y)
        self.K, self.k, self.d1 = K, int(self.classes.numel()), X.shape[1]
        self.absent = torch.ones(K, dtype=torch.bool, device=y.device)
        self.absent[self.classes] = False
        remap = torch.full((K,), -1, dtype=torch.int64, device=y.device)
        remap[self.classes] = torch.arange(self.k, device=y.device)
        self.obj = _SoftmaxObjective(X, remap[y], self.k)
        self.memory = _LbfgsMemory(self.d1 * self.k, 10, X.dtype, X.device)
        self.max_iter, self.tol = max_iter, tol
        self.n_iter = 0
        counts = torch.bincount(remap[y], minlength=self.k).to(X.dtype)
        self._log_prior = counts.log() - counts.log().mean()

    def fit(self, C: float, warm: torch.Tensor | None, warm_z: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """Solve for ``C`` from ``warm`` (full matrix; ``warm_z``: its logits here, if known).

        A cold start is ``W = 0`` with the bias at the centred log class frequencies -- the
        optimum of the bias alone, and on the same zero-sum bias subspace that scikit-learn's
        start at zero keeps to (the loss is invariant to a shift of all biases).
        """
        self.obj.lam = 1.0 / (C * self.obj.n)
        X = self.obj.X
        if warm is None:
            x0 = torch.zeros(self.d1 * self.k, dtype=X.dtype, device=X.device)
            x0[-self.k:] = self._log_prior
            warm_z = None
        else:
            x0 = warm[:, self.classes].reshape(-1)
        x, info = _lbfgs(self.obj, x0, self.memory, max_iter=self.max_iter, tol=self.tol,
                         z0=warm_z)
        self.n_iter += info["n_iter"]
        full = torch.zeros(self.d1, self.K, dtype=X.dtype, device=X.device)
        full[:, self.classes] = x.view(self.d1, self.k)
        return full, info, self.obj.logits

    def logits(self, full: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        z = X @ full
        z[:, self.absent] = -math.inf
        return z


def fit_logistic(x, y, C: float, *, n_classes: int | None = None, max_iter: int = 1000,
                 tol: float = 1e-4, device: str | torch.device = "cpu"
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One L2-regularised multinomial logistic regression, as the ``clip`` probe solves it.

    Same problem and stopping rule as ``LogisticRegression(C=C, solver="lbfgs", tol=tol,
    max_iter=max_iter)`` on the features as given (no standardisation here).  Returns
    ``(weight [D, K], bias [K], info)`` (float32; ``logits = x @ weight + bias``); classes
    without training samples get a bias of ``-inf``.  ``info``: ``n_iter`` (iterations),
    ``n_trials`` (line-search trial steps), ``converged`` (``max|grad| <= tol`` reached).
    """
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
    probe = _ClipProbe(torch.from_numpy(Xa).to(dev), torch.from_numpy(yy).to(dev), K,
                       max_iter=int(max_iter), tol=float(tol))
    with torch.no_grad(), _single_thread_on_cpu(dev, Xa.size * K < _SMALL_PROBLEM):
        full, info, _ = probe.fit(float(C), None)
        full[-1, probe.absent] = -math.inf
    full = full.cpu().numpy()
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


def _clip_variant(Xall, yall, n_fit, Xtest, K, *, max_iter, tol, have_val):
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
    Xtr, ytr = Xall[:n_fit], yall[:n_fit]
    Xval, yval = Xall[n_fit:], yall[n_fit:]
    details: dict[str, Any] = {}
    n_fits = 0
    memory = warm = warm_z = None
    if have_val:
        probes = [_ClipProbe(Xtr, ytr, K, max_iter=max_iter, tol=tol) for _ in range(2)]
        solutions: dict[int, torch.Tensor] = {}
        train_logits: dict[int, torch.Tensor] = {}  # kept while they fit in _LOGITS_CACHE
        val_logits: dict[int, torch.Tensor] = {}
        keep_logits = n_fit * K * Xall.element_size() * len(C_GRID) // 6 <= _LOGITS_CACHE
        owner: dict[int, int] = {}
        threads = torch.get_num_threads()
        working_set = 4 * n_fit * K * Xall.element_size()  # logits, direction, trial, residual
        parallel = Xall.device.type == "cpu" and threads >= 2 and working_set <= _PARALLEL_LIMIT

        @torch.no_grad()
        def run_chain(c: int, indices: list[int], known: dict[int, torch.Tensor],
                      known_z: dict[int, torch.Tensor]):
            local, local_z, out = dict(known), dict(known_z), []
            for i in indices:
                terms = _warm_start(list(local), i)
                sol, _, z = probes[c].fit(float(C_GRID[i]), _combine(terms, local),
                                          _combine(terms, local_z))
                local[i] = sol
                if keep_logits:
                    local_z[i] = z
                zv = probes[c].logits(sol, Xval)
                acc = float((zv.argmax(dim=1) == yval).sum()) / yval.numel()
                out.append((i, sol, z if keep_logits else None, zv if keep_logits else None, acc))
            return out

        def batch(indices: list[int]) -> list[float]:
            nonlocal n_fits
            half = len(indices) // 2 if len(indices) > 2 else 1
            chains = [indices[:half], indices[half:]]
            args = (dict(solutions), dict(train_logits))
            if parallel and all(chains):
                with _torch_threads(max(1, threads // 2)), \
                        concurrent.futures.ThreadPoolExecutor(2) as pool:
                    results = list(pool.map(run_chain, (0, 1), chains, (args[0],) * 2,
                                            (args[1],) * 2))
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
            warm_z = torch.cat([train_logits[best], val_logits[best][:, probes[0].classes]])
        details.update(val_acc1=dict(history)[best],
                       search=[(float(C_GRID[i]), a) for i, a in history],
                       search_iterations=sum(p.n_iter for p in probes))
    else:
        C = _DEFAULT_C
    final = _ClipProbe(Xall, yall, K, max_iter=max_iter, tol=tol)
    same_classes = have_val and torch.equal(final.classes, probes[0].classes)
    if same_classes:
        final.memory = memory  # approximate curvature (train part) to start the refit with
    full, info, _ = final.fit(C, warm, warm_z if same_classes else None)
    n_fits += 1
    details.update(C=C, n_fits=n_fits, final_iterations=info["n_iter"],
                   final_converged=bool(info["converged"]), features="standardized")
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
            idx = perm[i * batch_size:(i + 1) * batch_size]
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
        details.update(val_acc1=dict(history)[best],
                       search=[(float(WD_GRID[i]), a) for i, a in history])
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
    if not np.all(np.isfinite(a)):
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


def evaluate(train_x, train_y, test_x, test_y, val_x=None, val_y=None, *,
             variant: str = "clip", val_fraction: float = 0.2, split_seed: int = 0,
             device: str | torch.device = "cpu", n_classes: int | None = None,
             max_iter: int = 1000, tol: float = 1e-4, seed: int = 0,
             ) -> ProtocolResult:
    """Train a linear probe on ``train`` (+ ``val``), choose its regularisation, score ``test``.

    Arrays are numpy arrays or tensors: features ``[N, D]``, labels ``[N]`` ints in
    ``0..n_classes-1`` (``n_classes`` defaults to the largest label seen + 1).  Without
    ``val_x``/``val_y``, a stratified ``val_fraction`` of train chosen by ``split_seed`` is the
    validation split (see :func:`carve_validation`).  ``max_iter``/``tol`` are the ``clip``
    probe's L-BFGS limits (scikit-learn's meaning); ``seed`` seeds the ``clip-benchmark`` probe.

    Returns ``(metrics, details)``.  ``metrics``: ``acc1``, ``acc5`` (``n_classes >= 5``),
    ``mean_per_class_recall`` as plain floats.  ``details``: ``variant``; the chosen ``C``
    (``clip``) or ``weight_decay`` (``clip-benchmark``); ``val_split`` (``"given"``,
    ``"carved"`` or ``"none"``); ``n_train``, ``n_val``; ``val_acc1`` and ``search`` (a list of
    ``(value, validation acc1)`` in evaluation order) when there was a search; ``n_fits``;
    ``seconds``; for ``clip`` also ``search_iterations``, ``final_iterations``,
    ``final_converged``; ``features`` (the preprocessing applied).
    """
    t_start = time.perf_counter()
    if variant not in VARIANTS:
        raise ValueError(f"unknown linear probe variant {variant!r}; expected one of "
                         + ", ".join(repr(v) for v in VARIANTS))
    if (val_x is None) != (val_y is None):
        raise ValueError("give both val_x and val_y, or neither")
    if int(max_iter) < 1 or not float(tol) > 0:
        raise ValueError(f"max_iter must be >= 1 and tol > 0, got {max_iter!r}, {tol!r}")
    Xtr = _features(train_x, "train_x")
    ytr = _labels(train_y, Xtr.shape[0], "train_y")
    Xte = _features(test_x, "test_x")
    yte = _labels(test_y, Xte.shape[0], "test_y")
    if Xte.shape[1] != Xtr.shape[1]:
        raise ValueError(f"test_x has dimension {Xte.shape[1]} but train_x has {Xtr.shape[1]}")
    if val_x is not None:
        Xva = _features(val_x, "val_x")
        yva = _labels(val_y, Xva.shape[0], "val_y")
        if Xva.shape[1] != Xtr.shape[1]:
            raise ValueError(f"val_x has dimension {Xva.shape[1]} but train_x has {Xtr.shape[1]}")
        val_split = "given"
    else:
        tr_idx, va_idx = carve_validation(ytr, val_fraction, split_seed)
        Xtr, Xva, ytr, yva = Xtr[tr_idx], Xtr[va_idx], ytr[tr_idx], ytr[va_idx]
        val_split = "carved" if va_idx.size else "none"
    seen = max(int(ytr.max()), int(yte.max()), int(yva.max()) if yva.size else 0) + 1
    if n_classes is None:
        K = seen
    else:
        K = int(n_classes)
        if seen > K:
            raise ValueError(f"labels go up to {seen - 1} but n_classes is {K}")
    have_val = yva.size > 0

    # One contiguous [train; val] block: train is a prefix view, the refit uses all of it.
    Xall = np.concatenate([Xtr, Xva]) if have_val else Xtr
    yall = np.concatenate([ytr, yva]) if have_val else ytr
    if variant == "clip":
        mu = Xall.mean(axis=0, dtype=np.float64)
        sd = Xall.std(axis=0, dtype=np.float64)
        sd = np.where(sd > 1e-12 * max(float(sd.max()), 1e-300), sd, 1.0)

        def prep(a):  # standardise, then a column of ones for the bias
            out = np.empty((a.shape[0], a.shape[1] + 1), dtype=np.float32)
            np.subtract(a, mu, out=out[:, :-1], casting="unsafe")
            out[:, :-1] /= sd.astype(np.float32)
            out[:, -1] = 1.0
            return out
    else:
        def prep(a):
            a = np.array(a, dtype=np.float32)
            return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    dev = torch.device(device)
    tX = torch.from_numpy(prep(Xall)).to(dev)
    ty = torch.from_numpy(yall).to(dev)
    tXte = torch.from_numpy(prep(Xte)).to(dev)
    n_fit = Xtr.shape[0]

    with torch.no_grad():
        if variant == "clip":
            small = tX.shape[0] * tX.shape[1] * K < _SMALL_PROBLEM
            with _single_thread_on_cpu(dev, small):
                logits, details = _clip_variant(tX, ty, n_fit, tXte, K, max_iter=int(max_iter),
                                                tol=float(tol), have_val=have_val)
        else:
            with torch.enable_grad(), _single_thread_on_cpu(dev):
                logits, details = _benchmark_variant(tX, ty, n_fit, tXte, K, seed=seed,
                                                     have_val=have_val)
    metrics = classification_metrics(logits.float().cpu(), yte)
    details = {"variant": variant, "val_split": val_split, "n_train": int(n_fit),
               "n_val": int(yva.size), **details,
               "seconds": time.perf_counter() - t_start}
    return ProtocolResult(metrics, details)
