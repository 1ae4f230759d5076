"""The samplers of spaces.py against the distributions they claim (scipy.stats)."""

import math

import numpy as np
import pytest
import torch
from scipy import special, stats

import latent_spaces
import spaces

KS_ALPHA = 1e-3  # fixed seeds: a correct sampler passes deterministically


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------- the rejection-sampled conditional

README_LAMBDA = latent_spaces.ground_truth_lambda(10, 5, 25, linearly_spaced=False)


class RandnRecorder:
    """Wraps torch.randn and keeps every (m, K, n) proposal batch the sampler draws."""

    def __init__(self, monkeypatch):
        self.batches = []
        self._randn = torch.randn
        monkeypatch.setattr(torch, "randn", self)

    def __call__(self, *size, **kwargs):
        out = self._randn(*size, **kwargs)
        if out.dim() == 3:
            self.batches.append(out.clone())
        return out


def _check_rows_accepted(z, out, recorder, std, threshold):
    """Every output row is (z_i + δ)/‖z_i + δ‖ for a recorded proposal δ of which
    every one that reproduces it satisfies | ‖z_i + δ‖ - 1 | < threshold."""
    n = z.shape[1]
    deltas = torch.cat([b.reshape(-1, n) for b in recorder.batches]) * std  # (M, n)
    y = z[:, None, :] + deltas[None, :, :]  # (B, M, n)
    norm = y.norm(dim=2)  # (B, M)
    reproduces = ((y / norm[..., None] - out[:, None, :]).abs().amax(dim=2) < 1e-5)  # (B, M)
    accepted = (norm - 1).abs() < threshold
    assert reproduces.any(dim=1).all(), "an output row is no proposal of its own anchor"
    assert not (reproduces & ~accepted).any(), "an output row comes from a rejected proposal"


@pytest.mark.parametrize("candidates", [1, 4, 10])
def test_anisotropic_rows_satisfy_acceptance(monkeypatch, candidates):
    space = spaces.ExtendedSphereSpace(10)
    std = README_LAMBDA.rsqrt()
    z = space.uniform(200, _gen(0), "cpu")
    recorder = RandnRecorder(monkeypatch)
    out = space.anisotropic_normal(z, std, 0.1, _gen(1), candidates)
    monkeypatch.undo()
    assert out.shape == z.shape
    torch.testing.assert_close(out.norm(dim=1), torch.ones(200), atol=1e-6, rtol=0)
    _check_rows_accepted(z, out, recorder, std, 0.1)
    if candidates == 1:
        # About 10 % acceptance: one proposal per row needs many rounds, and
        # every round only redraws the rows still open.
        assert len(recorder.batches) > 5
        sizes = [b.shape[0] for b in recorder.batches]
        assert sizes[0] == 200 and all(s2 <= s1 for s1, s2 in zip(sizes, sizes[1:]))
        assert sizes[-1] < sizes[0]


def test_anisotropic_unaccepted_rows_get_redrawn_threshold_edge(monkeypatch):
    # A tight band: most rows have no accepted proposal in the first round.
    space = spaces.ExtendedSphereSpace(4)
    std = torch.tensor([0.3, 0.2, 0.1, 0.05])
    z = space.uniform(200, _gen(2), "cpu")
    recorder = RandnRecorder(monkeypatch)
    out = space.anisotropic_normal(z, std, 0.02, _gen(3), 2)
    monkeypatch.undo()
    assert len(recorder.batches) > 1
    _check_rows_accepted(z, out, recorder, std, 0.02)


def test_anisotropic_gives_up_with_error(monkeypatch):
    monkeypatch.setattr(spaces, "MAX_REDRAW_ROUNDS", 5)
    space = spaces.ExtendedSphereSpace(3)
    z = space.uniform(4, _gen(0), "cpu")
    with pytest.raises(spaces.SamplerError):
        # Threshold 0: nothing is ever accepted.
        space.anisotropic_normal(z, torch.full((3,), 0.1), 0.0, _gen(1), 2)


def test_anisotropic_seeded_repeatability():
    space = spaces.ExtendedSphereSpace(10)
    std = README_LAMBDA.rsqrt()
    z = space.uniform(500, _gen(5), "cpu")
    first = space.anisotropic_normal(z, std, 0.1, _gen(6), 3)
    again = space.anisotropic_normal(z, std, 0.1, _gen(6), 3)
    other = space.anisotropic_normal(z, std, 0.1, _gen(7), 3)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert torch.equal(space.uniform(50, _gen(5), "cpu"), space.uniform(50, _gen(5), "cpu"))


