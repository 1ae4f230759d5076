"""Identifiability metrics: functions of arrays that return numbers (or one number per dimension). The
logs' Lin. and Perm. are the means of linear_r2_per_dimension and matched_correlations."""

import collections

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score


def _as_numpy(x):
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def linear_r2_per_dimension(z, hz):
    """(n,) R² of each z_i (z: (N, n)) predicted by the OLS fit hz (N, m) -> z with intercept, on the
    fitting data: 1 where z_i is an affine function of hz, about 0 where hz holds nothing of it."""
    z, hz = _as_numpy(z), _as_numpy(hz)
    pred = LinearRegression().fit(hz, z).predict(hz)
    return r2_score(z, pred, multioutput="raw_values")


def correlation_matrix(z, hz):
    """(n, m) Pearson correlations between the columns of z and of hz."""
    z, hz = _as_numpy(z), _as_numpy(hz)
    zc, hc = z - z.mean(0), hz - hz.mean(0)
    zs, hs = np.sqrt((zc * zc).sum(0)), np.sqrt((hc * hc).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (zc.T @ hc) / np.outer(zs, hs)
    # A constant column correlates with nothing.
    return np.nan_to_num(corr, nan=0.0)


def matched_correlations(z, hz):
    """(n,) |corr| of each z_i with the dimension of hz matched to it in the one-to-one matching
    that maximises Σ|corr| (Hungarian algorithm); in [0, 1], in z's order (for n <= m)."""
    corr = np.abs(correlation_matrix(z, hz))
    rows, cols = linear_sum_assignment(corr, maximize=True)
    out = np.zeros(corr.shape[0])
    out[rows] = corr[rows, cols]
    return out


def lambda_groups(lam):
    """The groups of equal values of a ground-truth Λ's diagonal: a list of index arrays, in order of
    first appearance (bimodal: two groups; linearly spaced: one per dimension)."""
    lam = np.asarray(lam, dtype=np.float64)
    return [np.flatnonzero(lam == value) for value in dict.fromkeys(lam.tolist())]


def _orthonormal_basis(x):
    """An orthonormal basis (N, r) of the centred columns of x, r its numerical rank."""
    x = x - x.mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    keep = s > s[0] * 1e-10 if s.size and s[0] > 0 else np.zeros_like(s, dtype=bool)
    return u[:, keep]


def canonical_correlations(x, y):
    """The canonical correlations of the columns of x (N, d) and y (N, e), largest first: the cosines
    of the principal angles between their centred column spaces; min(d, e) values in [0, 1]."""
    qx, qy = _orthonormal_basis(_as_numpy(x)), _orthonormal_basis(_as_numpy(y))
    cc = np.zeros(min(x.shape[1], y.shape[1]))
    if qx.shape[1] and qy.shape[1]:
        s = np.linalg.svd(qx.T @ qy, compute_uv=False)
        cc[:s.size] = np.clip(s, 0.0, 1.0)
    return cc


BlockScores = collections.namedtuple("BlockScores", "score orth groups")


def block_identifiability(z, hz, groups):
    """How well h maps z to hz = h(z) in the theorem's block-orthogonal form, the blocks being the groups of
    latents of equal ground-truth λ.

    1. |G_b| outputs are assigned to group b by the one-to-one matching (Hungarian, on the group columns
       repeated |G_b| times) that maximises the sum of the multiple correlations R(hz_j | z_{G_b}), the
       square root of the R² of the least-squares fit of output j from z_{G_b}.
    2. Per group, the canonical correlations ρ_1..ρ_d between z_{G_b} and its outputs hz_{A_b} alone: all 1
       when the block's latents are an affine function of those outputs.
    3. Per group, the least-squares map W_b with hz_{A_b} ≈ W_b z_{G_b} + c; the singular values of all W_b
       together say how far h is from one orthogonal map (times a scale).

    Returns BlockScores: score, the mean of all n canonical correlations (1 for any block-orthogonal h; with
    all λ distinct each group is one latent, ρ = |corr(z_i, hz_{a(i)})|, and the score is Perm.); orth,
    σ_min / σ_max of all W_b's singular values (1 for an orthogonal map up to one scale); groups, the mean ρ
    of each group, in ``groups``' order.
    """
    z, hz = _as_numpy(z), _as_numpy(hz)
    n = z.shape[1]
    fit = np.zeros((hz.shape[1], len(groups)))  # R(hz_j | z_{G_b})
    for b, idx in enumerate(groups):
        fit[:, b] = np.sqrt(np.clip(linear_r2_per_dimension(hz, z[:, idx]), 0.0, 1.0))
    slots = np.concatenate([np.full(len(idx), b) for b, idx in enumerate(groups)])  # (n,) group of each slot
    outputs, slot = linear_sum_assignment(fit[:, slots], maximize=True)
    cc, sigma, per_group = [], [], []
    for b, idx in enumerate(groups):
        assigned = outputs[slots[slot] == b]
        rho = canonical_correlations(z[:, idx], hz[:, assigned])
        zc = z[:, idx] - z[:, idx].mean(0)
        hc = hz[:, assigned] - hz[:, assigned].mean(0)
        w = np.linalg.lstsq(zc, hc, rcond=None)[0]
        sigma.extend(np.linalg.svd(w, compute_uv=False).tolist())
        cc.extend(rho.tolist())
        per_group.append(float(rho.mean()))
    sigma = np.asarray(sigma)
    orth = float(sigma.min() / sigma.max()) if sigma.size and sigma.max() > 0 else 0.0
    return BlockScores(float(np.sum(cc) / n), orth, per_group)
