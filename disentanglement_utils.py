"""Identifiability metrics: functions of arrays that return numbers (or one number per dimension), and
METRICS, the scores every evaluation records, declared once for the run and the tools. The logs' Lin. and
Perm. are the means of linear_r2_per_dimension and matched_correlations. scipy and scikit-learn are
imported where a score is computed, so that the tools read METRICS without them."""

import collections
import dataclasses
import itertools
import math

import numpy as np


def _as_numpy(x):
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def linear_r2_per_dimension(z, hz):
    """(n,) R² of each z_i (z: (N, n)) predicted by the OLS fit hz (N, m) -> z with intercept, on the
    fitting data: 1 where z_i is an affine function of hz, about 0 where hz holds nothing of it."""
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score
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
    from scipy.optimize import linear_sum_assignment
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


# At most this many ways of dealing the outputs into blocks are tried one by one; beyond it, a local search.
EXACT_ASSIGNMENTS = 5_000
# The local search starts from the Hungarian deal of single outputs and from this many random deals less one.
LOCAL_SEARCH_STARTS = 16


def _deals(sizes, outputs):
    """Every way of dealing ``outputs`` into blocks of ``sizes``: tuples of index tuples, one per block."""
    if not sizes:
        yield ()
        return
    for first in itertools.combinations(outputs, sizes[0]):
        rest = tuple(j for j in outputs if j not in first)
        for tail in _deals(sizes[1:], rest):
            yield (first,) + tail


def best_assignment(value, sizes, exact_limit=EXACT_ASSIGNMENTS):
    """The outputs 0..n-1 dealt into blocks of ``sizes`` (Σ sizes = n) so that Σ_b value(b, outputs_b) is
    largest: a tuple of sorted index tuples. Exact when every block has one output (Hungarian algorithm) or
    when there are at most ``exact_limit`` deals (all tried); else a local search: the Hungarian deal of the
    single outputs' values and from random deals (a fixed seed), each improved by the best swap of two
    outputs between blocks while one gains; the best of these."""
    from scipy.optimize import linear_sum_assignment
    n, k = sum(sizes), len(sizes)
    cache = {}

    def val(b, outputs):
        key = (b, tuple(sorted(outputs)))
        if key not in cache:
            cache[key] = value(*key)
        return cache[key]

    if math.factorial(n) // math.prod(math.factorial(s) for s in sizes) <= exact_limit:
        return max(_deals(tuple(sizes), tuple(range(n))), key=lambda d: sum(val(b, o) for b, o in enumerate(d)))
    slots = np.repeat(np.arange(k), sizes)
    single = np.array([[val(b, (j,)) for b in slots] for j in range(n)])
    outputs, slot = linear_sum_assignment(single, maximize=True)
    if max(sizes) == 1:
        return tuple((int(outputs[slot == b][0]),) for b in range(k))
    rng = np.random.default_rng(0)
    starts = [outputs[np.argsort(slot)]] + [rng.permutation(n) for _ in range(LOCAL_SEARCH_STARTS - 1)]
    deals = [_improve(val, [sorted(order[slots == b].tolist()) for b in range(k)]) for order in starts]
    return max(deals, key=lambda d: sum(val(b, o) for b, o in enumerate(d)))


def _improve(val, deal):
    """``deal`` (a list of lists) after the best swap of two outputs between blocks, while one gains."""
    while True:
        now = [val(b, o) for b, o in enumerate(deal)]
        gain, best = 1e-12, None
        for a, b in itertools.combinations(range(len(deal)), 2):
            for i, j in itertools.product(deal[a], deal[b]):
                new_a = [x for x in deal[a] if x != i] + [j]
                new_b = [x for x in deal[b] if x != j] + [i]
                delta = val(a, new_a) + val(b, new_b) - now[a] - now[b]
                if delta > gain:
                    gain, best = delta, (a, b, sorted(new_a), sorted(new_b))
        if best is None:
            return tuple(tuple(o) for o in deal)
        a, b, deal[a], deal[b] = best


def _centred(z, hz, groups):
    z, hz = _as_numpy(z), _as_numpy(hz)
    if hz.shape[1] != z.shape[1] or sorted(np.concatenate(groups).tolist()) != list(range(z.shape[1])):
        raise ValueError(f"the groups must split the {z.shape[1]} latents, and h must have as many outputs "
                         f"(it has {hz.shape[1]})")
    return z, hz, z - z.mean(0), hz - hz.mean(0)


BlockOrthogonalFit = collections.namedtuple("BlockOrthogonalFit", "r2 assignment scale rotation shift")