def test_anisotropic_spread_ordered_like_inverse_lambda():
    n = 10
    space = spaces.ExtendedSphereSpace(n)
    lam = latent_spaces.ground_truth_lambda(n, 5, 25, linearly_spaced=True)
    torch.testing.assert_close(lam, torch.linspace(5, 25, n))
    std = lam.rsqrt()
    g = _gen(8)
    cand = latent_spaces.candidates_for(spaces.acceptance_rate(space, std, 0.1, g, "cpu"))
    z = space.uniform(20_000, g, "cpu")
    spread = (space.anisotropic_normal(z, std, 0.1, g, cand) - z).std(dim=0)
    # Larger λ, smaller spread: strictly decreasing along the dimensions.
    assert (spread[:-1] > spread[1:]).all(), spread
    assert spread[0] / spread[-1] > 1.5
    # The spread of δ is 1/sqrt(λ); normalising to the sphere only shrinks it.
    assert (spread < std).all()


def test_acceptance_rate_readme_setting():
    space = spaces.ExtendedSphereSpace(10)
    std = README_LAMBDA.rsqrt()
    rate = spaces.acceptance_rate(space, std, 0.1, _gen(9), "cpu")
    # Independent NumPy estimate on 10x as many draws.
    rng = np.random.default_rng(0)
    z = rng.standard_normal((200_000, 10))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    delta = rng.standard_normal((200_000, 10)) / np.sqrt(README_LAMBDA.numpy())
    expected = np.mean(np.abs(np.linalg.norm(z + delta, axis=1) - 1) < 0.1)
    assert 0.08 < expected < 0.12  # "about 10 %" of the draws are accepted
    assert rate == pytest.approx(expected, abs=0.01)  # ~4.5 binomial s.e. of 20,000 draws


def test_candidates_for():
    assert latent_spaces.candidates_for(0.1) == 15
    assert latent_spaces.candidates_for(1.0) == 2
    assert latent_spaces.candidates_for(0.0) == latent_spaces.MAX_CANDIDATES
    assert latent_spaces.candidates_for(1e-9) == latent_spaces.MAX_CANDIDATES


def test_ground_truth_lambda():
    lam = latent_spaces.ground_truth_lambda(10, 5, 25, linearly_spaced=False)
    assert lam.tolist() == [25.0] * 5 + [5.0] * 5
    # floor(n/2) entries get gt_lambda_2
    assert latent_spaces.ground_truth_lambda(5, 5, 25, False).tolist() == [25.0] * 2 + [5.0] * 3


# --------------------------------------------------------------------- marginals


def test_box_uniform_support_and_moments():
    box = spaces.NBoxSpace(3, -2.0, 1.0)
    x = box.uniform(20_000, _gen(10), "cpu")
    assert x.shape == (20_000, 3)
    assert (x >= -2.0).all() and (x <= 1.0).all()
    torch.testing.assert_close(x.mean(0), torch.full((3,), -0.5), atol=0.03, rtol=0)
    torch.testing.assert_close(x.var(0), torch.full((3,), 9 / 12), atol=0.03, rtol=0)
    assert stats.kstest(x[:, 0].numpy(), stats.uniform(-2, 3).cdf).pvalue > KS_ALPHA


@pytest.mark.parametrize("n", [3, 10])
def test_sphere_uniform(n):
    r = 2.5
    sphere = spaces.NSphereSpace(n, r)
    x = sphere.uniform(20_000, _gen(11), "cpu")
    torch.testing.assert_close(x.norm(dim=1), torch.full((20_000,), r), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.mean(0), torch.zeros(n), atol=0.05, rtol=0)
    # For the uniform distribution on S^(n-1): (x_1/r + 1)/2 ~ Beta((n-1)/2, (n-1)/2).
    u = (x[:, 0].double().numpy() / r + 1) / 2
    assert stats.kstest(u, stats.beta((n - 1) / 2, (n - 1) / 2).cdf).pvalue > KS_ALPHA


def test_unbounded_has_no_uniform():
    with pytest.raises(ValueError):
        spaces.NRealSpace(3).uniform(10, _gen(0), "cpu")
    with pytest.raises(ValueError):
        spaces.NBoxSpace(3).von_mises_fisher(torch.ones(2, 3), 1.0, _gen(0))


# ------------------------------------------------------------------------- noise


