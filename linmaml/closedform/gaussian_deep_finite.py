"""Exact expected query loss of a DEPTH-2 linear net after one inner step on n support points (numpy).

Setting (:mod:`linmaml.closedform.gaussian`): x ~ N(0, Σ), vec W_τ ~ N(vec M, Ω) (column-major vec),
y = W_τ x + ε, ε ~ N(0, σ² I_o); n support points X (n, d), support noise E (n, o). The model is
[W1, W2] (W1 (h, d) applied first, W2 (o, h), any width h, any d_out = o ≥ 1), W_e = W2 W1.

The adapted map
---------------
The support loss 1/(2n)·‖X W_eᵀ − Y‖² has gradient G = (W_e − W_τ)Σ̂ − N with respect to W_e, where
Σ̂ = XᵀX/n and N = EᵀX/n. One step of size α on both layers (W1 − α W2ᵀG, W2 − α G W1ᵀ) gives

    W_e′ = W_e − α(A G + G B) + α² G Vᵀ G,      A = W2W2ᵀ (o, o), B = W1ᵀW1 (d, d), V = W_e

(W1ᵀW2ᵀ = W_eᵀ), so with μ = W_e − M, Z = W_τ − M ~ N(0, Ω) and D = μ − Z the query residual is

    R = W_e′ − W_τ = D − α(A G + G B) + α² G Vᵀ G,      G = μΣ̂ − ZΣ̂ − N,

and the expected query loss is ½·E tr(R Σ Rᵀ) + ½·o·σ² (the query point and its noise are fresh).
Expanding, R is a sum of 17 *words*: signed products of the weight matrices (slots μ, A, B, Vᵀ) and
the random matrices Z, Σ̂, N, each with a power of α (α^(#A + #B + 2·#Vᵀ)). tr(R Σ Rᵀ) is the sum
over ordered pairs of words (w₁, w₂) of the closed ring tr(w₁ Σ w₂ᵀ).

The expectation of one ring, exactly
------------------------------------
1. Condition on X. Then Z and N are independent centred Gaussians: Cov(Z_ia, Z_jb) = Ω at the
   column-major positions (i + o·a, j + o·b), and Cov(N_ia, N_jb | X) = (σ²/n)·δ_ij·Σ̂_ab (N depends
   on X only through Σ̂). By Isserlis (Wick), E[ring | Σ̂] is the sum over all perfect pairings of its
   Z factors and of its N factors of the ring with each Z pair replaced by Ω and each N pair by
   (σ²/n)·δ·Σ̂ (odd counts give 0).
2. What is left is a polynomial in Σ̂ of degree k ≤ 4. Isserlis over the rows of X (Cov(x_ta, x_t′b) =
   δ_tt′ Σ_ab) gives the Wishart moments in closed form:

       E[Σ̂_{a₁b₁} ⋯ Σ̂_{a_k b_k}] = Σ_m n^(c(m) − k) ∏_{(p, q) ∈ m} Σ_{pq},

   the sum over the (2k − 1)!! perfect matchings m of the 2k indices, c(m) the number of connected
   components of the graph on the k factors that m links (each link forces equal sample indices t,
   so the sum over t counts n^c(m)). k = 2 is E[Σ̂AΣ̂] = ΣAΣ + (ΣAᵀΣ + tr(AΣ)Σ)/n
   (:func:`~linmaml.closedform.gaussian.wishart_moment`).
3. Each ring's expectation is one tensor contraction (numpy einsum) with the weight slots left open: an
   "environment" tensor per ring, depending only on the family (Σ, Ω, σ, n), summed over rings with
   the same sequence of slots. The loss is then Σ_signatures α^p·⟨environment, slot ⊗ … ⊗ slot⟩, a
   polynomial in (μ, A, B, V) evaluated by small contractions; the environments are computed once per
   family component and cached.

Everything is exact in float64 (sums of products; no sampling, no quadrature). As n → ∞ only the
matching with c(m) = k survives (Σ̂ → Σ) and the N terms vanish: the population expectation of
:mod:`linmaml.closedform.gaussian_deep` is the limit. The gradient with respect to W1 and W2 is
derived by hand: each signature's multilinear form differentiated slot by slot, then the chain rule
through μ = W2W1 − M, Vᵀ = (W2W1)ᵀ, A = W2W2ᵀ, B = W1ᵀW1 (∂/∂W1 = W2ᵀ(∂_μ + ∂_Vᵀᵀ) + W1(∂_B + ∂_Bᵀ),
∂/∂W2 = (∂_μ + ∂_Vᵀᵀ)W1ᵀ + (∂_A + ∂_Aᵀ)W2).

Cost: the environments have (o·d)^(#μ + #V) · o^(2#A) · d^(2#B) entries, at most (o·d)^6 (rings with
six μ/Vᵀ slots), and the 4th Wishart moment d^8 entries; families beyond 2^24 entries for either are
refused (``ArgumentError`` naming ``family``: o·d ≤ 16 and d ≤ 8). Measured for figure 3's d = 4,
o = 1, width 8 on the 2-core machine: 0.25–0.4 s to set up the environments once, 7 ms per value
and gradient. Depth ≥ 3 and more than one step are
not covered (the adapted map has degree 3 or more in G, needing Wishart moments of order ≥ 6).
"""
from __future__ import annotations

