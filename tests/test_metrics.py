"""Known-answer tests of the identifiability metrics (disentanglement_utils).

The scores the logs call Lin. and Perm. are the means over the latent
dimensions of ``linear_r2_per_dimension`` and ``matched_correlations``
(``main_mlp.evaluate``); most tests check those means, as ``lin_score`` and ``perm_score``.
"""

import itertools

import numpy as np
import pytest
import torch
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score

from disentanglement_utils import (best_assignment, block_linear_r2, block_orthogonal_fit, block_orthogonal_r2,
                                   canonical_correlations, correlation_matrix, lambda_groups, linear_r2_per_dimension,
                                   matched_correlations)

N_SAMPLES = 4096  # the metric's sample count in the experiment
N_DIM = 10


def _latents(seed, n=N_DIM, num=N_SAMPLES):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((num, n))
    return z / np.linalg.norm(z, axis=1, keepdims=True), rng  # uniform on the sphere, as in the DGP


def lin_score(z, hz):
    """The score Lin.: the mean R² over z's dimensions."""
    return float(np.mean(linear_r2_per_dimension(z, hz)))


def perm_score(z, hz):
    """The score Perm.: the mean matched |corr| over z's dimensions."""
    return float(np.mean(matched_correlations(z, hz)))


def test_identity_scores_one():
    z, _ = _latents(0)
    assert lin_score(z, z) == pytest.approx(1.0, abs=1e-9)
    assert perm_score(z, z) == pytest.approx(1.0, abs=1e-9)


def test_permuted_rescaled_sign_flipped_scores_one():
    z, rng = _latents(1)
    perm = rng.permutation(N_DIM)
    scale = rng.uniform(0.1, 10.0, N_DIM) * rng.choice([-1.0, 1.0], N_DIM)
    assert (scale < 0).any() and (perm != np.arange(N_DIM)).any()
    hz = z[:, perm] * scale + rng.standard_normal(N_DIM)  # plus an offset
    assert lin_score(z, hz) == pytest.approx(1.0, abs=1e-9)
    assert perm_score(z, hz) == pytest.approx(1.0, abs=1e-9)


def test_invertible_linear_mixing_scores_lin_one():
    z, rng = _latents(2)
    a = rng.standard_normal((N_DIM, N_DIM))
    assert np.linalg.cond(a) < 1e4
    hz = z @ a + rng.standard_normal(N_DIM)
    assert lin_score(z, hz) == pytest.approx(1.0, abs=1e-9)
    # A dense mixing is not a permutation: Perm. stays well below 1.
    assert perm_score(z, hz) < 0.9


def test_independent_noise_scores_near_zero():
    z, rng = _latents(3)
    hz = rng.standard_normal((N_SAMPLES, N_DIM))
    # E[R²] of 10 useless regressors on 4096 samples is about 10/4096.
    assert 0.0 <= lin_score(z, hz) < 0.02
    assert perm_score(z, hz) < 0.1


def test_torch_inputs_accepted():
    z, _ = _latents(4, num=256)
    zt = torch.from_numpy(z).float().requires_grad_(True)
    assert lin_score(zt, zt * 2) == pytest.approx(1.0, abs=1e-6)
    assert perm_score(zt, -zt) == pytest.approx(1.0, abs=1e-6)


def test_linear_matches_sklearn_and_lstsq():
    z, rng = _latents(5, num=2000, n=5)
    # A nonlinear, noisy representation so that R² is strictly between 0 and 1.
    hz = np.tanh(2 * z @ rng.standard_normal((5, 6))) + 0.3 * rng.standard_normal((2000, 6))
    per_dim = linear_r2_per_dimension(z, hz)
    ours = lin_score(z, hz)

    pred = LinearRegression().fit(hz, z).predict(hz)
    direct = r2_score(z, pred)  # uniform average is sklearn's default
    assert ours == pytest.approx(direct, abs=1e-12)

    # Independently of sklearn: least squares with an intercept column.
    design = np.hstack([hz, np.ones((len(hz), 1))])
    coef, *_ = np.linalg.lstsq(design, z, rcond=None)
    res = ((z - design @ coef) ** 2).sum(0)
    tot = ((z - z.mean(0)) ** 2).sum(0)
    np.testing.assert_allclose(per_dim, 1 - res / tot, atol=1e-10)
    assert ours == pytest.approx(np.mean(1 - res / tot), abs=1e-10)
    assert 0.05 < ours < 0.95