@pytest.mark.parametrize("a", [0.3, 1.0, 2.5, 7.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_standard_gamma_against_scipy(a, dtype):
    x = spaces.standard_gamma(a, (20_000,), _gen(12), "cpu", dtype)
    assert x.dtype == dtype and x.shape == (20_000,)
    assert (x > 0).all()
    assert stats.kstest(x.double().numpy(), stats.gamma(a).cdf).pvalue > KS_ALPHA
    assert x.mean().item() == pytest.approx(a, rel=0.05)


def test_standard_gamma_shape_and_seed():
    x = spaces.standard_gamma(1.5, (50, 4), _gen(13), "cpu")
    assert x.shape == (50, 4)
    assert torch.equal(x, spaces.standard_gamma(1.5, (50, 4), _gen(13), "cpu"))


@pytest.mark.parametrize("kind,p,dist", [
    ("normal", None, stats.norm()),
    ("laplace", None, stats.laplace()),
    ("generalized_normal", 0.5, stats.gennorm(0.5)),
    ("generalized_normal", 1.5, stats.gennorm(1.5)),
    ("generalized_normal", 3.0, stats.gennorm(3.0)),
])
def test_noise_against_scipy(kind, p, dist):
    x = spaces.noise(kind, (10_000, 2), _gen(14), "cpu", p=p)
    assert x.shape == (10_000, 2)
    x = x.double().numpy().ravel()
    assert stats.kstest(x, dist.cdf).pvalue > KS_ALPHA
    assert x.var() == pytest.approx(dist.var(), rel=0.1)
    assert abs(x.mean()) < 5 * math.sqrt(dist.var() / x.size)


def test_generalized_normal_p2_and_p1_match_normal_and_laplace_shapes():
    # gennorm(2) is N(0, 1/2) and gennorm(1) is Laplace(0, 1).
    x2 = spaces.noise("generalized_normal", (20_000,), _gen(15), "cpu", p=2.0).double().numpy()
    assert stats.kstest(x2, stats.norm(scale=math.sqrt(0.5)).cdf).pvalue > KS_ALPHA
    x1 = spaces.noise("generalized_normal", (20_000,), _gen(16), "cpu", p=1.0).double().numpy()
    assert stats.kstest(x1, stats.laplace().cdf).pvalue > KS_ALPHA


def test_unknown_noise_kind():
    with pytest.raises(ValueError):
        spaces.noise("cauchy", (3,), _gen(0), "cpu")


def test_unbounded_around_moments():
    real = spaces.NRealSpace(2)
    mean = torch.tensor([1.0, -3.0]).expand(20_000, 2).clone()
    x = real.around(mean, 0.5, "laplace", _gen(17))
    torch.testing.assert_close(x.mean(0), torch.tensor([1.0, -3.0]), atol=0.03, rtol=0)
    torch.testing.assert_close(x.var(0), torch.full((2,), 2 * 0.5 ** 2), rtol=0.06, atol=0)


# -------------------------------------------------------------- box truncation


@pytest.mark.parametrize("kind", ["normal", "laplace", "generalized_normal"])
def test_box_around_stays_inside(kind):
    box = spaces.NBoxSpace(4, 0.0, 1.0)
    mean = box.uniform(2000, _gen(18), "cpu")
    x = box.around(mean, 2.0, kind, _gen(19), p=3.0)  # wide noise: many redraws
    assert x.shape == mean.shape
    assert (x >= 0).all() and (x <= 1).all()
    # The conditional stays centred on z: an unclipped coordinate-wise redraw.
    assert not torch.equal(x, mean)


def test_box_truncation_is_truncated_normal():
    # Coordinate-wise redrawing of N(μ, s²) until inside [0, 1] is exactly the
    # normal truncated to the box.
    box = spaces.NBoxSpace(2, 0.0, 1.0)
    mu, s = 0.8, 0.4
    mean = torch.full((10_000, 2), mu)
    x = box.around(mean, s, "normal", _gen(20)).double().numpy().ravel()
    dist = stats.truncnorm((0 - mu) / s, (1 - mu) / s, loc=mu, scale=s)
    assert stats.kstest(x, dist.cdf).pvalue > KS_ALPHA


def test_box_around_gives_up_with_error(monkeypatch):
    monkeypatch.setattr(spaces, "MAX_REDRAW_ROUNDS", 3)
    box = spaces.NBoxSpace(2, 0.0, 1e-9)
    with pytest.raises(spaces.SamplerError):
        box.around(torch.full((50, 2), 100.0), 1e-3, "normal", _gen(0))


# ------------------------------------------------------------------- the sphere


def test_sphere_around_projects_to_radius():
    sphere = spaces.NSphereSpace(5, 3.0)
    z = sphere.uniform(1000, _gen(21), "cpu")
    for kind in ("normal", "laplace", "generalized_normal"):
        x = sphere.around(z, 0.5, kind, _gen(22), p=0.7)
        torch.testing.assert_close(x.norm(dim=1), torch.full((1000,), 3.0), atol=1e-5, rtol=0)
        # Still close to its anchor.
        assert ((x * z).sum(1) / 9.0).mean() > 0.5


def _householder_to_e1(mu):
    """(B, n, n) reflections H_i with H_i mu_i = e_1."""
    e1 = torch.zeros_like(mu)
    e1[:, 0] = 1
    v = mu - e1
    vv = (v * v).sum(1, keepdim=True).clamp_min(1e-30)
    eye = torch.eye(mu.shape[1], dtype=mu.dtype)
    return eye - 2 * v[:, :, None] * v[:, None, :] / vv[:, :, None]


def _mean_resultant_length(n, kappa):
    # A_n(κ) = I_{n/2}(κ) / I_{n/2-1}(κ)
    return special.ive(n / 2, kappa) / special.ive(n / 2 - 1, kappa)


@pytest.mark.parametrize("n", [3, 10])
@pytest.mark.parametrize("kappa", [1.0, 10.0, 200.0])
def test_von_mises_fisher_against_scipy(n, kappa):
    num = 5000
    g = _gen(23)
    # A different mean per row, unit norm to float64 precision.
    mu = spaces.NSphereSpace(n).uniform(num, g, "cpu").double()
    mu = mu / mu.norm(dim=1, keepdim=True)
    x = spaces.von_mises_fisher(mu, kappa, g)
    assert x.shape == (num, n) and x.dtype == torch.float64
    torch.testing.assert_close(x.norm(dim=1), torch.ones(num, dtype=torch.float64))

    ref = stats.vonmises_fisher(np.eye(n)[0], kappa).rvs(num, random_state=np.random.default_rng(0))
    w = (x * mu).sum(1).numpy()  # μ_i · x_i
    # Mean resultant length: analytic, and as scipy samples it.
    se = w.std() / math.sqrt(num)
    assert w.mean() == pytest.approx(_mean_resultant_length(n, kappa), abs=5 * se)
    assert w.mean() == pytest.approx(ref[:, 0].mean(), abs=7 * se)
    assert stats.ks_2samp(w, ref[:, 0]).pvalue > KS_ALPHA

    # Rotate every sample so that its own mean becomes e_1: the rotated sample
    # is vMF(e_1, κ), directly comparable with scipy's, including the
    # directions orthogonal to the mean.
    y = (_householder_to_e1(mu) @ x[:, :, None]).squeeze(2).numpy()
    np.testing.assert_allclose(y[:, 0], w, atol=1e-10)
    for k in (1, n - 1):
        assert stats.ks_2samp(y[:, k], ref[:, k]).pvalue > KS_ALPHA
    orth = np.sqrt(np.maximum(1 - w ** 2, 0)) + 1e-12
    # The orthogonal direction is uniform on S^(n-2): mean 0.
    assert np.abs((y[:, 1:] / orth[:, None]).mean(0)).max() < 5 / math.sqrt(num)


def test_von_mises_fisher_float32_and_radius():
    sphere = spaces.NSphereSpace(4, 2.0)
    g = _gen(24)
    mu = sphere.uniform(1000, g, "cpu")
    x = sphere.von_mises_fisher(mu, 50.0, g)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x.norm(dim=1), torch.full((1000,), 2.0), atol=1e-5, rtol=0)
    w = ((x * mu).sum(1) / 4.0).double().mean().item()
    assert w == pytest.approx(_mean_resultant_length(4, 50.0), abs=0.005)
    again = sphere.von_mises_fisher(mu, 50.0, _gen(25))
    assert torch.equal(sphere.von_mises_fisher(mu, 50.0, _gen(25)), again)


# ------------------------------------------------------------- latent spaces


def test_marginal_around_center_on_sphere():
    sphere = spaces.NSphereSpace(3, 1.0)
    center = torch.tensor([1.0, 0.0, 0.0])
    marginal = latent_spaces.Marginal("normal", 0.1, 2, center)
    z = marginal.sample(sphere, 2000, _gen(26), "cpu")
    torch.testing.assert_close(z.norm(dim=1), torch.ones(2000), atol=1e-5, rtol=0)
    assert z[:, 0].mean() > 0.95
    assert torch.equal(center, torch.tensor([1.0, 0.0, 0.0]))  # not modified in place