import itertools
import weakref

import numpy as np

from linmaml.errors import ArgumentError

#: Weight slots (open in the environments) and their shapes in terms of (o, d).
_SLOTS = ("mu", "A", "B", "Vt")
#: Largest environment or Wishart moment tensor built (entries; 2^24 float64 = 128 MiB).
_MAX_ENTRIES = 2 ** 24


def _shape(name: str, o: int, d: int) -> tuple[int, int]:
    return {"mu": (o, d), "Z": (o, d), "N": (o, d), "A": (o, o), "B": (d, d), "Vt": (d, o), "S": (d, d),
            "Sig": (d, d)}[name]


def _words() -> list[tuple[float, int, tuple[str, ...]]]:
    """The 17 words of R = D − α(A G + G B) + α² G Vᵀ G as (sign, power of α, factor names)."""
    G = [(1.0, ("mu", "S")), (-1.0, ("Z", "S")), (-1.0, ("N",))]
    words = [(1.0, 0, ("mu",)), (-1.0, 0, ("Z",))]
    words += [(-c, 1, ("A",) + g) for c, g in G]
    words += [(-c, 1, g + ("B",)) for c, g in G]
    words += [(c1 * c2, 2, g1 + ("Vt",) + g2) for c1, g1 in G for c2, g2 in G]
    return words


def perfect_matchings(items):
    """Every perfect matching of the list ``items`` (a list of pairs); none for an odd count."""
    items = list(items)
    if not items:
        yield []
        return
    if len(items) % 2:
        return
    first, rest = items[0], items[1:]
    for k, partner in enumerate(rest):
        for tail in perfect_matchings(rest[:k] + rest[k + 1:]):
            yield [(first, partner)] + tail