def test_correlation_matrix_matches_corrcoef():
    rng = np.random.default_rng(6)
    z = rng.standard_normal((500, 4))
    hz = z @ rng.standard_normal((4, 3)) + rng.standard_normal((500, 3))
    expected = np.corrcoef(z.T, hz.T)[:4, 4:]
    np.testing.assert_allclose(correlation_matrix(z, hz), expected, atol=1e-12)


def test_correlation_matrix_constant_column_is_zero():
    rng = np.random.default_rng(7)
    z = rng.standard_normal((100, 2))
    hz = np.hstack([z[:, :1], np.ones((100, 1))])
    corr = correlation_matrix(z, hz)
    assert np.isfinite(corr).all() and (corr[:, 1] == 0).all()


def _exact_correlation_data(c, num=1000, seed=8):
    """z (num, n) and hz (num, m) whose Pearson correlation matrix is exactly ``c``.

    hz_j = Σ_k c_kj z_k + sqrt(1 - Σ_k c_kj²) e_j with z and e jointly
    orthonormal, zero-mean columns.
    """
    n, m = c.shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num, n + m))
    x -= x.mean(0)
    q, _ = np.linalg.qr(x)  # orthonormal columns, still zero mean
    z, e = q[:, :n], q[:, n:]
    rest = np.sqrt(1 - (c ** 2).sum(0))
    return z, z @ c + e * rest


def test_permutation_hand_constructed_best_matching():
    # |corr|: the largest entry (0.7 at (2, 2)) together with the next-largest
    # (0.6 at (0, 0)) gives 1.4, but the best matching swaps the first two
    # dimensions: 0.55 + 0.5 + 0.7 = 1.75.
    c = np.array([[0.6, -0.55, 0.0],
                  [0.5, 0.1, 0.2],
                  [0.0, 0.3, -0.7]])
    z, hz = _exact_correlation_data(c)
    np.testing.assert_allclose(correlation_matrix(z, hz), c, atol=1e-10)

    brute = max(sum(abs(c[i, j]) for i, j in enumerate(p)) for p in itertools.permutations(range(3)))
    assert brute == pytest.approx(1.75)
    # Per dimension of z, in z's order: z_0 -> hz_1, z_1 -> hz_0, z_2 -> hz_2.
    np.testing.assert_allclose(matched_correlations(z, hz), [0.55, 0.5, 0.7], atol=1e-10)
    assert perm_score(z, hz) == pytest.approx(1.75 / 3, abs=1e-10)
    # Rescaling and flipping hz's dimensions does not change it.
    assert perm_score(z, hz * [-3.0, 0.5, 7.0]) == pytest.approx(1.75 / 3, abs=1e-10)


