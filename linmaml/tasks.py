"""Task families: one definition shared by the closed forms (numpy) and the simulator (torch).

Conventions (DESIGN.md): inputs X have shape (n, d_in), targets Y have shape (n, d_out); a task's
true map W_τ has shape (d_out, d_in) and acts as Y = X W_τᵀ (+ noise). A task is the tuple
``(Xs, Ys, Xq, Yq)`` of support and query sets. ``vec`` is column-major, so the task covariance Ω
is the covariance of ``vec W_τ = W_τ.reshape(-1, order="F")``.

Families
--------
:class:`RegressionFamily`
    x ~ N(0, Σ), vec W_τ ~ N(vec M, Ω), y = W_τ x + ε with ε ~ N(0, σ² I).
:class:`LowRankRegressionFamily`
    The regression family whose task maps share a hidden k-dimensional input subspace (the
    multi-task linear representation setting of Collins et al. 2022 and Saunshi et al. 2020):
    W_τ = M + H_τ Bᵀ with B (d_in, k) orthonormal and heads H_τ (d_out, k) whose rows are i.i.d.
    N(0, Λ), so Ω = (B Λ Bᵀ) ⊗ I_{d_out} has rank k·d_out. It *is* a :class:`RegressionFamily` (every
    closed form accepts it), with the basis and the heads exposed.
:class:`ClassificationFamily`
    x ~ N(0, Σ), w_τ ~ N(μ, Ω) (d_out = 1), y = 1[w_τᵀ x > 0] with each label flipped with
    probability ``flip``. The logistic loss is the mean binary cross-entropy on the logits.
:class:`SinusoidFamily`
    The classic non-linear MAML benchmark (Finn et al. 2017): y = A sin(x − φ) with amplitude
    A ~ U[0.1, 5], phase φ ~ U[0, π] and x ~ U[−5, 5] (d_in = d_out = 1); its "task map" ``W`` is the
    pair (A, φ). No closed form: it exercises the torch side (``linmaml bench``'s sinusoid case).

Sampling is seeded: ``family.sample(n_tasks, seed)`` gives a :class:`TaskBatch` of stacked numpy
arrays, the same numbers every time for the same seed; ``batch.torch()`` is its torch view, and
``batch[t]`` is task t as ``(Xs, Ys, Xq, Yq)`` (a slice gives a smaller TaskBatch).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Iterator

import numpy as np

from linmaml import _validate
from linmaml.errors import ArgumentError, ArgumentTypeError


def _matrix_param(value, shape, name: str) -> np.ndarray:
    """A scalar broadcast to ``shape``, or an array of exactly that shape."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        array = np.full(shape, float(array))
    if array.shape != tuple(shape):
        raise ArgumentError(name, f"expected a number or an array of shape {tuple(shape)}, got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ArgumentError(name, "contains non-finite values")
    return array


def _covariance(value, size: int, name: str) -> np.ndarray:
    """A scalar variance c gives c·I; otherwise a symmetric positive semi-definite (size, size) matrix."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        _validate.finite_number(float(array), name, nonnegative=True)
        return float(array) * np.eye(size)
    if array.shape != (size, size):
        raise ArgumentError(name, f"expected a number or a ({size}, {size}) matrix, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ArgumentError(name, "contains non-finite values")
    if not np.allclose(array, array.T, atol=1e-12 * max(1.0, np.abs(array).max())):
        raise ArgumentError(name, "expected a symmetric matrix")
    if np.linalg.eigvalsh(array).min() < -1e-10 * max(1.0, np.abs(array).max()):
        raise ArgumentError(name, "expected a positive semi-definite matrix")
    return array


def _psd_factor(cov: np.ndarray) -> np.ndarray:
    """F with F Fᵀ = cov (eigen-decomposition, so singular covariances are fine)."""
    vals, vecs = np.linalg.eigh(cov)
    return vecs * np.sqrt(np.clip(vals, 0.0, None))




@dataclasses.dataclass(frozen=True, eq=False)
class TaskBatch:
    """Stacked tasks. Shapes: Xs (T, n_s, d_in), Ys (T, n_s, d_out), Xq (T, n_q, d_in),
    Yq (T, n_q, d_out), W the tasks' parameters: (T, d_out, d_in) true maps for the linear
    families, (T, 2) amplitudes and phases for :class:`SinusoidFamily`."""

    Xs: np.ndarray
    Ys: np.ndarray
    Xq: np.ndarray
    Yq: np.ndarray
    W: np.ndarray

    def __len__(self) -> int:
        return self.Xs.shape[0]

    def __getitem__(self, index):
        """``batch[t]``: task t as ``(Xs, Ys, Xq, Yq)`` (negative t counts from the end); ``batch[a:b]``
        (any slice): those tasks as a TaskBatch. Views of the same arrays or tensors, not copies."""
        if isinstance(index, slice):
            return TaskBatch(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise ArgumentTypeError("index", f"expected an integer or a slice, got {type(index).__name__}")
        count = len(self)
        if not -count <= index < count:
            raise IndexError(f"index: task {index} out of range for {count} tasks")
        t = int(index) % count
        return self.Xs[t], self.Ys[t], self.Xq[t], self.Yq[t]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Iterate over tasks as ``(Xs, Ys, Xq, Yq)`` tuples (the closed forms' task format)."""
        for t in range(len(self)):
            yield self.Xs[t], self.Ys[t], self.Xq[t], self.Yq[t]

    def tasks(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        return list(self)

    def torch(self, dtype=None, device=None) -> "TaskBatch":
        """The same numbers as torch tensors (float64 unless ``dtype`` says otherwise)."""
        import torch  # lazy: the closed forms import this module and stay torch-free (`linmaml derive`, `surface`)

        dtype = torch.float64 if dtype is None else dtype
        convert = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
        return TaskBatch(*(convert(getattr(self, f.name)) for f in dataclasses.fields(self)))


class _GaussianFamily:
    """What both families share: Gaussian inputs, seeded sampling of whole task batches.

    Subclasses are frozen dataclasses with ``d_in``, ``x_cov``, ``task_cov``, ``n_support`` and
    ``n_query`` and define ``sample_weights(n_tasks, rng)`` and ``targets(X, W, rng)``.
    """

    # Square roots of the covariances, computed once per family (training loops sample thousands
    # of times); cached_property writes to the instance dict, which a frozen dataclass allows.
    @functools.cached_property
    def _task_factor(self) -> np.ndarray:
        return _psd_factor(self.task_cov)

    @functools.cached_property
    def _x_factor(self) -> np.ndarray:
        return _psd_factor(self.x_cov)

    def sample_inputs(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """Inputs x ~ N(0, Σ) of shape ``shape + (d_in,)``."""
        return rng.standard_normal(shape + (self.d_in,)) @ self._x_factor.T

    def sample(self, n_tasks: int, seed=0) -> TaskBatch:
        """Draw ``n_tasks`` tasks; ``seed`` is an int or a ``numpy.random.Generator``."""
        _validate.integer(n_tasks, "n_tasks", minimum=1)
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        W = self.sample_weights(n_tasks, rng)
        Xs = self.sample_inputs((n_tasks, self.n_support), rng)
        Xq = self.sample_inputs((n_tasks, self.n_query), rng)
        return TaskBatch(Xs, self.targets(Xs, W, rng), Xq, self.targets(Xq, W, rng), W)


@dataclasses.dataclass(frozen=True, eq=False)
class RegressionFamily(_GaussianFamily):
    """Linear regression tasks y = W_τ x + ε (see the module docstring).

    ``task_mean`` is M, a number or a (d_out, d_in) array; ``task_cov`` is Ω, a variance (Ω = c·I)
    or a (d_out·d_in)² matrix over column-major vec W_τ; ``x_cov`` is Σ, a variance or a
    (d_in, d_in) matrix; ``noise_std`` is σ.
    """

    d_in: int
    d_out: int = 1
    task_mean: object = 0.0
    task_cov: object = 1.0
    x_cov: object = 1.0
    noise_std: float = 0.0
    n_support: int = 10
    n_query: int = 10

    def __post_init__(self):
        _validate.integer(self.d_in, "d_in", minimum=1)
        _validate.integer(self.d_out, "d_out", minimum=1)
        _validate.integer(self.n_support, "n_support", minimum=1)
        _validate.integer(self.n_query, "n_query", minimum=1)
        _validate.finite_number(self.noise_std, "noise_std", nonnegative=True)
        # Normalise the parameters to arrays once; the dataclass is frozen, hence object.__setattr__.
        object.__setattr__(self, "task_mean", _matrix_param(self.task_mean, (self.d_out, self.d_in), "task_mean"))
        object.__setattr__(self, "task_cov", _covariance(self.task_cov, self.d_out * self.d_in, "task_cov"))
        object.__setattr__(self, "x_cov", _covariance(self.x_cov, self.d_in, "x_cov"))

    def sample_weights(self, n_tasks: int, rng: np.random.Generator) -> np.ndarray:
        """(n_tasks, d_out, d_in) task maps W_τ."""
        z = rng.standard_normal((n_tasks, self.d_out * self.d_in))
        vec = self.task_mean.reshape(-1, order="F") + z @ self._task_factor.T
        return vec.reshape(n_tasks, self.d_in, self.d_out).transpose(0, 2, 1)  # undo column-major vec


    def targets(self, X: np.ndarray, W: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Y = X Wᵀ + σ·noise, batched over the leading task axis."""
        Y = X @ np.swapaxes(W, -1, -2)
        if self.noise_std > 0:
            Y = Y + self.noise_std * rng.standard_normal(Y.shape)
        return Y



def orthonormal_basis(d: int, k: int, seed=0) -> np.ndarray:
    """A (d, k) matrix with orthonormal columns, uniformly distributed (Haar) given ``seed`` (an int
    or a ``numpy.random.Generator``): the Q factor of a Gaussian matrix with its signs fixed."""
    d = _validate.integer(d, "d", minimum=1)
    k = _validate.integer(k, "k", minimum=1)
    if k > d:
        raise ArgumentError("k", f"expected at most d = {d} columns, got {k}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    Q, R = np.linalg.qr(rng.standard_normal((d, k)))
    return Q * np.where(np.diag(R) < 0, -1.0, 1.0)  # the sign fix makes the distribution Haar


def principal_angle_distance(A, B) -> float:
    """sin of the largest principal angle between the column spaces of A (d, a) and B (d, b):
    ‖(I − P_A) Q_B‖₂ with P_A the orthogonal projector onto span A and Q_B an orthonormal basis of
    span B. 0 when span B ⊆ span A, 1 when some direction of B is orthogonal to A. This is the
    distance dist(B̂, B*) = ‖B̂_⊥ᵀ B*‖₂ of Collins et al. 2022 with A = B̂ the learned representation
    (columns: the d-dimensional feature directions, i.e. the transpose of a first layer W1 (k, d)).
    Columns of A or B that are numerically zero are dropped (rank by the SVD, relative 1e-12)."""
    A = _validate.real_matrix(A, "A")
    B = _validate.real_matrix(B, "B")
    if A.shape[0] != B.shape[0]:
        raise ArgumentError("B", f"expected {A.shape[0]} rows like A, got shape {B.shape}")

    def basis(M):
        U, s, _ = np.linalg.svd(M, full_matrices=False)
        return U[:, s > 1e-12 * max(s.max(initial=0.0), np.finfo(float).tiny)]

    QA, QB = basis(A), basis(B)
    if QB.shape[1] == 0:
        return 0.0
    residual = QB - QA @ (QA.T @ QB)
    return float(min(1.0, np.linalg.norm(residual, 2)))


@dataclasses.dataclass(frozen=True, eq=False)
class LowRankRegressionFamily(RegressionFamily):
    """Regression tasks on a hidden k-dimensional subspace: W_τ = M + H_τ Bᵀ, y = W_τ x + ε.

    ``rank`` is k; ``basis`` is B (d_in, k) with orthonormal columns, or None for a Haar-random one
    drawn from ``basis_seed``; ``head_cov`` is Λ, the (k, k) covariance of each row of the heads
    H_τ (d_out, k): a number (Λ = c·I), a length-k vector (diagonal, e.g. Collins et al.'s
    diag(1, …, 1, μ²)) or a PSD (k, k) matrix. Rows of H_τ are independent, so over column-major
    vec W_τ the task covariance is Ω = (B Λ Bᵀ) ⊗ I_{d_out}, of rank rank(Λ)·d_out: singular
    whenever k < d_in. ``task_cov`` is computed, not given. The other fields are those of
    :class:`RegressionFamily` (``task_mean`` M, ``x_cov`` Σ, ``noise_std`` σ, ``n_support``, ``n_query``).

    Sampling draws the heads and multiplies (no (d_in·d_out)² factorisation), so large d_in is cheap;
    ``sample(...).W`` are the task maps, :meth:`heads` recovers H_τ = (W_τ − M) B from them.
    """

    task_cov: object = dataclasses.field(default=None, init=False)
    rank: int = 1
    head_cov: object = 1.0
    basis: object = None
    basis_seed: int = 0

    def __post_init__(self):
        _validate.integer(self.d_in, "d_in", minimum=1)
        _validate.integer(self.d_out, "d_out", minimum=1)
        k = _validate.integer(self.rank, "rank", minimum=1)
        if k > self.d_in:
            raise ArgumentError("rank", f"expected at most d_in = {self.d_in}, got {k}")
        if self.basis is None:
            seed = _validate.integer(self.basis_seed, "basis_seed", minimum=0)
            B = orthonormal_basis(self.d_in, k, seed)
        else:
            B = _validate.real_matrix(self.basis, "basis")
            if B.shape != (self.d_in, k):
                raise ArgumentError("basis", f"expected shape {(self.d_in, k)} (d_in, rank), got {B.shape}")
            if not np.allclose(B.T @ B, np.eye(k), atol=1e-10):
                raise ArgumentError("basis", "expected orthonormal columns (Bᵀ B = I)")
        head = np.asarray(self.head_cov, dtype=np.float64) if not isinstance(self.head_cov, (str, bytes)) else None
        if head is None:
            raise ArgumentTypeError("head_cov", f"expected a number, a length-{k} vector or a ({k}, {k}) matrix")
        if head.ndim == 1:
            if head.shape != (k,) or not np.all(np.isfinite(head)) or np.any(head < 0):
                raise ArgumentError("head_cov", f"expected {k} finite non-negative variances, got {head.tolist()}")
            head = np.diag(head)
        else:
            head = _covariance(head, k, "head_cov")  # raises naming head_cov
        object.__setattr__(self, "basis", B)
        object.__setattr__(self, "head_cov", head)
        object.__setattr__(self, "task_cov", np.kron(B @ head @ B.T, np.eye(self.d_out)))
        super().__post_init__()

    @functools.cached_property
    def _head_factor(self) -> np.ndarray:
        return _psd_factor(self.head_cov)

    def sample_weights(self, n_tasks: int, rng: np.random.Generator) -> np.ndarray:
        """(n_tasks, d_out, d_in) task maps M + H_τ Bᵀ, rows of H_τ ~ N(0, Λ)."""
        heads = rng.standard_normal((n_tasks, self.d_out, self.rank)) @ self._head_factor.T
        return self.task_mean + heads @ self.basis.T

    def heads(self, W) -> np.ndarray:
        """H_τ = (W_τ − M) B, shape (…, d_out, k), for task maps W (…, d_out, d_in) of this family."""
        return (np.asarray(W, dtype=np.float64) - self.task_mean) @ self.basis


@dataclasses.dataclass(frozen=True, eq=False)
class ClassificationFamily(_GaussianFamily):
    """Binary classification tasks with a linear decision rule: y = 1[w_τᵀ x > 0] (d_out = 1).

    ``task_mean`` is μ (a number or a length-d_in vector), ``task_cov`` is Ω (a variance or a
    (d_in, d_in) matrix), ``x_cov`` is Σ, and ``flip`` the probability that a label is flipped.
    Labels are float arrays of shape (n, 1) with values in {0, 1}.
    """

    d_in: int
    task_mean: object = 0.0
    task_cov: object = 1.0
    x_cov: object = 1.0
    flip: float = 0.0
    n_support: int = 10
    n_query: int = 10

    def __post_init__(self):
        _validate.integer(self.d_in, "d_in", minimum=1)
        _validate.integer(self.n_support, "n_support", minimum=1)
        _validate.integer(self.n_query, "n_query", minimum=1)
        flip = _validate.finite_number(self.flip, "flip", nonnegative=True)
        if flip > 0.5:
            raise ArgumentError("flip", f"expected a probability in [0, 0.5], got {flip}")
        mean = np.asarray(self.task_mean, dtype=np.float64)
        mean = mean.reshape(1, -1) if mean.ndim == 1 else mean
        object.__setattr__(self, "task_mean", _matrix_param(mean, (1, self.d_in), "task_mean"))
        object.__setattr__(self, "task_cov", _covariance(self.task_cov, self.d_in, "task_cov"))
        object.__setattr__(self, "x_cov", _covariance(self.x_cov, self.d_in, "x_cov"))

    @property
    def d_out(self) -> int:
        return 1


    def sample_weights(self, n_tasks: int, rng: np.random.Generator) -> np.ndarray:
        z = rng.standard_normal((n_tasks, self.d_in))
        return (self.task_mean + z @ self._task_factor.T)[:, None, :]


    def targets(self, X: np.ndarray, W: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        Y = (X @ np.swapaxes(W, -1, -2) > 0).astype(np.float64)
        if self.flip > 0:
            flips = rng.random(Y.shape) < self.flip
            Y = np.where(flips, 1.0 - Y, Y)
        return Y


@dataclasses.dataclass(frozen=True, eq=False)
class SinusoidFamily:
    """Sine regression tasks y = A sin(x − φ) (Finn et al. 2017; see the module docstring).

    ``amplitude``, ``phase`` and ``x_range`` are the (low, high) bounds of the uniform distributions
    of A, φ and x; ``n_support`` (K) and ``n_query`` (Q) the points per task. ``sample(n_tasks, seed)``
    gives a :class:`TaskBatch` with Xs (T, K, 1), Ys (T, K, 1), Xq (T, Q, 1), Yq (T, Q, 1) and
    W (T, 2) = (A, φ) per task; the same seed gives the same numbers.
    """

    n_support: int = 10
    n_query: int = 10
    amplitude: tuple = (0.1, 5.0)
    phase: tuple = (0.0, np.pi)
    x_range: tuple = (-5.0, 5.0)

    def __post_init__(self):
        _validate.integer(self.n_support, "n_support", minimum=1)
        _validate.integer(self.n_query, "n_query", minimum=1)
        for name in ("amplitude", "phase", "x_range"):
            object.__setattr__(self, name, _interval(getattr(self, name), name))

    d_in = 1
    d_out = 1

    def sample(self, n_tasks: int, seed=0) -> TaskBatch:
        """Draw ``n_tasks`` tasks; ``seed`` is an int or a ``numpy.random.Generator``."""
        _validate.integer(n_tasks, "n_tasks", minimum=1)
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        amplitude = rng.uniform(*self.amplitude, size=n_tasks)
        phase = rng.uniform(*self.phase, size=n_tasks)
        Xs = rng.uniform(*self.x_range, size=(n_tasks, self.n_support, 1))
        Xq = rng.uniform(*self.x_range, size=(n_tasks, self.n_query, 1))
        return TaskBatch(Xs, self.targets(Xs, amplitude, phase), Xq, self.targets(Xq, amplitude, phase),
                         np.stack([amplitude, phase], axis=1))

    @staticmethod
    def targets(X: np.ndarray, amplitude: np.ndarray, phase: np.ndarray) -> np.ndarray:
        """Y = A sin(X − φ), batched over the leading task axis (A, φ of shape (T,))."""
        return amplitude[:, None, None] * np.sin(X - phase[:, None, None])


#: The largest magnitude of an interval bound of :class:`SinusoidFamily`: numpy's uniform draws
#: need ``high - low`` finite, and the targets ``A sin(x - φ)`` need ``x - φ`` finite.
INTERVAL_MAX = 1e100


def _interval(value, name: str) -> tuple[float, float]:
    """(low, high) finite numbers within ±:data:`INTERVAL_MAX` with low <= high, or raise naming ``name``."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ArgumentTypeError(name, f"expected a (low, high) pair of numbers, got {value!r}")
    low, high = (_validate.finite_number(v, f"{name}[{i}]") for i, v in enumerate(value))
    for i, v in enumerate((low, high)):
        if abs(v) > INTERVAL_MAX:
            raise ArgumentError(f"{name}[{i}]", f"expected a number within ±{INTERVAL_MAX:g} (the draws and the "
                                                f"targets overflow float64 beyond it), got {v:g}")
    if low > high:
        raise ArgumentError(name, f"expected low <= high, got ({low}, {high})")
    return low, high
