"""Solvers for L2-regularised multinomial logistic regression (the ``clip`` linear probe's fits).

The problem, in scikit-learn's convention divided by ``n``::

    f(theta) = mean_i CE(softmax(W x_i + b), y_i) + 0.5 * lam * ||W||^2,   lam = 1 / (C * n)

``theta`` is ``[W | b]`` as a ``k x (d + 1)`` matrix flattened row-major (``X`` carries a
trailing column of ones, so the last entry of each class row is its unpenalised bias).  Logits
are kept class-major (``k x n``): the softmax then runs over ``k`` contiguous rows of length
``n``, which is several times faster than over rows of ``k`` entries when ``k`` is small.

Two solvers, chosen by :func:`choose_solver` from the problem's size:

* :func:`lbfgs` -- limited-memory BFGS (memory 10) preconditioned by a Kronecker-factored
  approximation of the Hessian (:class:`KfacPreconditioner`: feature second moments (x) mean
  softmax curvature, plus the penalty), with a strong-Wolfe line search.  Correlated features
  make the plain method crawl (160-200 iterations for one cold fit of a 48,000 x 33 x 10
  problem); preconditioned it takes about 23.  With cached logits an iteration costs two passes
  over ``X`` however many trial steps the line search takes (the trials work on ``Z + t U``
  with ``U = direction @ X^T``).
* :func:`newton` -- Newton's method with the exact Hessian ``sum_i A_i (x) x_i x_i^T``
  (``A_i = diag(p_i) - p_i p_i^T``), accumulated over row chunks, solved by Cholesky, with the
  same line search; for few parameters (``p = k (d + 1)``) one Hessian is ``n p^2`` work.  On
  request only: see :func:`choose_solver` for why the preconditioned L-BFGS is always chosen.

Both stop when the largest gradient entry is ``<= tol`` (scikit-learn's lbfgs criterion on the
same averaged objective), when the relative decrease is ``<= ftol``, or after ``max_iter``.

Memory: :class:`SoftmaxObjective` either keeps the logits of the current iterate (``cache`` --
an ``n x k`` tensor or two, for problems where that is small) or works in row chunks of
``chunk`` samples, so that nothing of size ``n x k`` is ever alive (the trial steps of the line
search then cost two passes each).  Its ``X`` is a tensor, or a :class:`StandardizedRows`: the
standardised rows of the caller's arrays made a chunk at a time, so that no copy of the
features is made either.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

_EPS32 = float(np.finfo(np.float32).eps)
_TINY_P = 1e-30  # below this a float32 probability's log is recomputed from the logits
NEWTON_MAX_PARAMS = 0  # Newton (exact Hessian) up to this many parameters, L-BFGS above
DEFAULT_CHUNK = 4096


def choose_solver(n_params: int) -> str:
    """``"newton"`` for at most :data:`NEWTON_MAX_PARAMS` parameters, else ``"lbfgs"``.

    One exact Hessian costs about ``n p^2`` multiply-adds, an L-BFGS iteration about ``4 n p``.
    Against plain L-BFGS (tens to hundreds of iterations) Newton's handful of steps would win for
    small ``p``; against the preconditioned L-BFGS it did not where measured (48,000 samples,
    ``p`` from 6 to 330, C from 0.01 to 100, one thread: a tie at ``p = 6``, where both take 2-3
    iterations, and L-BFGS 1.3-8.6x faster from ``p = 15`` up, 10-34 iterations against Newton's
    4-13), so the threshold is 0 and Newton is there on request
    (``fit_logistic(solver="newton")``) and as an independent check of the optimum in the tests.
    """
    return "newton" if n_params <= NEWTON_MAX_PARAMS else "lbfgs"


class StandardizedRows:
    """The rows ``[(x - mu) / sd, 1]`` (float32) of the caller's arrays, made a chunk at a time.

    ``parts``: ``[(array [N, d], index array or None), ...]``, their rows (``array[index]``, or all
    of ``array``) concatenated in order: the rows of a standardised copy, without the copy.
    :meth:`rows` returns rows ``s:e`` in a buffer of this thread's (``chunk x (d + 1)``, the last
    column ones), valid until its next call from the same thread.  Memory: ``O(chunk x d)`` per
    thread, whatever ``N``; an indexed part gathers its chunk's rows (a temporary of that size).

    Arithmetic: ``(float32(x) - float32(mu)) / float32(sd)`` in float32, in torch (numpy's float32
    ufuncs into the strided buffer were 2-4x slower here).  Against the in-place standardisation
    of a float32 copy (the subtraction in float64) an element differs by at most a rounding, and
    by the rounding of ``mu`` to float32 -- the same shift for every row of a column, which the
    unpenalised bias absorbs exactly (the same predictions).  Cost per chunk: about 10 % of one
    ``chunk x (d + 1) x k`` matrix product at ``k = 100`` (a gather about as much again), 1 % at
    ``k = 1000``.

    Quacks like the tensor it replaces where :class:`SoftmaxObjective` and the probe need it:
    ``shape``, ``dtype``, ``device``, :meth:`element_size`; :meth:`slice` is a row range (as
    ``X[a:b]``), :meth:`take` gathers rows into a new tensor.  CPU only.
    """

    def __init__(self, parts: Sequence[tuple[np.ndarray, np.ndarray | None]], mu, sd):
        self.parts = [(src, None if idx is None else np.asarray(idx, dtype=np.int64)) for src, idx in parts]
        sizes = [src.shape[0] if idx is None else idx.size for src, idx in self.parts]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.d = int(self.parts[0][0].shape[1])
        self.n, self.d1 = int(self._starts[-1]), self.d + 1
        self.shape = (self.n, self.d1)
        self.dtype, self.device = torch.float32, torch.device("cpu")
        self.mu = np.asarray(mu, dtype=np.float64)
        self.sd = np.asarray(sd, dtype=np.float64)
        self._mu32 = torch.from_numpy(self.mu.astype(np.float32))
        self._sd32 = torch.from_numpy(self.sd.astype(np.float32))
        self._local = threading.local()
        if any(not src.flags.writeable for src, _ in self.parts):
            # torch warns (once per process) when it wraps a read-only array -- a memory-mapped
            # feature file -- because it cannot enforce read-only tensors; nothing here writes.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                torch.from_numpy(next(src for src, _ in self.parts if not src.flags.writeable)[:0])

    def element_size(self) -> int:
        return 4

    def slice(self, a: int, b: int) -> StandardizedRows:
        """Rows ``a:b`` (as ``X[a:b]``), sharing the caller's arrays."""
        a, b = max(0, min(a, self.n)), max(0, min(b, self.n))
        parts = []
        for (src, idx), p0, p1 in zip(self.parts, self._starts[:-1], self._starts[1:]):
            lo, hi = max(a, int(p0)) - int(p0), min(b, int(p1)) - int(p0)
            if lo < hi:
                parts.append((src[lo:hi], None) if idx is None else (src, idx[lo:hi]))
        return StandardizedRows(parts or [(self.parts[0][0][:0], None)], self.mu, self.sd)

    def _fill(self, out: torch.Tensor, src: np.ndarray, rows) -> None:
        """``out`` (``m x d``) = the standardised ``src[rows]`` (``rows``: a slice or indices)."""
        block = np.asarray(src[rows], dtype=np.float32)  # a gather, a cast (as the copy's), or a view
        torch.sub(torch.from_numpy(block), self._mu32, out=out)

    def rows(self, s: int, e: int) -> torch.Tensor:
        """Rows ``s:e`` as a ``[e - s, d + 1]`` tensor over this thread's buffer (see above)."""
        s, e = max(0, s), min(e, self.n)
        m = max(e - s, 0)
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.shape[0] < m:
            buf = torch.empty(max(m, 1), self.d1, dtype=torch.float32)
            buf[:, self.d] = 1.0
            self._local.buf = buf
        first = int(np.searchsorted(self._starts, s, side="right")) - 1
        for j in range(max(first, 0), len(self.parts)):
            p0, p1 = int(self._starts[j]), int(self._starts[j + 1])
            if p0 >= e:
                break
            lo, hi = max(s, p0) - p0, min(e, p1) - p0
            if lo < hi:
                src, idx = self.parts[j]
                pos = p0 + lo - s
                self._fill(
                    buf[pos : pos + hi - lo, : self.d], src, slice(lo, hi) if idx is None else idx[lo:hi]
                )
        out = buf[:m]
        out[:, : self.d].div_(self._sd32)
        return out

    def take(self, positions: np.ndarray) -> torch.Tensor:
        """Rows at ``positions`` (sorted ascending) as a new ``[len, d + 1]`` tensor."""
        positions = np.asarray(positions, dtype=np.int64)
        out = torch.empty(positions.size, self.d1, dtype=torch.float32)
        out[:, self.d] = 1.0
        cut = np.searchsorted(positions, self._starts)
        for j, (src, idx) in enumerate(self.parts):
            a, b = int(cut[j]), int(cut[j + 1])
            if a < b:
                local = positions[a:b] - self._starts[j]
                self._fill(out[a:b, : self.d], src, local if idx is None else idx[local])
        out[:, : self.d].div_(self._sd32)
        return out