def test_per_dimension_scores_see_a_dropped_dimension():
    """A representation that drops z_2 scores about 0 on it and about 1 on the rest."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4096, 5))
    hz = z.copy()
    hz[:, 2] = rng.normal(size=4096)  # z_2 lost, replaced by noise
    hz = hz @ np.diag([2.0, -1.0, 1.0, 0.5, 3.0])  # rescaled and flipped: still identifiable
    r2 = linear_r2_per_dimension(z, hz)
    corr = matched_correlations(z, hz)
    assert r2[2] < 0.01 and corr[2] < 0.05
    assert np.all(np.delete(r2, 2) > 0.999) and np.all(np.delete(corr, 2) > 0.999)
    # The scores: four dimensions of five kept.
    assert lin_score(z, hz) == pytest.approx(0.8, abs=0.01)
    assert perm_score(z, hz) == pytest.approx(0.8, abs=0.01)


def test_matched_correlations_follow_the_latents_order_under_a_permutation():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(2048, 4))
    hz = z[:, [3, 0, 1, 2]].copy()
    hz[:, 0] = 0.5 * hz[:, 0] + rng.normal(size=2048)  # z_3, the one behind hz_0, half lost
    corr = matched_correlations(z, hz)
    assert corr[3] < 0.6 and np.all(corr[:3] > 0.999)


def test_the_metrics_file_holds_per_dimension_scores(tmp_path, capsys):
    import json

    from cli_util import run_main

    metrics = tmp_path / "m.jsonl"
    code, _, err = run_main(["--device", "cpu", "--n", "4", "--batch-size", "32", "--space-type", "extended_sphere",
                             "--c-p", "0", "--p", "0", "--only-unsupervised", "--more-unsupervised", "1",
                             "--n-steps", "3", "--n-log-steps", "2", "--num-eval-batches", "2", "--seed", "0",
                             "--metrics-file", str(metrics)], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [r for r in records if r["type"] == "step"]
    assert steps
    for r in steps:
        assert len(r["lin_dims"]) == 4 and len(r["perm_dims"]) == 4
        assert abs(np.mean(r["lin_dims"]) - r["lin"]) < 1e-6 and abs(np.mean(r["perm_dims"]) - r["perm"]) < 1e-6
    final = records[-1]
    assert final["type"] == "final" and len(final["lin_dims"]) == 4


# The theorem's form: h block-orthogonal over the groups of equal λ (block_orthogonal_r2), and the
# block-linear score (block_linear_r2). Expected values are derived here in closed form: for latents whose
# sample covariance is exactly the identity (_white) and a linear h = z A, R²_BO = (Σ_b ‖A_b‖_*)² / (n ‖A‖²_F),
# A_b the block of A from the latents of group b to the outputs assigned to it.

BIMODAL = [25] * 5 + [5] * 5


def _white(seed, n=N_DIM, num=N_SAMPLES, extra=0):
    """(num, n) centred latents with zᵀz = num · I exactly, and ``extra`` columns of noise as uncorrelated
    with them (and each other) on these very samples."""
    x = np.random.default_rng(seed).standard_normal((num, n + extra))
    x -= x.mean(0)
    x = x @ np.linalg.inv(np.linalg.cholesky(x.T @ x / num)).T
    return (x[:, :n], x[:, n:]) if extra else x


def _block_orthogonal(seed, sizes):
    from scipy.stats import ortho_group
    q = np.zeros((sum(sizes), sum(sizes)))
    start = 0
    for i, size in enumerate(sizes):
        q[start:start + size, start:start + size] = ortho_group.rvs(size, random_state=seed + i) if size > 1 \
            else np.array([[-1.0 if i % 2 else 1.0]])
        start += size
    return q


def _nuclear(a):
    return np.linalg.svd(a, compute_uv=False).sum()


@pytest.mark.parametrize("lam", [BIMODAL, [1, 1, 2, 2, 2, 3, 3, 3, 3, 3], [7] * 10, list(range(10))])
def test_any_block_orthogonal_map_scores_one(lam):
    z, rng = _latents(11)
    groups = lambda_groups(lam)
    q = _block_orthogonal(5, [len(g) for g in groups])
    perm = np.eye(N_DIM)[rng.permutation(N_DIM)]  # the outputs in any order, at one scale, shifted
    hz = 2.5 * z @ q @ perm + 0.3
    assert block_orthogonal_r2(z, hz, groups) == pytest.approx(1.0, abs=1e-9)
    score, per_group = block_linear_r2(z, hz, groups)
    assert score == pytest.approx(1.0, abs=1e-9) and np.allclose(per_group, 1.0, atol=1e-9)
    # Fitted on one half, scored on the other: still exactly the form.
    half = N_SAMPLES // 2
    test = (z[half:], hz[half:])
    assert block_orthogonal_r2(z[:half], hz[:half], groups, test=test) == pytest.approx(1.0, abs=1e-9)
    assert block_linear_r2(z[:half], hz[:half], groups, test=test)[0] == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("k", [0.5, 1.0, 3.0])
def test_a_shear_inside_a_block_is_not_the_theorems_form(k):
    z = _white(20)
    shear = np.eye(N_DIM)
    shear[0, 1] = k  # inside the content block: singular values with σ1 σ2 = 1, σ1² + σ2² = 2 + k²
    expected = (np.sqrt(4 + k * k) + N_DIM - 2) ** 2 / (N_DIM * (N_DIM + k * k))
    groups = lambda_groups(BIMODAL)
    assert block_orthogonal_r2(z, z @ shear, groups) == pytest.approx(expected, abs=1e-12)
    assert expected < 0.99
    # A linear map inside a block: the block-linear score and Lin. cannot see it.
    assert block_linear_r2(z, z @ shear, groups)[0] == pytest.approx(1.0, abs=1e-12)
    assert lin_score(z, z @ shear) == pytest.approx(1.0, abs=1e-12)


def test_unequal_output_scales_are_not_the_theorems_form():
    z = _white(21)
    scales = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0])  # each block orthogonal, two scales
    hz = z @ _block_orthogonal(7, [5, 5]) * scales
    expected = scales.sum() ** 2 / (N_DIM * (scales ** 2).sum())  # (Σ|d|)² / (n Σ d²) = 0.9
    groups = lambda_groups(BIMODAL)
    assert block_orthogonal_r2(z, hz, groups) == pytest.approx(expected, abs=1e-12)
    assert block_linear_r2(z, hz, groups)[0] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("degrees", [5.0, 20.0, 40.0])
def test_a_content_style_pair_rotated_falls_by_about_two_sin_squared_over_n(degrees):
    z = _white(22)
    theta = np.radians(degrees)
    c, s = np.cos(theta), np.sin(theta)
    mix = np.eye(N_DIM)
    mix[np.ix_([0, 7], [0, 7])] = [[c, -s], [s, c]]  # content latent 0 rotated into style latent 7
    groups = lambda_groups(BIMODAL)
    # Each block keeps four outputs and |cos θ| of the fifth: Σ ‖A_b‖_* = 8 + 2 cos θ, ‖A‖² = n.
    expected = ((N_DIM - 2 + 2 * c) / N_DIM) ** 2
    assert block_orthogonal_r2(z, z @ mix, groups) == pytest.approx(expected, abs=1e-12)
    assert abs((1 - expected) - 2 * s * s / N_DIM) < 0.25 * s * s / N_DIM + 1e-12  # ≈ 2 sin²θ / n
    # Squared canonical correlations: 4 + cos²θ per block, exactly 1 - 2 sin²θ / n.
    assert block_linear_r2(z, z @ mix, groups)[0] == pytest.approx(1 - 2 * s * s / N_DIM, abs=1e-12)
    assert lin_score(z, z @ mix) == pytest.approx(1.0, abs=1e-12)  # Lin. sees nothing wrong


def test_a_random_orthogonal_map_scores_its_best_deal_of_outputs():
    from scipy.stats import ortho_group
    z = _white(23)
    q = ortho_group.rvs(N_DIM, random_state=4)
    groups = lambda_groups(BIMODAL)
    # Every one of the C(10, 5) deals of the outputs to the content block, tried here by brute force.
    best = max(_nuclear(q[np.ix_(groups[0], a)]) + _nuclear(q[np.ix_(groups[1], [j for j in range(10) if j not in a])])
               for a in itertools.combinations(range(N_DIM), 5))
    expected = best ** 2 / N_DIM ** 2
    assert block_orthogonal_r2(z, z @ q, groups) == pytest.approx(expected, abs=1e-12)
    assert expected < 0.8 and lin_score(z, z @ q) == pytest.approx(1.0, abs=1e-12)


def test_a_block_lost_to_noise_or_collapsed():
    z, noise = _white(24, extra=5)
    groups = lambda_groups(BIMODAL)
    lost = np.column_stack([z[:, :5], noise])  # the style outputs hold noise uncorrelated with every latent
    # Σ ‖A_b‖_* = 5 (content only), ‖z‖² = ‖h‖² = 10 N: 25 / 100.
    assert block_orthogonal_r2(z, lost, groups) == pytest.approx(0.25, abs=1e-12)
    score, per_group = block_linear_r2(z, lost, groups)
    assert score == pytest.approx(0.5, abs=1e-12) and per_group == pytest.approx([1.0, 0.0], abs=1e-12)
    assert lin_score(z, lost) == pytest.approx(0.5, abs=1e-12)
    collapsed = np.column_stack([z[:, :5], np.zeros((N_SAMPLES, 5))])  # the style outputs constant: 25 / 50
    assert block_orthogonal_r2(z, collapsed, groups) == pytest.approx(0.5, abs=1e-12)
    assert block_orthogonal_r2(z, np.ones_like(z), groups) == 0.0


def _gauss_expectation(f):
    from scipy.integrate import quad
    return quad(lambda u: f(u) * np.exp(-u * u / 2) / np.sqrt(2 * np.pi), -np.inf, np.inf)[0]


@pytest.mark.parametrize("a", [0.5, 2.0])
def test_tanh_of_a_block_orthogonal_map_falls_with_its_curvature(a):
    # u = z Q is standard normal for Gaussian z and orthogonal Q; by Stein's lemma E[u tanh(a u)] = a E[sech²(a u)],
    # so each block's cross-covariance is a E[sech²] · Q_b and R²_BO = a² E[sech²(a u)]² / E[tanh²(a u)].
    rng = np.random.default_rng(25)
    z = rng.standard_normal((100_000, N_DIM))
    hz = np.tanh(a * z @ _block_orthogonal(9, [5, 5]))
    expected = (a * _gauss_expectation(lambda u: 1 - np.tanh(a * u) ** 2)) ** 2 \
        / _gauss_expectation(lambda u: np.tanh(a * u) ** 2)
    assert expected < 0.99
    groups = lambda_groups(BIMODAL)
    assert block_orthogonal_r2(z, hz, groups) == pytest.approx(expected, abs=2e-3)
    assert block_linear_r2(z, hz, groups)[0] == pytest.approx(expected, abs=2e-3)  # each ρ² the same value


def test_with_all_lambda_distinct_it_is_the_best_signed_permutation_with_one_scale():
    z, rng = _latents(26, n=5, num=512)
    hz = np.tanh(z @ rng.standard_normal((5, 5)) * 2) + 0.1 * rng.standard_normal((512, 5))
    zc, hc = z - z.mean(0), hz - hz.mean(0)
    best = -np.inf
    for perm in itertools.permutations(range(5)):  # every signed permutation, one scale fitted by least squares
        for signs in itertools.product([-1.0, 1.0], repeat=5):
            x = (zc * signs)[:, np.argsort(perm)].ravel()
            s = x @ hc.ravel() / (x @ x)
            best = max(best, 1 - ((hc.ravel() - s * x) ** 2).sum() / (hc ** 2).sum())
    assert block_orthogonal_r2(z, hz, lambda_groups(np.linspace(5, 25, 5))) == pytest.approx(best, abs=1e-12)


def test_the_closed_form_is_the_least_squares_optimum_found_numerically():
    """An independent fit: Q's rotation angles (and reflection) per 2-block, s and c by numerical minimisation."""
    from scipy.optimize import minimize
    z, rng = _latents(27, n=4, num=256)
    hz = np.sin(1.5 * z @ rng.standard_normal((4, 4))) + 0.05 * rng.standard_normal((256, 4))
    groups = lambda_groups([3, 3, 1, 1])

    def rot(t, flip):
        c, s = np.cos(t), np.sin(t)
        return np.array([[c, -s], [s, c]]) @ np.diag([1.0, -1.0 if flip else 1.0])

    best = -np.inf
    for content in itertools.combinations(range(4), 2):
        order = list(content) + [j for j in range(4) if j not in content]
        for f0, f1 in itertools.product([False, True], repeat=2):
            def loss(p):
                q = np.zeros((4, 4))
                q[:2, :2], q[2:, 2:] = rot(p[0], f0), rot(p[1], f1)
                pred = p[2] * z @ q
                return ((hz[:, order] - pred - (hz[:, order] - pred).mean(0)) ** 2).sum()
            for start in rng.uniform(-np.pi, np.pi, (2, 2)):
                res = minimize(loss, [*start, 0.5], method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-13})
                best = max(best, 1 - res.fun / ((hz - hz.mean(0)) ** 2).sum())
    assert block_orthogonal_r2(z, hz, groups) == pytest.approx(best, abs=1e-7)


