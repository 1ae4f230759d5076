"""A latent space: a space plus its marginal p(z) and conditional p(z~ | z).

The marginal and the conditional are chosen from the flags once, in
``build_latent_space``, and stored as small objects (no lambdas).
"""

import math

import torch

import spaces

# Proposals per row and round of the rejection sampler, relative to the
# expected number 1/acceptance: 1.5/a leaves about 20 % of rows for a second,
# much smaller round, which costs less than drawing more proposals for all.
CANDIDATES_PER_EXPECTED_DRAW = 1.5
MAX_CANDIDATES = 4096


def noise_kind(p):
    """Name of the noise for the exponent p of --m-p / --c-p (1, 2 or other)."""
    if p == 1:
        return "laplace"
    if p == 2:
        return "normal"
    return "generalized_normal"


class Marginal:
    """p(z): uniform on the space, or noise of exponent ``p`` around ``center``."""

    def __init__(self, kind, scale=1.0, p=None, center=None):
        self.kind, self.scale, self.p, self.center = kind, scale, p, center

    def sample(self, space, size, generator, device):
        if self.kind == "uniform":
            return space.uniform(size, generator, device)
        mean = self.center.to(device).expand(size, -1).clone()
        return space.around(mean, self.scale, self.kind, generator, self.p)


class Conditional:
    """p(z~ | z): noise around z, vMF, or the anisotropic rejected normal."""

    def __init__(self, kind, scale=1.0, p=None, std=None, threshold=None, candidates=1):
        self.kind, self.scale, self.p = kind, scale, p
        self.std, self.threshold, self.candidates = std, threshold, candidates

    def sample(self, space, z, generator):
        if self.kind == "anisotropic":
            return space.anisotropic_normal(z, self.std, self.threshold, generator, self.candidates)
        if self.kind == "vmf":
            return space.von_mises_fisher(z, self.scale, generator)
        return space.around(z, self.scale, self.kind, generator, self.p)


class LatentSpace:
    def __init__(self, space, marginal, conditional):
        self.space, self.marginal, self.conditional = space, marginal, conditional

    def sample_marginal(self, size, generator, device):
        return self.marginal.sample(self.space, size, generator, device)

    def sample_conditional(self, z, generator):
        return self.conditional.sample(self.space, z, generator)


def ground_truth_lambda(n, gt_lambda_1, gt_lambda_2, linearly_spaced):
    """Λ of the extended_sphere experiment, shape (n,).

    bimodal: the first floor(n/2) entries are gt_lambda_2, the rest gt_lambda_1;
    linearly spaced: linspace(gt_lambda_1, gt_lambda_2, n).
    """
    if linearly_spaced:
        return torch.linspace(gt_lambda_1, gt_lambda_2, n)
    lam = torch.full((n,), float(gt_lambda_1))
    lam[: n // 2] = gt_lambda_2
    return lam


def candidates_for(acceptance):
    """Proposals per row for the rejection sampler at the given acceptance rate."""
    if acceptance <= 0:
        return MAX_CANDIDATES
    return int(min(MAX_CANDIDATES, max(1, math.ceil(CANDIDATES_PER_EXPECTED_DRAW / acceptance))))


def _box(args):
    return spaces.NBoxSpace(args.n, args.box_min, args.box_max)


def _sphere(args):
    return spaces.NSphereSpace(args.n, args.sphere_r)


def _unbounded(args):
    return spaces.NRealSpace(args.n)


def _extended_sphere(args):
    return spaces.ExtendedSphereSpace(args.n)


# --space-type -> the space it builds from the flags (also the parser's choices).
SPACES = {"box": _box, "sphere": _sphere, "unbounded": _unbounded, "extended_sphere": _extended_sphere}


def build_space(args):
    return SPACES[args.space_type](args)


def build_latent_space(args, space, anisotropic, positive_std=None, acceptance=None):
    """The latent space the flags describe.

    Args:
        args: parsed arguments (m_p, m_param, c_p, c_param, threshold, ...).
        space: from ``build_space(args)``.
        anisotropic: the conditional is the rejected anisotropic normal
            (settings.Derived.anisotropic).
        positive_std: (n,) its per-dimension standard deviations 1/sqrt(λ), on the device.
        acceptance: estimated acceptance rate of the rejection sampler.
    """
    if args.m_p == 0:
        marginal = Marginal("uniform")
    else:
        center = torch.zeros(args.n)
        if isinstance(space, spaces.NSphereSpace):
            center[0] = space.r  # η = e_1 on the sphere
        marginal = Marginal(noise_kind(args.m_p), args.m_param, args.m_p, center)

    if anisotropic:
        conditional = Conditional("anisotropic", std=positive_std, threshold=args.threshold,
                                  candidates=candidates_for(acceptance))
    elif args.c_p == 0:
        conditional = Conditional("vmf", scale=args.c_param)
    else:
        conditional = Conditional(noise_kind(args.c_p), args.c_param, args.c_p)
    return LatentSpace(space, marginal, conditional)
