"""The encoder f (encoders.py): layout, repr as in the reference log, output normalisation."""

import pytest
import torch
from torch import nn

import command_line
import encoders
import settings

# The encoder's repr in the published logs (n = 10), after "f:  ".
REFERENCE_REPR = """Sequential(
  (0): Linear(in_features=10, out_features=100, bias=True)
  (1): LeakyReLU(negative_slope=0.01)
  (2): Linear(in_features=100, out_features=500, bias=True)
  (3): LeakyReLU(negative_slope=0.01)
  (4): Linear(in_features=500, out_features=500, bias=True)
  (5): LeakyReLU(negative_slope=0.01)
  (6): Linear(in_features=500, out_features=500, bias=True)
  (7): LeakyReLU(negative_slope=0.01)
  (8): Linear(in_features=500, out_features=500, bias=True)
  (9): LeakyReLU(negative_slope=0.01)
  (10): Linear(in_features=500, out_features=100, bias=True)
  (11): LeakyReLU(negative_slope=0.01)
  (12): Linear(in_features=100, out_features=10, bias=True)
  (13): RescaleLayer()
)"""


def test_repr_matches_reference_log():
    assert repr(encoders.build_encoder(10)) == REFERENCE_REPR
    assert repr(encoders.build_encoder(10)).endswith("(13): RescaleLayer()\n)")


@pytest.mark.parametrize("n", [3, 10])
def test_layer_sizes(n):
    f = encoders.build_encoder(n)
    sizes = [(m.in_features, m.out_features) for m in f if isinstance(m, nn.Linear)]
    dims = [n, 10 * n, 50 * n, 50 * n, 50 * n, 50 * n, 10 * n, n]
    assert sizes == list(zip(dims[:-1], dims[1:]))
    acts = [m for m in f if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == 6 and all(a.negative_slope == 0.01 for a in acts)
    assert len(f) == 14 and isinstance(f[13], encoders.RescaleLayer)


def test_fixed_sphere_output_unit_norm():
    torch.manual_seed(0)
    f = encoders.build_encoder(4)
    out = f(torch.randn(64, 4))
    assert out.shape == (64, 4)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(64))
    assert not list(f[13].parameters())


def test_learnable_sphere():
    torch.manual_seed(0)
    f = encoders.build_encoder(4, "learnable_sphere")
    layer = f[13]
    assert isinstance(layer, encoders.RescaleLayer) and repr(layer) == "RescaleLayer()"
    params = list(layer.parameters())
    assert len(params) == 1 and params[0].requires_grad and params[0].item() == 1.0
    with torch.no_grad():
        layer.r.fill_(2.5)
    out = f(torch.randn(32, 4))
    torch.testing.assert_close(out.norm(dim=1), torch.full((32,), 2.5))
    out.sum().backward()
    assert layer.r.grad is not None and torch.isfinite(layer.r.grad).all()


def test_learnable_box():
    torch.manual_seed(0)
    f = encoders.build_encoder(4, "learnable_box")
    layer = f[13]
    assert isinstance(layer, encoders.SoftclipLayer) and repr(layer) == "SoftclipLayer()"
    bound = layer.max_abs_bound
    assert bound.shape == (4,) and bound.requires_grad
    assert torch.equal(bound.detach(), torch.ones(4))
    with torch.no_grad():
        bound.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    out = f(torch.randn(32, 4))
    assert (out > 0).all() and (out < bound).all()
    out.sum().backward()
    assert torch.isfinite(bound.grad).all()


def test_no_normalisation():
    f = encoders.build_encoder(4, "none")
    assert len(f) == 13 and isinstance(f[-1], nn.Linear)
    with pytest.raises(ValueError):
        encoders.build_encoder(4, "cube")


# The reference's state-dict keys (its encoders.get_mlp with RescaleLayer / SoftclipLayer).
LINEAR_KEYS = [f"{i}.{w}" for i in range(0, 13, 2) for w in ("weight", "bias")]


@pytest.mark.parametrize("normalization,extra", [
    ("fixed_sphere", []),  # the fixed radius is a plain tensor there, not in the state dict
    ("learnable_sphere", ["13.r"]),
    ("learnable_box", ["13.max_abs_bound"]),
    ("none", []),
])
def test_state_dict_keys_are_the_references(normalization, extra):
    f = encoders.build_encoder(4, normalization)
    assert list(f.state_dict()) == LINEAR_KEYS + extra
    shapes = {k: tuple(v.shape) for k, v in f.state_dict().items()}
    assert shapes.get("13.r", (1,)) == (1,) and shapes.get("13.max_abs_bound", (4,)) == (4,)


@pytest.mark.parametrize("box_norm,sphere_norm,p,expected", [
    (True, False, 0, "learnable_box"),
    (False, True, 1, "learnable_sphere"),
    (False, False, 0, "fixed_sphere"),
    (False, False, 2, "none"),
])
def test_output_normalization_from_flags(box_norm, sphere_norm, p, expected):
    derived = settings.derive("box", p, 2, box_norm=box_norm, sphere_norm=sphere_norm)
    assert derived.normalization == expected


def test_every_normalisation_and_loss_name_builds():
    """Every name of the tables builds, and a loss learns Λ̂ exactly when its entry says so."""
    for name in settings.NORMALIZATIONS:
        encoders.build_encoder(3, name)
    args = command_line.config(n=3, tau=0.5)
    for name, entry in settings.LOSSES.items():
        loss = settings.load(entry.build)(args, torch.Generator().manual_seed(0))
        assert (len(list(loss.parameters())) > 0) == entry.learns_lambda, name