def test_scoring_the_fitting_samples_again_gives_the_closed_form():
    z, rng = _latents(28)
    hz = np.tanh(z @ _block_orthogonal(2, [5, 5]) * 3) + 0.05 * rng.standard_normal((N_SAMPLES, N_DIM))
    groups = lambda_groups(BIMODAL)
    fit = block_orthogonal_fit(z, hz, groups)
    assert block_orthogonal_r2(z, hz, groups, test=(z, hz)) == pytest.approx(fit.r2, abs=1e-12)
    q = fit.rotation
    assert np.allclose(q @ q.T, np.eye(N_DIM), atol=1e-12)  # orthogonal, and zero across blocks:
    for b, outputs in enumerate(fit.assignment):
        others = [j for j in range(N_DIM) if j not in outputs]
        assert np.abs(q[np.ix_(groups[b], others)]).max() == 0
    # Held out, a noisy fit scores less than on its own samples.
    half = N_SAMPLES // 2
    assert block_orthogonal_r2(z[:half], hz[:half], groups, test=(z[half:], hz[half:])) < fit.r2


@pytest.mark.parametrize("case", range(6))
def test_the_local_search_finds_the_exact_best_deal(case):
    """Beyond EXACT_ASSIGNMENTS deals the outputs are dealt by a local search; on these maps (the known-answer
    table's and random ones) it finds the deal that the exhaustive search finds."""
    from scipy.stats import ortho_group
    z = _white(30 + case)
    rng = np.random.default_rng(case)
    shear, mix = np.eye(N_DIM), np.eye(N_DIM)
    shear[0, 1] = 1.0
    mix[np.ix_([0, 7], [0, 7])] = [[np.cos(0.35), -np.sin(0.35)], [np.sin(0.35), np.cos(0.35)]]
    maps = [shear, mix, ortho_group.rvs(N_DIM, random_state=case), _block_orthogonal(case, [5, 5]) @ mix,
            rng.standard_normal((N_DIM, N_DIM)), np.tanh(2 * rng.standard_normal((N_DIM, N_DIM)))]
    groups = lambda_groups([1, 1, 1, 2, 2, 2, 3, 3, 3, 3] if case % 2 else BIMODAL)
    cross = z.T @ (z @ maps[case] @ np.eye(N_DIM)[rng.permutation(N_DIM)])
    value = lambda b, outputs: _nuclear(cross[np.ix_(groups[b], outputs)])
    sizes = [len(g) for g in groups]
    exact = best_assignment(value, sizes)
    local = best_assignment(value, sizes, exact_limit=0)
    total = lambda deal: sum(value(b, o) for b, o in enumerate(deal))
    assert total(local) == pytest.approx(total(exact), abs=1e-9)


def test_the_groups_must_cover_the_latents():
    z, _ = _latents(29)
    with pytest.raises(ValueError, match="groups"):
        block_orthogonal_r2(z, z, [np.arange(5)])
    with pytest.raises(ValueError, match="outputs"):
        block_linear_r2(z, z[:, :9], lambda_groups(BIMODAL))


def test_lambda_groups_are_the_equal_values_in_order():
    groups = lambda_groups([25.0, 25.0, 5.0, 25.0, 5.0])
    assert [g.tolist() for g in groups] == [[0, 1, 3], [2, 4]]


def test_canonical_correlations_of_a_random_projection():
    z, rng = _latents(15)
    cc = canonical_correlations(z[:, :3], z[:, :3] @ rng.standard_normal((3, 3)))
    assert np.allclose(cc, 1, atol=1e-9)
    independent = canonical_correlations(z[:, :2], rng.standard_normal((N_SAMPLES, 2)))
    assert independent.max() < 0.1
