"""The input-mask distribution P' of Multi-Pass Progressive Inference (seed 000, Sec. 3.2.3-3.2.4, App. C).

Notation (docs/progressive.md derives every formula). Units are numbered 1..n. A coalition is indexed by a
*cell* (k, l): its size k and its last active unit l. An *input mask* (i, j) is unit j active plus i−1 units
drawn uniformly from 1..j−1; with the extension trick (Eq. 17) all units after j are active too, so one pass
has i' = i + n − j active units and yields i' distinct prefix coalitions (one ending at each active unit),
each counted with weight 1/i'. The pooled coalition distribution is then P^D = A·P' (Eq. 15), with A the
(k, l)×(i, j) matrix built by ``transfer_matrix``. Cell arrays are ``[n+1, n+1]`` float arrays indexed
``[size, last unit]`` (1-based; row/column 0 and cells with size > last unit are 0).

``mask_distribution(n)`` returns the distribution MP-PI samples from: the NNLS-optimised P' (Eq. 16) for
n ≤ ``max_n``, else the "Shap" variant of Table 4 (input masks drawn from the Shapley kernel itself).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import nnls
from scipy.special import comb

log = logging.getLogger(__name__)

DEFAULT_MAX_N = 30  # above this, the "Shap" variant is used (NNLS on n(n+1)/2 unknowns gets slow)
MAX_UNITS = 1000  # binomials of n/2 overflow float64 beyond about n = 1020
CACHE_VERSION = 1  # bump when the fitting changes, so stale on-disk P' are not reused
SUM_WEIGHT = 1e3  # weight of the appended Σ P' = 1 row in the NNLS system


def shapley_sizes(n: int) -> np.ndarray:
    """P*_k ∝ 1/(k(n−k)) over k = 1..n−1, normalised (Sec. 3.2.3): [n+1], zero at k = 0 and k = n."""
    _check_n(n)
    p = np.zeros(n + 1)
    k = np.arange(1, n)
    p[1:n] = 1.0 / (k * (n - k))
    return p / p.sum()


def shapley_cells(n: int) -> np.ndarray:
    """P*(k, l) = P*_k·C(l−1, k−1)/C(n, k) (Eq. 13): [n+1, n+1]; zero for k = n (a constraint, not a sample)."""
    k, l = _grid(n)
    cells = shapley_sizes(n)[k] * comb(l - 1, k - 1) / comb(n, k)
    return np.where(_valid(k, l, n), cells, 0.0)


def transfer_matrix(n: int) -> np.ndarray:
    """A with P^D = A·P' (Eq. 15 with the extension trick of Eq. 17): [n+1, n+1, n+1, n+1] indexed [k, l, i, j].

    A[k, l, i, j] is the expected share, among the i' = i + n − j coalitions one pass of input mask (i, j)
    yields, of those in cell (k, l): for l < j, C(l−1, k−1)·C(j−1−l, i−1−k)/C(j−1, i−1)/i' (l is one of the
    i−1 drawn units and k−1 of them lie before it); for l ≥ j, 1/i' at k = i + l − j (every unit from j on
    is active). Each column (i, j) sums to 1.
    """
    _check_n(n)
    k, l = _grid(n)
    a = np.zeros((n + 1,) * 4)
    for i, j in zip(*np.nonzero(_valid(*_grid(n), n))):
        ip = i + n - j
        before = comb(l - 1, k - 1) * comb(j - 1 - l, i - 1 - k) / comb(j - 1, i - 1) / ip
        a[:, :, i, j] = np.where((l < j) & (k <= i - 1) & _valid(k, l, n), before, 0.0)
        after = (l >= j) & (k == i + l - j)
        a[:, :, i, j] += np.where(after, 1.0 / ip, 0.0)
    return a


def pooled_distribution(p_mask: np.ndarray) -> np.ndarray:
    """P^D = A·P' for any n in O(n²), without building A: [n+1, n+1] from P' [n+1, n+1].

    The l < j part of A·P' is Σ_{a,b ≥ 0} C(l−1, k−1)·C(a, b)·M[l+1+a, k+1+b] with a = j−1−l, b = i−1−k and
    M[j, i] = P'(i, j)/(i'·C(j−1, i−1)); Pascal's rule C(a, b) = C(a−1, b) + C(a−1, b−1) turns the double sum
    H[p, q] = Σ C(a, b)·M[p+a, q+b] into H[p, q] = M[p, q] + H[p+1, q] + H[p+1, q+1]. The l ≥ j part is a
    cumulative sum along each diagonal k − l = i − j.
    """
    n = p_mask.shape[0] - 1
    _check_n(n)
    i, j = _grid(n)
    valid = _valid(i, j, n)
    m = np.zeros((n + 2, n + 2))  # m[j, i], one row/column of zero padding for H[p+1, q+1]
    m[: n + 1, : n + 1] = np.where(
        valid, p_mask / np.where(valid, (i + n - j) * comb(j - 1, i - 1), 1.0), 0.0
    ).T
    h = np.zeros((n + 3, n + 2))
    for p in range(n, 0, -1):
        h[p, :-1] = m[p, :-1] + h[p + 1, :-1] + h[p + 1, 1:]
    k, l = _grid(n)
    out = np.where(valid, comb(l - 1, k - 1) * h[l + 1, k + 1], 0.0)  # [k, l] reads H[l+1, k+1]
    for d in range(-(n - 1), 1):  # diagonal k − l = d: input masks (j + d, j) with j ≤ l feed cell (l + d, l)
        js = np.arange(1 - d, n + 1)
        out[js + d, js] += np.cumsum(p_mask[js + d, js]) / (n + d)
    return out


def size_marginal(cells: np.ndarray) -> np.ndarray:
    """Σ_l cells[k, l]: the distribution over coalition sizes k = 0..n, [n+1]."""
    return cells.sum(1)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(p - q).sum())


@dataclass(frozen=True)
class MaskDistribution:
    """What MP-PI samples from and reweights by. Cell arrays are [n+1, n+1] (see the module docstring)."""

    n: int
    variant: str  # "opt" (NNLS-optimised P', Eq. 16) or "shap" (P' = P*, Table 4)
    p_mask: np.ndarray  # P'(i, j)
    pooled: np.ndarray  # P^D(k, l) = A·P'
    target: np.ndarray  # P*(k, l)

    def weights(self) -> np.ndarray:
        """Kernel SHAP regression weights w = P*/P^D per cell (Sec. 3.2.3, after Eq. 16); 0 where P^D = 0."""
        return np.divide(self.target, self.pooled, out=np.zeros_like(self.target), where=self.pooled > 0)

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` input masks with the extension trick applied: bool [count, n] (unit 1 is column 0)."""
        flat = self.p_mask.ravel() / self.p_mask.sum()
        cells = rng.choice(flat.size, size=count, p=flat)
        out = np.zeros((count, self.n), dtype=bool)
        for r, c in enumerate(cells):
            i, j = divmod(int(c), self.n + 1)
            out[r, rng.choice(j - 1, size=i - 1, replace=False)] = True
            out[r, j - 1 :] = True  # unit j and, by the extension trick, every unit after it
        return out