def block_orthogonal_fit(z, hz, groups):
    """The theorem's form fitted to hz = h(z): hz ≈ c + s · z Q with one scale s, a shift c and Q (n, n)
    orthogonal and block-diagonal up to the order of the outputs, the outputs ``assignment[b]`` being the
    images of the latents ``groups[b]``.

    For a fixed assignment, with Z, H centred and M_b = Z_{G_b}ᵀ H_{A_b} = U_b Σ_b V_bᵀ:
        ‖H − s Z Q‖² = ‖H‖² + s² ‖Z‖² − 2 s Σ_b tr(Q_bᵀ M_b),
    largest trace at Q_b = U_b V_bᵀ (orthogonal Procrustes), where it is the nuclear norm ‖M_b‖_*; then
    s = Σ_b ‖M_b‖_* / ‖Z‖² and R² = 1 − min / ‖H‖² = (Σ_b ‖M_b‖_*)² / (‖Z‖² ‖H‖²). The assignment is the one
    that maximises R² itself, i.e. Σ_b ‖M_b‖_* (best_assignment). Returns BlockOrthogonalFit: r2 on these
    samples, the assignment, s, Q and c (hz ≈ c + s z Q)."""
    z, hz, zc, hc = _centred(z, hz, groups)
    cross = zc.T @ hc  # (n, n)
    nuclear = lambda b, outputs: float(np.linalg.svd(cross[np.ix_(groups[b], outputs)], compute_uv=False).sum())
    assignment = best_assignment(nuclear, [len(g) for g in groups])
    q = np.zeros_like(cross)
    for idx, outputs in zip(groups, assignment):
        u, _, vt = np.linalg.svd(cross[np.ix_(idx, outputs)])
        q[np.ix_(idx, outputs)] = u @ vt
    total = sum(nuclear(b, outputs) for b, outputs in enumerate(assignment))
    zz, hh = float((zc * zc).sum()), float((hc * hc).sum())
    scale = total / zz
    r2 = total * total / (zz * hh) if hh > 0 else 0.0
    return BlockOrthogonalFit(r2, assignment, scale, q, hz.mean(0) - scale * z.mean(0) @ q)


def block_orthogonal_r2(z, hz, groups, test=None):
    """R²_BO: how much of hz = h(z) the theorem's form c + s · z Q explains (Q block-diagonal orthogonal over
    ``groups``, the latents of equal ground-truth λ; one scale s; block_orthogonal_fit). 1 only for that
    form; below 1 for a shear or unequal scales inside a block, mixing across blocks (by about 2 sin²θ / n
    for a pair rotated by θ), a nonlinear h or a collapsed output. With all λ distinct, the best signed
    permutation with one scale. Fitted on (z, hz); scored there, or on ``test`` = (z', hz') when given."""
    fit = block_orthogonal_fit(z, hz, groups)
    if test is None:
        return fit.r2
    z2, h2 = (_as_numpy(x) for x in test)
    residual = h2 - fit.shift - fit.scale * z2 @ fit.rotation
    total = ((h2 - h2.mean(0)) ** 2).sum()
    return float(1 - (residual ** 2).sum() / total) if total > 0 else 0.0


def _whitener(zc):
    """W (d, d) with (zc W)ᵀ (zc W) = I on these samples (a symmetric inverse square root)."""
    w, v = np.linalg.eigh(zc.T @ zc)
    return v @ np.diag(1 / np.sqrt(np.maximum(w, w.max() * 1e-12))) @ v.T


def block_linear_r2(z, hz, groups, test=None):
    """The block-linear score on R²'s scale: per group b, the latents z_{G_b} (whitened on the fitting
    samples) predicted by least squares from the |G_b| outputs assigned to it alone; on the fitting samples
    this is the mean of the squared canonical correlations of z_{G_b} and h_{A_b}. 1 when every group is an
    invertible *linear* (affine) map of its own outputs, whatever that map is (a shear or unequal scales
    inside a block score 1: for the theorem's form see block_orthogonal_r2). Lin. minus it is the linear
    information about the latents that sits in outputs of the wrong block. The assignment maximises the sum
    of squared canonical correlations. Fitted on (z, hz); scored there, or on ``test`` = (z', hz').

    Returns (score, per_group): the mean over the n latents and the value of each group, in ``groups``' order."""
    z, hz, zc, hc = _centred(z, hz, groups)
    whiteners = [_whitener(zc[:, idx]) for idx in groups]  # (d_b, d_b) each, from the fitting samples
    white = [zc[:, idx] @ w for idx, w in zip(groups, whiteners)]  # (N, d_b) each
    hh = hc.T @ hc

    def squared_cc(b, outputs):  # Σ ρ² = tr(Wᵀ H (HᵀH)⁺ Hᵀ W), W whitened
        cross = white[b].T @ hc[:, outputs]
        return float(np.trace(cross @ np.linalg.pinv(hh[np.ix_(outputs, outputs)], rcond=1e-10,
                                                     hermitian=True) @ cross.T))

    assignment = best_assignment(squared_cc, [len(g) for g in groups])
    z2, h2 = (z, hz) if test is None else (_as_numpy(x) for x in test)
    per_group = []
    for b, (idx, outputs) in enumerate(zip(groups, assignment)):
        design = np.column_stack([np.ones(len(hz)), hz[:, outputs]])
        coef = np.linalg.lstsq(design, white[b], rcond=None)[0]
        target = (z2[:, idx] - z[:, idx].mean(0)) @ whiteners[b]
        residual = target - np.column_stack([np.ones(len(h2)), h2[:, outputs]]) @ coef
        per_group.append(float(1 - (residual ** 2).sum() / ((target - target.mean(0)) ** 2).sum()))
    sizes = [len(idx) for idx in groups]
    return float(np.dot(per_group, sizes) / sum(sizes)), per_group


