"""The frozen mixing g: an invertible MLP with well-conditioned square layers."""

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn
import torch.nn.functional as F

import settings

# The condition-number threshold is a quantile of this many random matrices.
N_COND_SAMPLES = 25_000
# Matrices drawn per round while searching for one under the threshold.
COND_CHUNK = 25_000
# float32 screening errs by ~1e-6 (relative): the matrices this near the threshold are re-checked in float64.
SCREEN_MARGIN = 1e-4
MAX_COND_ROUNDS = 400
POWER_ITERATIONS = 4


class SmoothLeakyReLU(nn.Module):
    """alpha * x + (1 - alpha) * softplus(x): a smooth, invertible leaky ReLU."""

    def __init__(self, alpha=0.2):
        super().__init__()
        self.alpha = alpha

    def forward(self, x):
        return self.alpha * x + (1 - self.alpha) * F.softplus(x)

    def extra_repr(self):
        return f"alpha={self.alpha}"


def leaky_relu():
    """The reference's activation of g (settings.ACTIVATIONS' leaky_relu)."""
    return nn.LeakyReLU(negative_slope=0.2)


def activation(name):
    """A fresh module of the activation ``name`` (a key of settings.ACTIVATIONS)."""
    if name not in settings.ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {', '.join(settings.ACTIVATIONS)}")
    return settings.load(settings.ACTIVATIONS[name].build)()


def random_matrices(count, n, generator):
    """(count, n, n) float32 matrices with entries U[-1, 1] (columns not yet normalised)."""
    return torch.rand(count, n, n, generator=generator) * 2 - 1


def unit_columns(w):
    """Scale every column of each (n, n) matrix to unit L2 norm."""
    return w / w.norm(dim=-2, keepdim=True)


def _unit_diagonal_gram(w):
    # cond(W D), for the column scaling D that gives unit columns, is sqrt(λmax / λmin) of the Gram
    # matrix scaled to a unit diagonal; working on it skips normalising every candidate's columns.
    gram = w.transpose(1, 2) @ w  # (count, n, n)
    d = gram.diagonal(dim1=1, dim2=2).rsqrt()  # (count, n)
    return gram * d[:, :, None] * d[:, None, :]


def _screen(w):
    """float32 condition numbers of the column-normalised matrices (eigenvalues of the Gram)."""
    e = torch.linalg.eigvalsh(_unit_diagonal_gram(w))
    return (e[:, -1] / e[:, 0].clamp_min(torch.finfo(w.dtype).tiny)).sqrt()


def _may_pass(w, threshold):
    """A necessary condition for cond ≤ threshold, 4x cheaper than eigenvalues.

    cond² = λmax/λmin ≤ T needs λmin ≥ λmax/T ≥ ℓ/T for any lower bound ℓ of λmax, i.e. G - (ℓ/T) I
    positive definite: one batched Cholesky. ℓ is the Rayleigh quotient after a few power iterations,
    close to λmax, so almost only the matrices that do pass survive.
    """
    gram = _unit_diagonal_gram(w)
    v = gram.sum(2, keepdim=True)  # G·1: a start vector near the top eigenvector
    for _ in range(POWER_ITERATIONS):
        v = gram @ v
        v = v / v.norm(dim=1, keepdim=True)
    lmax_low = (v * (gram @ v)).sum((1, 2))  # Rayleigh quotient ≤ λmax
    shift = lmax_low / (threshold * threshold * (1 + SCREEN_MARGIN))
    eye = torch.eye(w.shape[-1], dtype=w.dtype)
    _, info = torch.linalg.cholesky_ex(gram - shift[:, None, None] * eye)
    return info == 0


def _workers():
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


def _parallel(fn, w, pool):
    """``fn`` over the batch ``w``, one chunk per thread of the pool."""
    return torch.cat(list(pool.map(fn, w.chunk(_workers()))))


def condition_numbers_exact(w):
    """float64 2-norm condition numbers of a batch of (n, n) matrices, columns normalised first."""
    s = torch.linalg.svdvals(unit_columns(w).to(torch.float64))
    return s[:, 0] / s[:, -1]


def condition_threshold(n, ratio, generator, pool, count=N_COND_SAMPLES):
    """The ``ratio`` quantile of the condition numbers of ``count`` random matrices."""
    w = random_matrices(count, n, generator)
    conds = _parallel(_screen, w, pool).to(torch.float64)
    approx = torch.quantile(conds, ratio)
    near = (conds / approx - 1).abs() < SCREEN_MARGIN
    conds[near] = condition_numbers_exact(w[near])
    return torch.quantile(conds, ratio).item()


def well_conditioned_matrix(n, threshold, generator, pool):
    """The first random matrix with condition number <= ``threshold``: ((n, n) float32, its exact cond)."""
    for _ in range(MAX_COND_ROUNDS):
        w = random_matrices(COND_CHUNK, n, generator)
        survives = _parallel(functools.partial(_may_pass, threshold=threshold), w, pool)
        cand = survives.nonzero(as_tuple=True)[0]
        if cand.numel():
            exact = condition_numbers_exact(w[cand])
            ok = (exact <= threshold).nonzero(as_tuple=True)[0]
            if ok.numel():
                return unit_columns(w[cand[ok[0]]]), exact[ok[0]].item()
    raise RuntimeError("no matrix under the condition-number threshold; "
                       "raise --cond-thresh-ratio")


def construct_invertible_mlp(n, n_layers, act_fct, cond_thresh_ratio, generator,
                             n_iter_cond_thresh=N_COND_SAMPLES):
    """The frozen mixing g: R^n -> R^n on the CPU, all its randomness from ``generator``; returns (g, the
    threshold, the layers' condition numbers). ``n_layers`` bias-free n×n linear layers, ``act_fct``
    between them; each weight has entries U[-1, 1], unit-norm columns, and is redrawn until its
    condition number is at most the ``cond_thresh_ratio`` quantile of ``n_iter_cond_thresh`` random ones.
    """
    layers, conds = [], []
    with ThreadPoolExecutor(_workers()) as pool:
        threshold = condition_threshold(n, cond_thresh_ratio, generator, pool, n_iter_cond_thresh)
        for i in range(n_layers):
            w, c = well_conditioned_matrix(n, threshold, generator, pool)
            lin = nn.Linear(n, n, bias=False)  # its unused initialisation is part of the seeded draws
            lin.weight = nn.Parameter(w)
            layers.append(lin)
            conds.append(c)
            if i < n_layers - 1:
                layers.append(activation(act_fct))
    g = nn.Sequential(*layers)
    g.requires_grad_(False)
    return g, threshold, conds