def mask_distribution(n: int, max_n: int = DEFAULT_MAX_N, disk_cache: bool = True) -> MaskDistribution:
    """The optimised P' for n ≤ ``max_n`` (cached), else the "Shap" variant; n ≥ 2 units."""
    if n <= max_n:
        p_mask = optimized_mask_distribution(n, disk_cache)
        variant = "opt"
    else:
        p_mask = shapley_cells(n)
        variant = "shap"
    return MaskDistribution(n, variant, p_mask, pooled_distribution(p_mask), shapley_cells(n))


def optimized_mask_distribution(n: int, disk_cache: bool = True) -> np.ndarray:
    """P' ≥ 0, ΣP' = 1 minimising |A·P' − P*| (Eq. 16), by NNLS: [n+1, n+1], read-only, cached per n."""
    if not disk_cache:
        return _fit_cached(n)
    path = _cache_path(n)
    if path.exists():
        return _readonly(np.load(path))
    p = _fit_cached(n)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, p)
    tmp.replace(path)  # atomic: concurrent runs never read half a file
    return p


@functools.lru_cache(maxsize=64)
def _fit_cached(n: int) -> np.ndarray:
    return _readonly(fit_mask_distribution(n))


def fit_mask_distribution(n: int) -> np.ndarray:
    """Solve Eq. 16 with ``scipy.optimize.nnls``; ΣP' = 1 enters as a heavily weighted row of ones."""
    _check_n(n)
    k, l = _grid(n)
    rows = _valid(k, l, n)  # every cell a pass can produce, the full coalition (n, n) included (target 0)
    a = transfer_matrix(n)[rows][:, rows]  # [cells, cells]
    a = np.vstack([a, np.full((1, a.shape[1]), SUM_WEIGHT)])
    b = np.append(shapley_cells(n)[rows], SUM_WEIGHT)
    x, _ = nnls(a, b, maxiter=50 * a.shape[1])
    p = np.zeros((n + 1, n + 1))
    p[rows] = x / x.sum()
    return p


def _cache_path(n: int) -> Path:
    from amlx.assets import cache_dir

    return cache_dir() / "pi" / f"p_mask_v{CACHE_VERSION}_n{n}.npy"


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of an [n+1, n+1] cell array."""
    r = np.arange(n + 1)
    return r[:, None], r[None, :]


def _valid(size: np.ndarray, last: np.ndarray, n: int) -> np.ndarray:
    """Cells a coalition (or input mask) can occupy: 1 ≤ size ≤ last ≤ n."""
    return (size >= 1) & (size <= last) & (last <= n)


def _check_n(n: int) -> None:
    if not 2 <= n <= MAX_UNITS:
        raise ValueError(
            f"MP-PI needs 2..{MAX_UNITS} units, got {n}; with more, explain sentences (unit='sentence') instead of "
            "words or tokens"
        )
