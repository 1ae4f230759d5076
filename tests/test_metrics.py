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

from disentanglement_utils import (block_identifiability, canonical_correlations, correlation_matrix, lambda_groups,
                                   linear_r2_per_dimension, matched_correlations)

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


# The block score: the theorem's form, h block-orthogonal over the groups of equal λ


def _block_orthogonal(seed, sizes):
    from scipy.stats import ortho_group
    q = np.zeros((sum(sizes), sum(sizes)))
    start = 0
    for i, size in enumerate(sizes):
        q[start:start + size, start:start + size] = ortho_group.rvs(size, random_state=seed + i) if size > 1 \
            else np.array([[-1.0 if i % 2 else 1.0]])
        start += size
    return q


@pytest.mark.parametrize("lam", [[25] * 5 + [5] * 5, [1, 1, 2, 2, 2, 3, 3, 3, 3, 3], [7] * 10])
def test_any_block_orthogonal_map_scores_one(lam):
    z, rng = _latents(11)
    groups = lambda_groups(lam)
    q = _block_orthogonal(5, [len(g) for g in groups])
    perm = np.eye(N_DIM)[rng.permutation(N_DIM)]  # the outputs in any order, at any scale
    scores = block_identifiability(z, 2.5 * z @ q @ perm + 0.3, groups)
    assert abs(scores.score - 1) < 1e-6
    assert abs(scores.orth - 1) < 1e-6
    assert np.allclose(scores.groups, 1, atol=1e-6)


def test_a_map_that_mixes_two_blocks_scores_less():
    z, _ = _latents(12)
    groups = lambda_groups([25] * 5 + [5] * 5)
    mix = np.eye(N_DIM)
    c, s = np.cos(0.6), np.sin(0.6)
    mix[np.ix_([0, 7], [0, 7])] = [[c, -s], [s, c]]  # one content latent rotated into a style one
    scores = block_identifiability(z, z @ _block_orthogonal(3, [5, 5]) @ mix, groups)
    assert scores.score < 0.98
    assert all(value < 0.98 for value in scores.groups)
    # Within one block the same rotation is allowed.
    inside = np.eye(N_DIM)
    inside[np.ix_([0, 3], [0, 3])] = [[c, -s], [s, c]]
    assert block_identifiability(z, z @ inside, groups).score > 1 - 1e-6


def test_a_block_scaled_apart_from_the_other_is_not_orthogonal():
    z, _ = _latents(13)
    scale = np.diag([1.0] * 5 + [0.2] * 5)
    scores = block_identifiability(z, z @ scale, lambda_groups([25] * 5 + [5] * 5))
    assert abs(scores.score - 1) < 1e-6
    assert abs(scores.orth - 0.2) < 1e-6


def test_with_all_lambda_distinct_it_is_the_matched_correlation():
    z, rng = _latents(14)
    hz = np.tanh(z @ rng.standard_normal((N_DIM, N_DIM)) * 2) + 0.1 * rng.standard_normal((N_SAMPLES, N_DIM))
    scores = block_identifiability(z, hz, lambda_groups(np.linspace(5, 25, N_DIM)))
    assert abs(scores.score - matched_correlations(z, hz).mean()) < 1e-9
    assert np.allclose(scores.groups, matched_correlations(z, hz), atol=1e-9)


def test_lambda_groups_are_the_equal_values_in_order():
    groups = lambda_groups([25.0, 25.0, 5.0, 25.0, 5.0])
    assert [g.tolist() for g in groups] == [[0, 1, 3], [2, 4]]


def test_canonical_correlations_of_a_random_projection():
    z, rng = _latents(15)
    cc = canonical_correlations(z[:, :3], z[:, :3] @ rng.standard_normal((3, 3)))
    assert np.allclose(cc, 1, atol=1e-9)
    independent = canonical_correlations(z[:, :2], rng.standard_normal((N_SAMPLES, 2)))
    assert independent.max() < 0.1