def identifiability_scores(z, hz, groups):
    """Lin. and Perm. (the reference's scores, on every Step line), their per-dimension R² and matched |corr|."""
    lin_dims = linear_r2_per_dimension(z, hz)
    perm_dims = matched_correlations(z, hz)
    return {"lin": float(np.mean(lin_dims)), "perm": float(np.mean(perm_dims)),
            "lin_dims": lin_dims.tolist(), "perm_dims": perm_dims.tolist()}


def block_scores(z, hz, groups):
    """Where the ground-truth Λ gives blocks (``groups``): the theorem's block-orthogonal R² and the
    block-linear R² (with each group's value), fitted on the first half of the samples, scored on the second."""
    if not groups:
        return None
    half = len(z) // 2
    fit, test = (z[:half], hz[:half]), (z[half:], hz[half:])
    linear, per_group = block_linear_r2(*fit, groups, test=test)
    return {"block_orthogonal_r2": block_orthogonal_r2(*fit, groups, test=test),
            "block_linear_r2": linear, "block_linear_groups": per_group}


@dataclasses.dataclass(frozen=True)
class Field:
    """One field of a metric's scores. ``label``: its name in the tools' tables and plots. ``per``: a list
    field's entries ("latent": one per latent, n in every record; "group": one per group of equal λ), None
    for a number. ``plot`` (a number): "panel" (a panel of its own in plot_logs), "others" (the panel of the
    other scores) or None (not drawn). ``spread``: the final record keeps its std beside its mean. ``tol``:
    compare_logs checks it within ``--NAME-tol`` (default ``tol``; a field of the text log's Step and final
    lines) at the common steps and in the final scores; None: not compared."""

    name: str
    label: str
    per: str = None
    plot: str = "others"
    spread: bool = False
    tol: float = None


@dataclasses.dataclass(frozen=True)
class Metric:
    """A score of h in every metrics record: ``score(z, hz, groups) -> {field: number or list}`` on (N, n)
    latents and encodings (``groups``: the index arrays of the latents of equal ground-truth λ), or None
    where it does not apply; ``fields``: what it returns (Field). The final record keeps ``FIELD_mean`` of
    every number, ``FIELD_std`` of those with ``spread``, a list's mean. ``reference``: computed, in the
    final record, as the reference does (--num-eval-batches batches of --batch-size samples); otherwise on
    as many batches of at least main_mlp.N_EVAL_SAMPLES samples each."""

    score: object
    fields: tuple
    reference: bool = False


# The scores of every logged evaluation and of the final one. A new metric is its function and one entry.
METRICS = (
    Metric(identifiability_scores, reference=True, fields=(
        Field("lin", "Lin.", plot="panel", spread=True, tol=0.02),
        Field("perm", "Perm.", plot="panel", spread=True, tol=0.05),
        Field("lin_dims", "R² per latent", per="latent"),
        Field("perm_dims", "matched |corr| per latent", per="latent"))),
    Metric(block_scores, fields=(
        Field("block_orthogonal_r2", "R²_BO", spread=True), Field("block_linear_r2", "R²_BL", spread=True),
        Field("block_linear_groups", "R²_BL per group", per="group"))),
)
# The per-latent R² that the per-dimension views (--per-dimension, the summary's λ groups) average by group.
R2_PER_LATENT = "lin_dims"


def fields(numbers=None, reference=None):
    """The Field of every metric of METRICS (now: a test may add one), in order; ``numbers``: only the
    numbers (True) or the lists (False); ``reference``: only those of reference metrics (True) or not."""
    return [f for m in METRICS if reference in (None, m.reference) for f in m.fields
            if numbers in (None, f.per is None)]
