"""The encoder f: an MLP n -> 10n -> 50n -> 50n -> 50n -> 50n -> 10n -> n.

Its last module normalises the output; the names, the printed repr and the
parameter names are the reference's, so its state dict loads in either program:
    RescaleLayer()                  fixed unit sphere (``--p 0`` without a learnable norm)
    RescaleLayer(), parameter r     sphere of learnable radius (``--sphere-norm``)
    SoftclipLayer(), max_abs_bound  sigmoid scaled by learnable bounds (``--box-norm``)
    none                            (``--p`` > 0 without a learnable norm)
"""

import functools

import torch
from torch import nn

HIDDEN_FACTORS = (10, 50, 50, 50, 50, 10)
LEAKY_SLOPE = 0.01


class LeakyReLU(nn.LeakyReLU):
    """LeakyReLU applied in place on the preceding Linear's output.

    Same values and gradients as ``nn.LeakyReLU`` (its backward reads the
    sign from the output, which equals the input's for a positive slope),
    but no fresh (2B, width) buffer per layer (what that saves:
    training_logs/speed.md).
    Prints as the reference's ``LeakyReLU(negative_slope=…)``.
    """

    def __init__(self, negative_slope=LEAKY_SLOPE):
        super().__init__(negative_slope=negative_slope, inplace=True)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class RescaleLayer(nn.Module):
    """Project every row onto a sphere: the unit sphere, or one of learnable radius ``r``.

    As the reference: the fixed radius is not a parameter (not in the state
    dict), the learnable one is the parameter ``r`` (init 1, shape (1,)).
    """

    def __init__(self, learnable=False):
        super().__init__()
        self.r = nn.Parameter(torch.ones(1)) if learnable else None

    def forward(self, x):
        if self.r is None:
            return x / x.norm(dim=-1, keepdim=True)
        return self.r * x / x.norm(dim=-1, keepdim=True)


class SoftclipLayer(nn.Module):
    """A sigmoid scaled by the learnable per-dimension bound ``max_abs_bound`` (init 1)."""

    def __init__(self, n):
        super().__init__()
        self.max_abs_bound = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return self.max_abs_bound * torch.sigmoid(x)


def output_layer(normalization, n):
    """The encoder's last module for an output normalisation (settings.NORMALIZATIONS), or None."""
    layers = {
        "fixed_sphere": RescaleLayer,
        "learnable_sphere": functools.partial(RescaleLayer, learnable=True),
        "learnable_box": functools.partial(SoftclipLayer, n),
        "none": None,
    }
    if normalization not in layers:
        raise ValueError(f"unknown output normalisation {normalization!r}")
    return layers[normalization]() if layers[normalization] is not None else None


def layer_widths(n):
    """The encoder's widths, input to output: n, 10n, 50n, 50n, 50n, 50n, 10n, n."""
    return [n] + [k * n for k in HIDDEN_FACTORS] + [n]


def build_encoder(n, normalization="fixed_sphere"):
    """The encoder as an ``nn.Sequential`` (its repr matches the reference log)."""
    dims = layer_widths(n)
    layers = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(LeakyReLU(LEAKY_SLOPE))
    last = output_layer(normalization, n)
    if last is not None:
        layers.append(last)
    return nn.Sequential(*layers)