def _components(k: int, matching) -> int:
    """Connected components of the graph on k factors linked by a matching of their 2k indices."""
    parent = list(range(k))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for p, q in matching:
        parent[find(p // 2)] = find(q // 2)
    return len({find(a) for a in range(k)})


def wishart_moment_tensor(Sigma: np.ndarray, n: int, k: int) -> np.ndarray:
    """E[Σ̂_{a₁b₁} ⋯ Σ̂_{a_k b_k}] as a (d,)·2k tensor (indices a₁, b₁, …, a_k, b_k); Σ̂ = XᵀX/n, rows of
    X i.i.d. N(0, Σ). Sum over the matchings m of the 2k indices of n^(c(m) − k)·∏ Σ (module docstring)."""
    d = Sigma.shape[0]
    out = np.zeros((d,) * (2 * k))
    if k == 0:
        return np.ones(())
    for matching in perfect_matchings(list(range(2 * k))):
        weight = float(n) ** (_components(k, matching) - k)
        operands = []
        for p, q in matching:
            operands += [Sigma, [p, q]]
        out += weight * np.einsum(*operands, list(range(2 * k)))
    return out


def _ring(w1, w2):
    """tr(w1 Σ w2ᵀ) as factors (name, row label, column label) around a closed index ring."""
    factors, label = [], 0
    for name in w1:
        factors.append((name, label, label + 1))
        label += 1
    factors.append(("Sig", label, label + 1))
    label += 1
    for name in reversed(w2):  # (F₁⋯F_m)ᵀ = F_mᵀ⋯F₁ᵀ: F_mᵀ has (row, col) = (label, label + 1)
        factors.append((name, label + 1, label))
        label += 1
    close = label
    factors = [(nm, 0 if r == close else r, 0 if c == close else c) for nm, r, c in factors]
    return factors, close + 1


class _Environment:
    """The environments of one family component: {signature (slot names): (power of α, tensor)}."""

    def __init__(self, family):
        o, d = family.d_out, family.d_in
        if max((o * d) ** 6, d ** 8) > _MAX_ENTRIES:
            raise ArgumentError("family", f"the exact finite-n expectation needs tensors of (d_out·d_in)^6 = "
                                          f"{(o * d) ** 6} and d_in^8 = {d ** 8} entries, above {_MAX_ENTRIES}; "
                                          f"expected d_out·d_in ≤ 16 and d_in ≤ 8")
        self.o, self.d = o, d
        Sigma = np.asarray(family.x_cov, dtype=np.float64)
        Omega4 = family.task_cov.reshape(d, o, d, o).transpose(1, 0, 3, 2)  # Cov(Z_ia, Z_jb) at [i, a, j, b]
        n = family.n_support
        noise = family.noise_std ** 2 / n
        moments = [wishart_moment_tensor(Sigma, n, k) for k in range(5)]
        self.constant = 0.5 * o * family.noise_std ** 2
        envs: dict[tuple[str, ...], list] = {}
        words = _words()
        for (c1, p1, w1), (c2, p2, w2) in itertools.product(words, words):
            factors, free = _ring(w1, w2)
            slots = [f for f in factors if f[0] in _SLOTS]
            Zs = [f for f in factors if f[0] == "Z"]
            Ns = [f for f in factors if f[0] == "N"]
            if len(Zs) % 2 or len(Ns) % 2:
                continue
            base, output = [], []
            for name, r, c in factors:
                if name == "Sig":
                    base += [Sigma, [r, c]]
            for name, r, c in slots:  # a fresh pair of output labels per slot, tied by identities
                rows, cols = _shape(name, o, d)
                base += [np.eye(rows), [r, free], np.eye(cols), [c, free + 1]]
                output += [free, free + 1]
                free += 2
            total = 0.0
            for zm in perfect_matchings(Zs):
                for nm in perfect_matchings(Ns):
                    operands = list(base)
                    for (_, r1, c1_), (_, r2, c2_) in zm:
                        operands += [Omega4, [r1, c1_, r2, c2_]]
                    S_labels = [(r, c) for name, r, c in factors if name == "S"]
                    for (_, r1, c1_), (_, r2, c2_) in nm:
                        operands += [np.eye(o), [r1, r2]]
                        S_labels.append((c1_, c2_))
                    operands += [moments[len(S_labels)], [lab for pair in S_labels for lab in pair]]
                    total = total + noise ** len(nm) * np.einsum(*operands, output, optimize="greedy")
            signature = tuple(f[0] for f in slots)
            power = p1 + p2
            entry = envs.setdefault(signature, [power, 0.0])
            entry[1] = entry[1] + c1 * c2 * total
        self.terms = [(sig, power, np.asarray(env)) for sig, (power, env) in envs.items()]

    def value_and_slot_grads(self, slots: dict, lr: float, grad: bool = True):
        """(E[query loss], {slot: ∂/∂slot}) for slot matrices {"mu": (o, d), "A", "B", "Vt"}.

        Each signature contributes α^p·T(v₁, …, v_k) with T multilinear; its derivative in the slot at
        position j is T with every slot but the j-th contracted (the product rule over the k slots).
        Plain np.einsum loops, not BLAS (a multithreaded BLAS fights for the cores over tensors this
        small)."""
        total = self.constant
        grads = {name: np.zeros_like(slots[name]) for name in _SLOTS}
        letters = "abcdefgh"
        for signature, power, env in self.terms:
            scale = 0.5 * np.float64(lr) ** power  # overflow gives inf (checked by the caller), no OverflowError
            if not signature:  # rings of random factors only (e.g. tr(ZΣZᵀ)): no weights
                total += scale * env.item()
                continue
            k = len(signature)
            vectors = [slots[name].reshape(-1) for name in signature]
            T = env.reshape([v.size for v in vectors])
            subscripts = letters[:k]
            total += scale * float(np.einsum(subscripts + "," + ",".join(subscripts), T, *vectors))
            if grad:
                for j, name in enumerate(signature):
                    others = [letters[i] for i in range(k) if i != j]
                    g = np.einsum(",".join([subscripts] + others) + "->" + letters[j], T,
                                  *[vectors[i] for i in range(k) if i != j])
                    grads[name] += scale * g.reshape(slots[name].shape)
        return total, grads


_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _environment(family) -> _Environment:
    env = _CACHE.get(family)
    if env is None:
        env = _Environment(family)
        _CACHE[family] = env
    return env


def _value_and_grad(layers, mixture, lr, grad: bool):
    """Σ_c π_c E_c[query loss] and its gradient [∂/∂W1, ∂/∂W2] by the chain rule through
    μ = W2W1 − M, Vᵀ = (W2W1)ᵀ, A = W2W2ᵀ, B = W1ᵀW1."""
    W1, W2 = layers
    V = W2 @ W1
    total, dW1, dW2 = 0.0, np.zeros_like(W1), np.zeros_like(W2)
    with np.errstate(all="ignore"):
        for weight, comp in zip(mixture.weights, mixture.components):
            slots = {"mu": V - comp.task_mean, "A": W2 @ W2.T, "B": W1.T @ W1, "Vt": V.T}
            value, g = _environment(comp).value_and_slot_grads(slots, lr, grad)
            total += weight * value
            if grad:
                dV = g["mu"] + g["Vt"].T
                dW1 += weight * (W2.T @ dV + W1 @ (g["B"] + g["B"].T))
                dW2 += weight * (dV @ W1.T + (g["A"] + g["A"].T) @ W2)
    return total, [dW1, dW2]


def _finite_or_raise(value, grads, layers, mixture, lr):
    if np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads):
        return
    if lr != 0 and np.isfinite(_value_and_grad(layers, mixture, 0.0, False)[0]):
        raise ArgumentError("lr", "the expected loss after the inner step overflows float64; expected a smaller "
                                  "learning rate")
    raise ArgumentError("weights", "the expected loss overflows float64 for these weights and family; expected "
                                   "smaller weights (or smaller family scales)")


def finite_n_expected_loss(layers, mixture, lr: float) -> float:
    """E[query loss] after one inner step on n support points (validated [W1, W2], a TaskMixture)."""
    layers = [np.asarray(W, dtype=np.float64) for W in layers]
    value, grads = _value_and_grad(layers, mixture, lr, False)
    _finite_or_raise(value, grads, layers, mixture, lr)
    return float(value)


def finite_n_expected_loss_and_grad(layers, mixture, lr: float):
    """(value, [∂/∂W1, ∂/∂W2]): the exact polynomial and its hand-derived gradient (chain rule through the
    slots; each signature's multilinear form differentiated slot by slot)."""
    layers = [np.asarray(W, dtype=np.float64) for W in layers]
    value, grads = _value_and_grad(layers, mixture, lr, True)
    _finite_or_raise(value, grads, layers, mixture, lr)
    return float(value), grads
