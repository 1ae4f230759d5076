"""The encoder f: an MLP n -> 10n -> 50n -> 50n -> 50n -> 50n -> 10n -> n, its last module normalising the
output (settings.derive picks which from the flags). Names, reprs and parameter names are the reference's, so
its state dict loads in either program."""

import torch
from torch import nn

import settings

HIDDEN_FACTORS = (10, 50, 50, 50, 50, 10)
LEAKY_SLOPE = 0.01


class LeakyReLU(nn.LeakyReLU):
    """LeakyReLU in place on the preceding Linear's output, printed as the reference's: the values and
    gradients of ``nn.LeakyReLU`` (its backward reads the sign from the output, the input's for a
    positive slope) without a fresh (2B, width) buffer per layer (training_logs/speed.md)."""

    def __init__(self, negative_slope=LEAKY_SLOPE):
        super().__init__(negative_slope=negative_slope, inplace=True)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class RescaleLayer(nn.Module):
    """Project every row onto the unit sphere, or one of learnable radius ``r`` ((1,), init 1; a fixed
    radius is not in the state dict, as the reference's)."""

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


# The builders of settings.NORMALIZATIONS' entries: the encoder's last module, build(n).
def unit_sphere(n):
    return RescaleLayer()


def learnable_sphere(n):
    return RescaleLayer(learnable=True)


def layer_widths(n):
    """The encoder's widths, input to output: n, 10n, 50n, 50n, 50n, 50n, 10n, n."""
    return [n] + [k * n for k in HIDDEN_FACTORS] + [n]


def build_encoder(n, normalization="fixed_sphere"):
    """The encoder as an ``nn.Sequential`` (its repr matches the reference log)."""
    if normalization not in settings.NORMALIZATIONS:
        raise ValueError(f"unknown output normalisation {normalization!r}")
    dims = layer_widths(n)
    layers = []
    for width_in, width_out in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(width_in, width_out), LeakyReLU(LEAKY_SLOPE)]
    layers.pop()  # no activation after the last linear layer
    build = settings.NORMALIZATIONS[normalization].build
    if build is not None:
        layers.append(settings.load(build)(n))
    return nn.Sequential(*layers)
