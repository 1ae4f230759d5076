"""A latent space: a space plus its marginal p(z) and conditional p(z~ | z), picked from the tables
settings.SPACES and settings.CONDITIONALS (the conditional's name: settings.derive)."""

import math

import torch

import settings
import spaces

# Proposals per row and round of the rejection sampler, relative to the expected number 1/acceptance:
# 1.5/a leaves about 20 % of rows for a second, much smaller round, cheaper than more proposals for all.
CANDIDATES_PER_EXPECTED_DRAW = 1.5
MAX_CANDIDATES = 4096


def noise_kind(p):
    """Name of the noise for the exponent p of --m-p / --c-p (1, 2 or other)."""
    return {1: "laplace", 2: "normal"}.get(p, "generalized_normal")


class Marginal:
    """p(z): uniform on the space, or noise of exponent ``p`` around ``center``."""

    def __init__(self, kind, scale=1.0, p=None, center=None):
        self.kind, self.scale, self.p, self.center = kind, scale, p, center

    def sample(self, space, size, generator, device):
        if self.kind == "uniform":
            return space.uniform(size, generator, device)
        mean = self.center.to(device).expand(size, -1).clone()
        return space.around(mean, self.scale, self.kind, generator, self.p)


class Around:
    """p(z~ | z): noise of exponent --c-p (its ``kind``: noise_kind) and scale --c-param around z."""

    def __init__(self, args, positive_std=None, acceptance=None):
        self.kind, self.scale, self.p = noise_kind(args.c_p), args.c_param, args.c_p

    def sample(self, space, z, generator):
        return space.around(z, self.scale, self.kind, generator, self.p)


class VonMisesFisher:
    """p(z~ | z): von Mises-Fisher of concentration --c-param around z (a sphere)."""

    def __init__(self, args, positive_std=None, acceptance=None):
        self.kappa = args.c_param

    def sample(self, space, z, generator):
        return space.von_mises_fisher(z, self.kappa, generator)


class AnisotropicNormal:
    """p(z~ | z): the normal of per-dimension spreads ``positive_std`` around z, rejected outside the
    band ``| ‖z~‖ - 1 | < --threshold`` (extended_sphere), ``candidates`` proposals per row and round."""

    def __init__(self, args, positive_std, acceptance):
        self.std, self.threshold, self.candidates = positive_std, args.threshold, candidates_for(acceptance)

    def sample(self, space, z, generator):
        return space.anisotropic_normal(z, self.std, self.threshold, generator, self.candidates)


class LatentSpace:
    """A space with its marginal and conditional."""

    def __init__(self, space, marginal, conditional):
        self.space, self.marginal, self.conditional = space, marginal, conditional

    def sample_marginal(self, size, generator, device):
        return self.marginal.sample(self.space, size, generator, device)

    def sample_conditional(self, z, generator):
        return self.conditional.sample(self.space, z, generator)


def ground_truth_lambda(n, gt_lambda_1, gt_lambda_2, linearly_spaced):
    """(n,) Λ of extended_sphere: linspace(gt_lambda_1, gt_lambda_2, n), or bimodal: the first
    floor(n/2) entries gt_lambda_2, the rest gt_lambda_1."""
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


# The builders of settings.SPACES' entries, build(config).
def box(config):
    return spaces.NBoxSpace(config.n, config.box_min, config.box_max)


def sphere(config):
    return spaces.NSphereSpace(config.n, config.sphere_r)


def unbounded(config):
    return spaces.NRealSpace(config.n)


def extended_sphere(config):
    return spaces.ExtendedSphereSpace(config.n)


def build_space(config):
    """The space of --space-type."""
    return settings.load(settings.SPACES[config.space_type].build)(config)


def anisotropic_acceptance(args, space, positive_std, generator, device, num):
    """The acceptance rate of AnisotropicNormal (settings.Conditional's ``acceptance``), from ``num`` proposals."""
    return spaces.acceptance_rate(space, positive_std, args.threshold, generator, device, num)


def anisotropic_proposals(args):
    """The elements of AnisotropicNormal's largest proposal tensor (settings.Conditional's ``proposal_elements``)."""
    return min(MAX_CANDIDATES * args.batch_size * args.n, spaces.MAX_PROPOSAL_ELEMENTS)


def build_latent_space(args, space, conditional, positive_std=None, acceptance=None):
    """The latent space the flags describe on ``space`` (conditional: a key of settings.CONDITIONALS; the
    other two as its ``sampler`` takes them: ``positive_std`` (n,) is 1/sqrt(λ) of the ground-truth Λ on the
    device, ``acceptance`` its ``acceptance`` estimate; None where the entry has none)."""
    if args.m_p == 0:
        marginal = Marginal("uniform")
    else:
        center = torch.zeros(args.n)
        if isinstance(space, spaces.NSphereSpace):
            center[0] = space.r  # η = e_1 on the sphere
        marginal = Marginal(noise_kind(args.m_p), args.m_param, args.m_p, center)
    sampler = settings.load(settings.CONDITIONALS[conditional].sampler)
    return LatentSpace(space, marginal, sampler(args, positive_std, acceptance))
