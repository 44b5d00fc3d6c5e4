"""K-means arithmetic in numpy, shared by the driver (on a bounded sample) and the executors
(one Lloyd step's sums per partition): greedy k-means++ seeding, Lloyd iterations, the cost,
and the silhouette Spark's `ClusteringEvaluator` computes (squared Euclidean).

No Spark import: the executors' Python workers load this module for every Lloyd step.
"""

from __future__ import annotations

import math

import numpy as np


def squared_distances(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """n x k squared Euclidean distances (never below 0)."""
    d = (x * x).sum(1)[:, None] - 2.0 * x @ centres.T + (centres * centres).sum(1)[None, :]
    return np.maximum(d, 0.0)


def kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding (each step the best of 2 + log k candidates, as scikit-learn)."""
    n = len(x)
    trials = 2 + int(math.log(k))
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.integers(n)]
    closest = squared_distances(x, centres[:1])[:, 0]
    for c in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than k: repeat one
            centres[c] = x[rng.integers(n)]
            continue
        picks = np.searchsorted(np.cumsum(closest), rng.random(trials) * total)
        picks = np.minimum(picks, n - 1)
        candidates = np.minimum(closest[None, :], squared_distances(x, x[picks]).T)
        best = int(np.argmin(candidates.sum(1)))
        centres[c], closest = x[picks[best]], candidates[best]
    return centres


def step_sums(x: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """One Lloyd step's sufficient statistics: per-centre sums of the points nearest to it,
    their counts, and the cost (sum of squared distances to the nearest centre)."""
    d = squared_distances(x, centres)
    nearest = d.argmin(1)
    k = len(centres)
    sums = _sums(x, nearest, k)
    counts = np.bincount(nearest, minlength=k).astype(np.float64)
    return sums, counts, float(d[np.arange(len(x)), nearest].sum())


def _sums(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """k x d sums of the rows of `x` per label (one bincount per column: far faster than np.add.at)."""
    return np.column_stack([np.bincount(labels, weights=x[:, j], minlength=k) for j in range(x.shape[1])]) \
        if len(x) else np.zeros((k, x.shape[1]))


def update(centres: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, float]:
    """New centres from a step's sums (a centre no point chose stays where it was, as in
    Spark's KMeans) and the largest distance a centre moved."""
    new = centres.copy()
    filled = counts > 0
    new[filled] = sums[filled] / counts[filled, None]
    return new, float(np.sqrt(((new - centres) ** 2).sum(1)).max())


def lloyd(x: np.ndarray, centres: np.ndarray, max_iter: int, tol: float) -> tuple[np.ndarray, float, int]:
    """Lloyd iterations until no centre moves more than `tol` (Spark's convergence rule) or
    `max_iter`; (centres, cost of those centres, iterations)."""
    it = 0
    for it in range(1, max_iter + 1):
        sums, counts, _ = step_sums(x, centres)
        centres, move = update(centres, sums, counts)
        if move <= tol:
            break
    return centres, step_sums(x, centres)[2], it


def fit(x: np.ndarray, k: int, n_init: int, seed: int, max_iter: int, tol: float) -> tuple[np.ndarray, float]:
    """The lowest-cost of `n_init` seeded k-means++ + Lloyd runs (seeds seed, seed+1, ...)."""
    best = None
    for i in range(n_init):
        centres, cost, _ = lloyd(x, kmeans_pp(x, k, np.random.default_rng(seed + i)), max_iter, tol)
        if best is None or cost < best[1]:
            best = (centres, cost)
    return best


def silhouette(x: np.ndarray, centres: np.ndarray) -> float:
    """Mean silhouette of the points assigned to their nearest centre, with squared Euclidean
    dissimilarity as Spark's ClusteringEvaluator defines it: a point's mean distance to a
    cluster from the cluster's count, sum and sum of squared norms (O(n k)); its own cluster's
    mean excludes itself; a point alone in its cluster scores 0."""
    k = len(centres)
    labels = squared_distances(x, centres).argmin(1)
    norms = (x * x).sum(1)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    sums = _sums(x, labels, k)
    psi = np.bincount(labels, weights=norms, minlength=k)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_d = norms[:, None] - 2.0 * (x @ sums.T) / counts[None, :] + (psi / counts)[None, :]
    own_n = counts[labels]
    rows = np.arange(len(x))
    with np.errstate(divide="ignore", invalid="ignore"):
        a = mean_d[rows, labels] * own_n / (own_n - 1)
    others = mean_d.copy()
    others[rows, labels] = np.inf
    others[:, counts == 0] = np.inf
    b = others.min(1)
    s = np.where(a < b, 1 - a / b, np.where(a > b, b / a - 1, 0.0))
    s = np.where(own_n <= 1, 0.0, s)
    return float(s.mean())
