"""Latent spaces and their samplers: in torch on the device of their inputs, all randomness drawn from
an explicit ``torch.Generator``, so a seeded run repeats."""

import math

import torch

# Rounds of a redraw loop before we give up: then the configuration cannot be sampled, and an error beats a hang.
MAX_REDRAW_ROUNDS = 10_000
# Largest proposal tensor of the rejection sampler (elements).
MAX_PROPOSAL_ELEMENTS = 1 << 24


class SamplerError(RuntimeError):
    """A sampler could not produce a batch in reasonable time."""


def settle_round(out, rows, done, values):
    """One round of a rejection loop: ``out[rows[done]] = values[done]`` (out (N, ...), rows (m,), done (m,)
    bool, values (m, ...)); returns the rows still open. Its one host sync is the ``nonzero`` (the next
    round's size): the store writes every open row by index, as a boolean mask would sync again."""
    accepted = done.reshape(-1, *[1] * (values.dim() - 1))  # (m, 1, ...) broadcasts over a row
    out[rows] = torch.where(accepted, values, out[rows])
    return rows[(~done).nonzero(as_tuple=True)[0]]


def fill_by_rejection(out, propose, what):
    """Fill the (N,) ``out`` in rounds of ``propose(m) -> (accepted (m,) bool, values (m,))`` for its m
    entries still open; SamplerError naming ``what`` after MAX_REDRAW_ROUNDS rounds."""
    todo = torch.arange(out.numel(), device=out.device)
    for _ in range(MAX_REDRAW_ROUNDS):
        todo = settle_round(out, todo, *propose(todo.numel()))
        if todo.numel() == 0:
            return out
    raise SamplerError(f"{what} sampler did not converge")


def standard_gamma(shape_param, size, generator, device, dtype=torch.float32):
    """A tensor of ``size`` of Gamma(shape_param, 1) samples (Marsaglia & Tsang 2000), vectorised, as
    ``torch._standard_gamma`` takes no generator. For shape a < 1: G(a) = G(a+1) U^(1/a)."""
    a = float(shape_param)
    boost = a < 1.0
    d = (a + 1.0 if boost else a) - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    numel = math.prod(size)

    def propose(m):
        # Two candidates per open entry: acceptance is > 95 %, so the loop almost always ends at once.
        x = torch.randn(m, 2, generator=generator, device=device, dtype=dtype)
        u = torch.rand(m, 2, generator=generator, device=device, dtype=dtype)
        v = (1.0 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-30)))
        first = ok.to(torch.int8).argmax(dim=1)
        return ok.any(dim=1), d * v.gather(1, first[:, None]).squeeze(1)

    out = fill_by_rejection(torch.empty(numel, device=device, dtype=dtype), propose, "gamma")
    if boost:
        u = torch.rand(numel, generator=generator, device=device, dtype=dtype)
        out = out * u.clamp_min(1e-30) ** (1.0 / a)
    return out.reshape(size)


def noise(kind, size, generator, device, p=None, dtype=torch.float32):
    """Unit-scale noise of the named kind: 'normal', 'laplace' or 'generalized_normal' (exponent p)."""
    if kind == "normal":
        return torch.randn(size, generator=generator, device=device, dtype=dtype)
    if kind == "laplace":  # inverse CDF; u in [-0.5, 0.5), log(0) guarded at the edge
        u = torch.rand(size, generator=generator, device=device, dtype=dtype) - 0.5
        return -torch.sign(u) * torch.log((1 - 2 * u.abs()).clamp_min(torch.finfo(dtype).tiny))
    if kind == "generalized_normal":  # density ∝ exp(-|x|^p): ε G^(1/p), G ~ Gamma(1/p, 1), ε = ±1
        g = standard_gamma(1.0 / p, size, generator, device, dtype)
        sign = torch.randint(0, 2, size, generator=generator, device=device).to(dtype) * 2 - 1
        return sign * g ** (1.0 / p)
    raise ValueError(f"unknown noise kind {kind!r}")


def von_mises_fisher(mean, kappa, generator):
    """(B, n) unit vectors x_i ~ vMF(mean_i, kappa) for (B, n) unit ``mean``, by Wood's (1994)
    algorithm vectorised over the means (``scipy.stats.vonmises_fisher`` takes a single mean)."""
    bsz, n = mean.shape
    device, dtype = mean.device, mean.dtype
    m1 = n - 1.0
    # Work in float64 for the scalar constants: for large kappa b is tiny.
    b = m1 / (2.0 * kappa + math.sqrt(4.0 * kappa * kappa + m1 * m1))
    x0 = (1.0 - b) / (1.0 + b)
    c = kappa * x0 + m1 * math.log(1.0 - x0 * x0)

    def propose(m):
        g1 = standard_gamma(m1 / 2.0, (m,), generator, device, torch.float64)
        g2 = standard_gamma(m1 / 2.0, (m,), generator, device, torch.float64)
        beta = g1 / (g1 + g2)
        cand = (1.0 - (1.0 + b) * beta) / (1.0 - (1.0 - b) * beta)
        u = torch.rand(m, generator=generator, device=device, dtype=torch.float64)
        return kappa * cand + m1 * torch.log1p(-x0 * cand) - c >= torch.log(u), cand

    w = fill_by_rejection(torch.empty(bsz, device=device, dtype=torch.float64), propose, "von Mises-Fisher")[:, None]
    # A uniform direction orthogonal to the mean.
    v = torch.randn(bsz, n, generator=generator, device=device, dtype=torch.float64)
    mu = mean.to(torch.float64)
    v = v - (v * mu).sum(dim=1, keepdim=True) * mu
    v = v / v.norm(dim=1, keepdim=True)
    return (w * mu + torch.sqrt((1.0 - w * w).clamp_min(0.0)) * v).to(dtype)


