"""The frozen mixing g (invertible_network_utils): conditioning, freezing, seeding, invertibility."""

import numpy as np
import pytest
import torch
from torch import nn

import invertible_network_utils as inu
import settings

N = 4
N_COND = 2000  # small threshold sample: keeps the search for a layer under it fast


def _build(act="leaky_relu", seed=0, n=N, n_layers=3, ratio=0.0, count=N_COND):
    return inu.construct_invertible_mlp(n, n_layers, act, ratio, torch.Generator().manual_seed(seed),
                                        n_iter_cond_thresh=count)


def _linear_weights(g):
    return [m.weight.detach().double().numpy() for m in g if isinstance(m, nn.Linear)]


def _numpy_conditions(count, n, seed):
    """Condition numbers of the first ``count`` matrices g draws, recomputed with NumPy.

    The construction draws the threshold's sample first: entries U[-1, 1]
    from ``torch.rand``; columns are then scaled to unit norm.
    """
    w = (torch.rand(count, n, n, generator=torch.Generator().manual_seed(seed)) * 2 - 1).double().numpy()
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    return np.linalg.cond(w)


@pytest.fixture(scope="module")
def built():
    return _build()


def test_structure(built):
    g, threshold, conds = built
    assert isinstance(g, nn.Sequential) and len(g) == 5
    for i, m in enumerate(g):
        if i % 2 == 0:
            assert isinstance(m, nn.Linear) and m.bias is None and m.weight.shape == (N, N)
        else:
            assert isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.2
    assert len(conds) == 3


def test_layers_under_threshold(built):
    g, threshold, conds = built
    for w, c in zip(_linear_weights(g), conds):
        cond = np.linalg.cond(w)
        assert cond <= threshold * (1 + 1e-9)
        assert cond == pytest.approx(c, rel=1e-9)  # the reported numbers are the layers'


def test_columns_unit_norm(built):
    for w in _linear_weights(built[0]):
        np.testing.assert_allclose(np.linalg.norm(w, axis=0), 1.0, atol=1e-6)
        assert np.abs(w).max() <= 1.0


def test_parameters_frozen(built):
    g = built[0]
    params = list(g.parameters())
    assert len(params) == 3 and not any(p.requires_grad for p in params)
    z = torch.randn(5, N, requires_grad=True)
    g(z).sum().backward()  # gradients still flow through g to its input
    assert all(p.grad is None for p in params) and z.grad is not None


def test_threshold_is_min_of_sampled_condition_numbers(built):
    threshold = built[1]
    assert threshold == pytest.approx(_numpy_conditions(N_COND, N, 0).min(), rel=1e-5)


def test_threshold_quantile():
    _, threshold, _ = _build(ratio=0.5, n_layers=1, seed=3)
    assert threshold == pytest.approx(np.quantile(_numpy_conditions(N_COND, N, 3), 0.5), rel=1e-5)


def test_readme_size_threshold_and_layers():
    # n = 10 with the default 25,000 samples, as in the experiment.
    g, threshold, conds = inu.construct_invertible_mlp(10, 3, "leaky_relu", 0.0,
                                                       torch.Generator().manual_seed(1))
    assert threshold == pytest.approx(_numpy_conditions(inu.N_COND_SAMPLES, 10, 1).min(), rel=1e-5)
    for w in _linear_weights(g):
        assert np.linalg.cond(w) <= threshold * (1 + 1e-9)


def test_seeded_repeatability(built):
    g, threshold, conds = built
    g2, threshold2, conds2 = _build()
    assert threshold == threshold2 and conds == conds2
    for w, w2 in zip(_linear_weights(g), _linear_weights(g2)):
        assert np.array_equal(w, w2)
    g3, threshold3, _ = _build(seed=1)
    assert threshold3 != threshold
    assert not np.array_equal(_linear_weights(g)[0], _linear_weights(g3)[0])


@pytest.mark.parametrize("act", settings.ACTIVATIONS)
def test_each_activation_builds(act):
    g, _, _ = _build(act, n_layers=2)
    assert len(g) == 3 and isinstance(g[1], type(inu.activation(act)))
    assert torch.isfinite(g(torch.randn(10, N))).all()


def test_unknown_activation():
    with pytest.raises(ValueError):
        inu.activation("tanh")


def test_activation_definitions():
    x = torch.linspace(-4, 4, 81)
    torch.testing.assert_close(inu.activation("leaky_relu")(x), torch.where(x > 0, x, 0.2 * x))
    torch.testing.assert_close(inu.activation("elu")(x), torch.where(x > 0, x, torch.expm1(x)))
    torch.testing.assert_close(inu.activation("smooth_leaky_relu")(x),
                               0.2 * x + 0.8 * torch.log1p(torch.exp(x)))
    torch.testing.assert_close(inu.activation("softplus")(x), torch.log1p(torch.exp(x)))
    torch.testing.assert_close(inu.activation("relu")(x), x.clamp_min(0))


def test_leaky_relu_mixing_inverts_exactly(built):
    g = built[0]
    z = torch.randn(500, N, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x = g(z.float()).double()
    # Undo layer by layer: W⁻¹, then the leaky ReLU's inverse (slope 1/0.2).
    y = x
    weights = _linear_weights(g)
    for k, w in enumerate(reversed(weights)):
        y = torch.linalg.solve(torch.from_numpy(w), y.T).T
        if k < len(weights) - 1:
            y = torch.where(y > 0, y, y / 0.2)
    torch.testing.assert_close(y, z, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("act", ["leaky_relu", "elu", "smooth_leaky_relu", "softplus"])
def test_jacobian_nonsingular(act):
    g, _, _ = _build(act)
    gen = torch.Generator().manual_seed(4)
    for z in torch.randn(20, N, generator=gen):
        jac = torch.autograd.functional.jacobian(g, z)  # (N, N)
        s = torch.linalg.svdvals(jac.double())
        assert s[-1] > 1e-3, (act, s)