Rows = torch.Tensor | StandardizedRows


def row_chunk(X: Rows, s: int, e: int) -> torch.Tensor:
    """Rows ``s:e`` of ``X`` as a tensor (a view of a tensor; a :class:`StandardizedRows`' buffer,
    valid until its next chunk in this thread)."""
    return X[s:e] if isinstance(X, torch.Tensor) else X.rows(s, e)


def row_sample(X: Rows, step: int) -> torch.Tensor:
    """Every ``step``-th row of ``X`` (``X[::step]``)."""
    if isinstance(X, torch.Tensor):
        return X[::step]
    return X.take(np.arange(0, X.n, step))


class SoftmaxObjective:
    """``f(theta) = mean_i CE_i + 0.5 * lam * ||W||^2`` on ``X`` (``n x (d + 1)``, last column
    ones) with labels ``y`` in ``0..k-1``.  Values in float64, the rest in ``X``'s dtype.

    ``cache=True``: the class-major logits ``Z`` (``k x n``) of the current iterate are kept, and
    :meth:`line` computes ``U = W_d X^T`` once per direction, so every trial step costs only
    elementwise work.  ``cache=False``: every evaluation runs over row chunks of ``chunk`` samples
    and nothing of size ``n x k`` is kept.  ``X`` may be a :class:`StandardizedRows`: every pass
    over it then goes chunk by chunk (the cached logits, if any, are filled a chunk at a time).
    """

    def __init__(self, X: Rows, y: torch.Tensor, k: int, *, cache: bool = True, chunk: int = DEFAULT_CHUNK):
        self.X, self.y, self.k = X, y, k
        self.n, self.d1 = X.shape
        self.lam = 0.0
        self.cache = cache
        self.chunk = max(1, int(chunk))
        self._z: torch.Tensor | None = None  # logits at the current iterate (cache mode)
        self._dense = isinstance(X, torch.Tensor)

    # -- basic pieces -------------------------------------------------------------------------

    @property
    def logits(self) -> torch.Tensor | None:
        """Class-major logits ``k x n`` at the current iterate (``None`` without cache)."""
        return self._z

    def penalty_mask(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with its bias entries zeroed (the part the penalty acts on)."""
        out = x.clone()
        out.view(self.k, self.d1)[:, -1] = 0
        return out

    def _chunks(self, whole: bool | None = None):
        if (self.cache and self._dense) if whole is None else whole:
            yield 0, self.n
            return
        for s in range(0, self.n, self.chunk):
            yield s, min(s + self.chunk, self.n)

    def _xt(self, A: torch.Tensor) -> torch.Tensor:
        """``A X^T`` (``A``: ``k x (d + 1)``): class-major logits of every row."""
        if self._dense:
            assert isinstance(self.X, torch.Tensor)
            return torch.mm(A, self.X.t())
        out = torch.empty(A.shape[0], self.n, dtype=A.dtype, device=A.device)
        for s, e in self._chunks(whole=False):
            out[:, s:e] = torch.mm(A, row_chunk(self.X, s, e).t())
        return out

    def _rx(self, R: torch.Tensor) -> torch.Tensor:
        """``R X`` (``R``: ``k x n``, class-major)."""
        if self._dense:
            assert isinstance(self.X, torch.Tensor)
            return torch.mm(R, self.X)
        out = torch.zeros(R.shape[0], self.d1, dtype=R.dtype, device=R.device)
        for s, e in self._chunks(whole=False):
            out.addmm_(R[:, s:e], row_chunk(self.X, s, e))
        return out

    def _residual(self, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed cross-entropy (float64) and ``softmax(z) - onehot(y)`` (class-major)."""
        m = z.shape[1]
        r = torch.softmax(z, dim=0)
        cols = torch.arange(m, device=z.device)
        p_y = r[y, cols]
        tiny = p_y < _TINY_P
        if bool(tiny.any()):  # underflow: exact log-probabilities for those samples
            idx = tiny.nonzero().squeeze(1)
            logp = p_y.log()
            logp[idx] = z[:, idx].log_softmax(dim=0)[y[idx], torch.arange(idx.numel())]
            data = -logp.sum(dtype=torch.float64)
        else:
            data = -p_y.log().sum(dtype=torch.float64)
        r[y, cols] -= 1.0
        return data, r

    def _finish(self, x: torch.Tensor, data: torch.Tensor, G: torch.Tensor) -> tuple[float, torch.Tensor]:
        Wb = x.view(self.k, self.d1)
        G.mul_(1.0 / self.n).add_(Wb, alpha=self.lam)
        G[:, -1].sub_(Wb[:, -1], alpha=self.lam)  # the bias is not penalised
        W = Wb[:, :-1]
        f = float(data) / self.n + 0.5 * self.lam * float(torch.sum(W * W, dtype=torch.float64))
        return f, G.view(-1)

    def value_grad(self, x: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Value and gradient at ``x`` (chunked; the cached logits are not touched)."""
        Wb = x.view(self.k, self.d1)
        G = torch.zeros(self.k, self.d1, dtype=self.X.dtype, device=self.X.device)
        data = torch.zeros((), dtype=torch.float64, device=self.X.device)
        for s, e in self._chunks():
            Xc = row_chunk(self.X, s, e)
            data += (r := self._residual(torch.mm(Wb, Xc.t()), self.y[s:e]))[0]
            G.addmm_(r[1], Xc)
        return self._finish(x, data, G)

    def start(self, x: torch.Tensor, z: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
        """Value and gradient at ``x``, which becomes the current iterate; ``z``: its class-major
        logits when the caller has them (cache mode: one pass over ``X`` fewer)."""
        if not self.cache:
            return self.value_grad(x)
        Wb = x.view(self.k, self.d1)
        self._z = self._xt(Wb) if z is None else z
        data, r = self._residual(self._z, self.y)
        return self._finish(x, data, self._rx(r))

    def line(self, x: torch.Tensor, d: torch.Tensor):
        """``(phi, accept)`` for ``theta(t) = x + t d``: ``phi(t) -> (f, f')`` and
        ``accept(t) -> gradient at theta(t)``, which becomes the current iterate."""
        last: dict[str, Any] = {}
        if not self.cache:

            def phi_chunked(t: float) -> tuple[float, float]:
                xt = torch.add(x, d, alpha=t)
                f, g = self.value_grad(xt)
                last.update(t=t, g=g)
                return f, float(torch.dot(g.double(), d.double()))

            def accept_chunked(t: float) -> torch.Tensor:
                if last.get("t") != t:
                    phi_chunked(t)
                return last["g"]

            return phi_chunked, accept_chunked

        U = self._xt(d.view(self.k, self.d1))
        Wx, Wd = x.view(self.k, self.d1)[:, :-1], d.view(self.k, self.d1)[:, :-1]
        ww, wd, dd = (float(torch.sum(a * b, dtype=torch.float64)) for a, b in ((Wx, Wx), (Wx, Wd), (Wd, Wd)))
        lam, n = self.lam, self.n
        z0 = self._z
        assert z0 is not None, "start() before line()"

        def phi(t: float) -> tuple[float, float]:
            zt = torch.add(z0, U, alpha=t)
            data, r = self._residual(zt, self.y)
            slope = float(torch.sum(r * U, dtype=torch.float64)) / n + lam * (wd + t * dd)
            last.update(t=t, z=zt, r=r)
            return float(data) / n + 0.5 * lam * (ww + t * (2.0 * wd + t * dd)), slope

        def accept(t: float) -> torch.Tensor:
            if last.get("t") != t:
                phi(t)
            self._z = last["z"]
            xt = torch.add(x, d, alpha=t)
            return self._finish(xt, torch.zeros((), dtype=torch.float64), self._rx(last["r"]))[1]

        return phi, accept

    def hessian(self, x: torch.Tensor) -> torch.Tensor:
        """The exact Hessian (``p x p``, float64) at ``x``, accumulated over row chunks.

        ``H = (1/n) sum_i (diag(p_i) - p_i p_i^T) (x) x_i x_i^T + lam * P`` with ``P`` the
        identity on the weights and zero on the biases (``(a, j)`` ordering: class-major)."""
        k, d1 = self.k, self.d1
        Wb = x.view(k, d1)
        H = torch.zeros(k * d1, k * d1, dtype=torch.float64, device=self.X.device)
        step = self.chunk
        D = torch.zeros(k, d1, d1, dtype=self.X.dtype, device=self.X.device)
        for s in range(0, self.n, step):
            Xc = row_chunk(self.X, s, s + step)
            P = torch.softmax(torch.mm(Wb, Xc.t()), dim=0)  # k x c
            V = (P.t()[:, :, None] * Xc[:, None, :]).reshape(Xc.shape[0], k * d1)
            H.sub_(torch.mm(V.t(), V).double())
            D.baddbmm_(Xc.t()[None] * P[:, None, :], Xc[None].expand(k, -1, -1))
        for a in range(k):
            H[a * d1 : (a + 1) * d1, a * d1 : (a + 1) * d1].add_(D[a].double())
        H.mul_(1.0 / self.n)
        pen = torch.full((k, d1), self.lam, dtype=torch.float64, device=H.device)
        pen[:, -1] = 0.0
        H.diagonal().add_(pen.view(-1))
        return H


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


def strong_wolfe(phi, f0: float, gd0: float, t: float, *, c1=1e-4, c2=0.9, max_evals=25):
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
            t = _cubic_step(lo[0], lo[1], lo[2], hi[0], hi[1], hi[2], a + 0.1 * width, b - 0.1 * width)
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


class KfacPreconditioner:
    """``M^-1`` for ``M = A (x) G + lam I``: a Kronecker-factored approximation of the Hessian.

    ``G = X^T X / n`` (features' second moments, from at most ``sample`` evenly spaced rows) and
    ``A = mean_i (diag(p_i) - p_i p_i^T)`` (the softmax curvature, from at most ``sample // 4``
    rows at the start point) -- the two sources of ill-conditioning, correlated features and
    the class structure.  Applied through the eigendecompositions of both factors, so it costs
    two small matrix products per use; eigenvalues of ``A`` are floored at ``1e-3`` of the
    largest (``A`` is singular along the all-classes direction of the unpenalised bias).
    """

    def __init__(
        self,
        obj: SoftmaxObjective,
        x0: torch.Tensor,
        *,
        sample: int = 8192,
        G_eig: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        X, k, d1 = obj.X, obj.k, obj.d1
        stride = max(1, obj.n // sample)
        if G_eig is None:
            if isinstance(X, torch.Tensor):
                Xs = X[::stride]
                G = (Xs.t() @ Xs).double() / Xs.shape[0]
            else:  # the sampled rows a chunk at a time
                at = np.arange(0, X.n, stride)
                G = torch.zeros(d1, d1, dtype=torch.float64)
                for s in range(0, at.size, DEFAULT_CHUNK):
                    Xs = X.take(at[s : s + DEFAULT_CHUNK])
                    G += (Xs.t() @ Xs).double()
                G /= at.size
            G_eig = torch.linalg.eigh(G)
        self.G_eig = G_eig
        lg, Ug = G_eig
        rows = row_sample(X, max(1, obj.n // max(1, sample // 4)))
        P = torch.softmax(torch.mm(x0.view(k, d1), rows.t()), dim=0)  # k x m
        A = (torch.diag(P.mean(dim=1)) - P @ P.t() / P.shape[1]).double()
        la, Ua = torch.linalg.eigh(A)
        la = la.clamp_min(1e-3 * float(la.max()))
        lg = lg.clamp_min(1e-6 * float(lg.max()))
        self.Ua, self.Ug = Ua.to(X.dtype), Ug.to(X.dtype)
        self.inv = (1.0 / (la[:, None] * lg[None, :] + obj.lam)).to(X.dtype)
        self.k, self.d1 = k, d1

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        V = self.Ua.t() @ v.view(self.k, self.d1) @ self.Ug
        return (self.Ua @ (V * self.inv) @ self.Ug.t()).reshape(-1)


class LbfgsMemory:
    """The last ``m`` curvature pairs; directions by the two-loop recursion with a
    preconditioner as the initial inverse Hessian, ``H_0 = gamma M^-1`` (``gamma = s'y /
    y'M^-1 y`` from the newest pair; ``M = I`` when :attr:`precond` is ``None``).

    Pairs with ``s'y <= eps * y'y`` are not stored.  :meth:`shift` re-targets the pairs to
    another L2 strength (``y += dlam * P s``), which is exact for the same data: a warm-started
    fit starts with the curvature it had.  :attr:`precond` is set per fit."""

    def __init__(self, m: int = 10):
        self.m = m
        self.pairs: list[tuple[torch.Tensor, torch.Tensor, float]] = []
        self.lam: float | None = None
        self.precond: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def order(self) -> list[int]:
        return list(range(len(self.pairs)))

    def clear(self) -> None:
        self.pairs = []

    def first(self, g: torch.Tensor) -> torch.Tensor:
        return (self.precond(g) if self.precond is not None else g.clone()).neg_()

    def direction(self, g: torch.Tensor) -> torch.Tensor | None:
        q = g.clone()
        alphas = []
        for s, y, rho in reversed(self.pairs):
            a = rho * float(torch.dot(s, q))
            q.add_(y, alpha=-a)
            alphas.append(a)
        s, y, rho = self.pairs[-1]
        if self.precond is not None:
            My = self.precond(y)
            gamma = float(torch.dot(s, y)) / max(float(torch.dot(y, My)), 1e-300)
            r = self.precond(q).mul_(gamma)
        else:
            r = q.mul_(float(torch.dot(s, y)) / float(torch.dot(y, y)))
        for (s, y, rho), a in zip(self.pairs, reversed(alphas)):
            b = rho * float(torch.dot(y, r))
            r.add_(s, alpha=a - b)
        if not bool(torch.isfinite(r).all()):
            return None
        return r.neg_()

    def push(self, s: torch.Tensor, y: torch.Tensor) -> None:
        sy, yy = float(torch.dot(s, y)), float(torch.dot(y, y))
        if sy > _EPS32 * yy:
            self.pairs.append((s.clone(), y.clone(), 1.0 / sy))
            if len(self.pairs) > self.m:
                self.pairs.pop(0)

    def shift(self, lam: float, mask_bias: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if self.lam is not None and self.pairs and lam != self.lam:
            out = []
            for s, y, _ in self.pairs:
                y = y + mask_bias(s) * (lam - self.lam)
                sy, yy = float(torch.dot(s, y)), float(torch.dot(y, y))
                if sy > _EPS32 * yy:
                    out.append((s, y, 1.0 / sy))
            self.pairs = out
        self.lam = lam


def _max_abs(g: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(g, ord=math.inf))


def lbfgs(
    obj: SoftmaxObjective,
    x0: torch.Tensor,
    memory: LbfgsMemory,
    *,
    max_iter: int = 1000,
    tol: float = 1e-4,
    ftol: float = 64 * np.finfo(float).eps,
    refresh: int = 20,
    z0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Minimise ``obj`` from ``x0`` by L-BFGS with a strong-Wolfe line search.

    Stops when ``max|grad| <= tol`` (converged: scikit-learn's lbfgs criterion, on the same
    averaged objective), when the relative decrease of the value is ``<= ftol`` or the line
    search finds no decrease along ``-grad`` (as scipy's L-BFGS-B), or after ``max_iter``
    iterations.  ``memory`` may hold pairs from an earlier fit on the same data (it is shifted
    to ``obj.lam``).  ``z0``: the logits at ``x0``, if known.  The logits are recomputed from
    scratch every ``refresh`` iterations so that the running ``Z + t U`` updates cannot drift.
    Returns ``(x, info)`` (``info``: ``n_iter``, ``n_trials``, ``converged``, ``max_grad`` at
    ``x``, ``solver``); the logits at ``x`` are left in ``obj.logits`` (cache mode).
    """
    x = x0.clone()
    memory.shift(obj.lam, obj.penalty_mask)
    f, g = obj.start(x, z0)
    n_iter, n_trials, converged = 0, 0, False
    while True:
        if n_iter and n_iter % refresh == 0 and obj.cache:
            f, g = obj.start(x)
        if _max_abs(g) <= tol:
            converged = True
            break
        if n_iter >= max_iter:
            break
        d = memory.direction(g) if memory.order else None
        if d is not None:
            t0 = 1.0
        elif memory.precond is not None:
            memory.clear()
            d, t0 = memory.first(g), 1.0
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

        def counting_phi(t, phi=phi, counted=counted):
            counted[0] += 1
            return phi(t)

        t, f_new = strong_wolfe(counting_phi, f, gd0, t0)
        n_trials += counted[0]
        if t == 0.0:
            if memory.order:  # drop the curvature memory and retry along -grad
                memory.clear()
                continue
            break
        g_new = accept(t)
        memory.push(d * t, g_new - g)
        x.add_(d, alpha=t)
        n_iter += 1
        f_old, f, g = f, f_new, g_new
        if (f_old - f) <= ftol * max(abs(f_old), abs(f), 1.0):
            converged = _max_abs(g) <= tol
            break
    info = {"n_iter": n_iter, "n_trials": n_trials, "converged": converged, "max_grad": _max_abs(g)}
    return x, {**info, "solver": "lbfgs"}


def newton(
    obj: SoftmaxObjective,
    x0: torch.Tensor,
    *,
    max_iter: int = 1000,
    tol: float = 1e-4,
    ftol: float = 64 * np.finfo(float).eps,
    z0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Minimise ``obj`` from ``x0`` by Newton's method (exact Hessian, Cholesky, strong-Wolfe
    line search starting at the full step); same stopping rules as :func:`lbfgs`.

    The loss is invariant to adding the same constant to every bias and the bias is not
    penalised, so the Hessian is singular along that direction ``e``; the gradient is always
    orthogonal to it, and solving with ``H + e e^T`` gives the same step on the complement.
    """
    x = x0.clone()
    k, d1 = obj.k, obj.d1
    e = torch.zeros(k, d1, dtype=torch.float64, device=x.device)
    e[:, -1] = 1.0 / math.sqrt(k)
    e = e.view(-1)
    f, g = obj.start(x, z0)
    n_iter, n_trials, converged = 0, 0, False
    while True:
        if _max_abs(g) <= tol:
            converged = True
            break
        if n_iter >= max_iter:
            break
        H = obj.hessian(x)
        H.add_(torch.outer(e, e), alpha=float(H.diagonal().abs().max()) + 1.0)
        gd = g.double()
        try:
            L, info = torch.linalg.cholesky_ex(H)
            if int(info) != 0:
                raise RuntimeError("not positive definite")
            d = torch.cholesky_solve(-gd[:, None], L)[:, 0]
        except RuntimeError:  # numerically indefinite: a least-squares step
            d = torch.linalg.lstsq(H, -gd[:, None]).solution[:, 0]
        d = d.to(x.dtype)
        gd0 = float(torch.dot(g, d))
        if not (gd0 < 0.0 and math.isfinite(gd0)):
            d, gd0 = g.neg(), -float(torch.dot(g, g))
        phi, accept = obj.line(x, d)
        counted = [0]

        def counting_phi(t, phi=phi, counted=counted):
            counted[0] += 1
            return phi(t)

        t, f_new = strong_wolfe(counting_phi, f, gd0, 1.0)
        n_trials += counted[0]
        if t == 0.0:
            break
        g = accept(t)
        x.add_(d, alpha=t)
        n_iter += 1
        f_old, f = f, f_new
        if (f_old - f) <= ftol * max(abs(f_old), abs(f), 1.0):
            converged = _max_abs(g) <= tol
            break
    info = {"n_iter": n_iter, "n_trials": n_trials, "converged": converged, "max_grad": _max_abs(g)}
    return x, {**info, "solver": "newton"}