class NRealSpace:
    """R^n (``--space-type unbounded``), and the base of the spaces in it: ``around(mean, scale, kind,
    generator, p)`` samples ``mean + scale * noise``, which they restrict to themselves."""

    def __init__(self, n):
        self.n = n

    def uniform(self, size, generator, device):
        raise ValueError(f"{type(self).__name__} has no uniform distribution")

    def von_mises_fisher(self, mean, kappa, generator):
        raise ValueError(f"{type(self).__name__} has no von Mises-Fisher distribution")

    def around(self, mean, scale, kind, generator, p=None):
        return mean + scale * noise(kind, mean.shape, generator, mean.device, p, mean.dtype)


class NBoxSpace(NRealSpace):
    """The box [min_, max_]^n; conditionals are redrawn coordinate-wise until inside."""

    def __init__(self, n, min_=0.0, max_=1.0):
        super().__init__(n)
        self.min_, self.max_ = float(min_), float(max_)

    def uniform(self, size, generator, device):
        u = torch.rand(size, self.n, generator=generator, device=device)
        return self.min_ + (self.max_ - self.min_) * u

    def around(self, mean, scale, kind, generator, p=None):
        out = super().around(mean, scale, kind, generator, p)
        for _ in range(MAX_REDRAW_ROUNDS):
            outside = (out < self.min_) | (out > self.max_)
            idx = outside.nonzero(as_tuple=True)
            if idx[0].numel() == 0:
                return out
            fresh = noise(kind, (idx[0].numel(),), generator, mean.device, p, mean.dtype)
            out[idx] = mean[idx] + scale * fresh
        raise SamplerError("box conditional: coordinates stay outside the box; "
                           "check --c-param against --box-min/--box-max")


class NSphereSpace(NRealSpace):
    """The sphere of radius r in R^n."""

    def __init__(self, n, r=1.0):
        super().__init__(n)
        self.r = float(r)

    def project(self, x):
        return self.r * x / x.norm(dim=-1, keepdim=True)

    def uniform(self, size, generator, device):
        return self.project(torch.randn(size, self.n, generator=generator, device=device))

    def around(self, mean, scale, kind, generator, p=None):
        return self.project(super().around(mean, scale, kind, generator, p))

    def von_mises_fisher(self, mean, kappa, generator):
        return self.r * von_mises_fisher(mean / self.r, kappa, generator)


class ExtendedSphereSpace(NSphereSpace):
    """The unit sphere (r = 1) of the AnInfoNCE experiment, with its anisotropic conditional."""

    def anisotropic_normal(self, mean, std, threshold, generator, candidates):
        """(B, n) positives z~ = (z+δ)/‖z+δ‖ of the (B, n) unit anchors ``mean``, δ_i ~ N(0, std_i²)
        (std: (n,), 1/sqrt(λ)) accepted only when | ‖z+δ‖ − 1 | < threshold: ``candidates`` proposals
        per row, the first accepted kept; the rows with none redrawn alone, with twice the proposals."""
        rows = None  # None: all rows still open (saves an index on the first round)
        k = candidates
        for _ in range(MAX_REDRAW_ROUNDS):
            z = mean if rows is None else mean[rows]
            m = z.shape[0]
            k = max(1, min(k, MAX_PROPOSAL_ELEMENTS // (m * self.n)))  # bounds the proposals' size
            delta = torch.randn(m, k, self.n, generator=generator,
                                device=mean.device, dtype=mean.dtype) * std
            y = z[:, None, :] + delta  # (m, k, n)
            norm = y.norm(dim=2)  # (m, k)
            ok = (norm - 1.0).abs() < threshold
            first = ok.to(torch.int8).argmax(dim=1)  # first accepted, 0 if none
            pick = y.gather(1, first[:, None, None].expand(m, 1, self.n)).squeeze(1)
            pick = pick / norm.gather(1, first[:, None])
            done = ok.any(dim=1)  # (m,)
            if rows is None:
                out = pick
                # The round's one host sync: which rows are still open.
                rows = (~done).nonzero(as_tuple=True)[0]
            else:
                rows = settle_round(out, rows, done, pick)
            if rows.numel() == 0:
                return out
            # The rows left are few: more proposals each cost little and save rounds (of a dozen kernel launches each).
            k *= 2
        raise SamplerError("rejection sampler did not converge; "
                           "raise --threshold or --gt-lambda-1/--gt-lambda-2")


def acceptance_rate(space, std, threshold, generator, device, num=20_000):
    """Estimate the acceptance rate of ``anisotropic_normal`` from ``num`` proposals."""
    z = space.uniform(num, generator, device)
    delta = torch.randn(num, space.n, generator=generator, device=device) * std
    ok = ((z + delta).norm(dim=1) - 1.0).abs() < threshold
    return ok.float().mean().item()
