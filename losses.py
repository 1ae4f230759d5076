"""Contrastive losses: AnInfoNCE / InfoNCE, the Lp form and the dot-product form. All end in
``contrastive_cross_entropy``; each is declared by name in settings.LOSSES, with its builder at the end here."""

import math

import torch
from torch import nn
import torch.nn.functional as F

import settings

THETA_INIT_STD = 0.1


# How θ becomes Λ̂ (--lambda-param, settings.LAMBDA_PARAMS): (θ -> Λ̂, Λ̂ -> θ). softplus is the reference's;
# exp puts Λ̂ in log space, where Adam's steps of roughly constant size in θ scale Λ̂ by a factor.
SOFTPLUS = (F.softplus, lambda lam: lam + torch.log(-torch.expm1(-lam)))
EXP = (torch.exp, torch.log)
# Floor of |x| in the Lp form for p < 1, where d|x|^p/dx is infinite at 0.
LP_EPS = 1e-6


def contrastive_cross_entropy(positive, row_lse):
    """Mean over rows of  -positive + log Σ_candidates exp(logit), from the (R,) logits ``positive`` and
    a list of (R,) log-sum-exps over disjoint parts of each row's candidates (the positive in one)."""
    lse = row_lse[0] if len(row_lse) == 1 else torch.logsumexp(torch.stack(row_lse), dim=0)
    return (lse - positive).mean()


# The (B, B) float32 blocks hard_negative_cross_entropy and AnInfoNCELoss.logits hold at their peak, forward and
# backward (the memory estimate): several (2B, 2B) tensors, 22 blocks measured on a CPU at B = 2048.
HARD_NEGATIVE_BLOCKS = 24


def hard_negative_cross_entropy(logits, beta):
    """The contrastive cross-entropy of the (2B, 2B) logits of 2B anchors with hard negatives (Robinson,
    Chuang, Sra, Jegelka, "Contrastive learning with hard negative samples", ICLR 2021; no debiasing, τ⁺ = 0).

    Row r's positive is column r ± B (its other view), its own column r is no candidate, the other M = 2B - 2
    columns are its negatives, of logits s_k. Their sum Σ_k exp(s_k) becomes M Σ_k w_k exp(s_k), w_k =
    exp(β s_k) / Σ_j exp(β s_j):
        loss_r = -s_pos + log(exp(s_pos) + M Σ_k w_k exp(s_k)),
    β = 0 the plain loss. The weights are part of the function, differentiated as Robinson et al.'s code
    does (nothing detached). With m = max_k s_k, log(M Σ_k w_k exp(s_k)) = m + log(M Σ_k w_k exp(s_k - m)),
    w = softmax(β (s - m)): no exponential overflows, and the sum is at least 1/M (the hardest negative has
    the largest weight), whatever β and Λ̂. m only shifts, so it is a constant to the gradient.
    """
    rows, half = logits.shape[0], logits.shape[0] // 2
    positive = torch.cat([logits.diagonal(half), logits.diagonal(-half)])  # (2B,)  s(r, r ± B)
    own = torch.eye(rows, dtype=torch.bool, device=logits.device)
    other = own | own.roll(half, dims=1)  # (2B, 2B)  a row's own column and its positive's: no negatives
    top = logits.detach().masked_fill(other, float("-inf")).amax(dim=1, keepdim=True)  # (2B, 1)  m
    shifted = logits - top
    # -inf after the product, not before: β · (-inf) is nan for a β that rounds to 0 in float32.
    weights = torch.softmax((beta * shifted).masked_fill(other, float("-inf")), dim=1)  # (2B, 2B)  w_k
    terms = weights * shifted.masked_fill(other, float("-inf")).exp()  # (2B, 2B)  w_k exp(s_k - m), 0 off the negatives
    weighted = top.squeeze(1) + torch.log((rows - 2) * terms.sum(dim=1))  # log(M Σ_k w_k exp(s_k))
    return contrastive_cross_entropy(positive, [positive, weighted])


class _ShiftedExpRowSums(torch.autograd.Function):
    """Row log-sum-exps of S = L Rᵀ, optionally without the diagonal, shifted by each row's max.

    The similarity block S (B, B) is the largest tensor of the loss, so this
    keeps one (B, B) buffer: S - m (m the row max, one reduction) is
    exponentiated in place and reused by the backward pass, which needs no
    (B, B) elementwise work. With E = exp(S - m) and r = E 1 the output is
    log r + m; its gradient is the row softmax E / r, whatever m is, so m is
    treated as a constant:
        dL = (g / r) ⊙ (E R),   dR = Eᵀ ((g / r) ⊙ L).
    The shift keeps every row finite for any Λ̂ (its largest term is exp(0)).
    """

    @staticmethod
    def forward(ctx, left, right, mask_diagonal):
        e = left @ right.T  # (B, B)
        if mask_diagonal:
            # A view is not its own candidate: exp(-inf) = 0 drops it.
            e.diagonal().fill_(float("-inf"))
        top = e.amax(dim=1, keepdim=True)  # (B, 1)
        e.sub_(top).exp_()
        rows = e.sum(1)  # (B,)
        ctx.save_for_backward(left, right, e, rows)
        return rows.log() + top.squeeze(1)

    @staticmethod
    def backward(ctx, grad):
        left, right, e, rows = ctx.saved_tensors
        weight = (grad / rows)[:, None]  # (B, 1)
        grad_left = weight * (e @ right)
        # Eᵀ X as (Xᵀ E)ᵀ reads E row by row: faster on CPU than a GEMM of a transposed (B, B) (training_logs/speed.md).
        grad_right = ((weight * left).T @ e).T
        return grad_left, grad_right, None


class AnInfoNCELoss(nn.Module):
    """AnInfoNCE with a learnable diagonal Λ̂ = softplus(θ) (or exp(θ)).

    s(u, v) = -½ (u - v)ᵀ Λ̂ (u - v) on the representations divided by their norms, as the reference's
    (a learnable output radius gets no gradient through the loss). Each of the 2B views of B pairs
    (a_i, b_i) is an anchor: its positive is s(a_i, b_i), its negatives the other 2B - 2 views (NT-Xent).

    isotropic: one shared λ (InfoNCE with temperature 1/λ). symmetric: textbook negatives s(b_i, a_k) for the
    second view's anchors (by default the reference's reuse of the first view's cross block, s(a_i, b_k)).
    generator: draws θ ~ N(0, 0.1²). fixed_lambda: Λ̂ = fixed_lambda · I, nothing learned (InfoNCE, τ = 1 /
    fixed_lambda). param: a key of settings.LAMBDA_PARAMS; the initial Λ̂ is always softplus of the reference's θ.
    lambda_init: V scales that initial Λ̂₀ to V · Λ̂₀ / ln 2 (mean about V, the same random spread; θ the
    parametrisation's inverse of it), from the same draws; None keeps Λ̂₀ (≈ 0.69, InfoNCE at τ ≈ 1.4, which at a
    large anisotropy loses most of the style latents early: a start at the style scale keeps it sharp).
    hn_beta: β > 0 weights the negatives (hard_negative_cross_entropy over ``logits``); 0 is the reference's loss,
    computed as before (row log-sum-exps of the blocks, _ShiftedExpRowSums).
    """

    def __init__(self, n, isotropic=False, symmetric=False, generator=None, fixed_lambda=None, param="softplus",
                 hn_beta=0.0, lambda_init=None):
        super().__init__()
        self.n, self.symmetric, self.fixed_lambda, self.hn_beta = n, symmetric, fixed_lambda, hn_beta
        self.to_lambda, from_lambda = settings.load(settings.LAMBDA_PARAMS[param].build)
        if fixed_lambda is None:
            theta = torch.randn(1 if isotropic else n, generator=generator) * THETA_INIT_STD
            if param != "softplus" or lambda_init is not None:
                start = F.softplus(theta)  # the reference's initial Λ̂
                if lambda_init is not None:
                    start = start * (lambda_init / math.log(2))
                theta = from_lambda(start)
            self.theta = nn.Parameter(theta)

    def _lam(self):
        """Λ̂'s diagonal: (n,) or (1,) Λ̂(θ), or the fixed λ as a plain number."""
        return self.to_lambda(self.theta) if self.fixed_lambda is None else self.fixed_lambda

    def lambdas(self):
        """Λ̂ as an (n,) tensor (the shared λ repeated for InfoNCE)."""
        if self.fixed_lambda is None:
            return self._lam().expand(self.n)
        return torch.full((self.n,), float(self.fixed_lambda))

    def similarity(self, u, v):
        """s(u_r, v_c) for every pair of rows: (R, n), (C, n) -> (R, C), as one matmul of augmented rows,
        [uΛ̂, -½uᵀΛ̂u, -½] · [v, 1, vᵀΛ̂v] = uᵀΛ̂v - ½uᵀΛ̂u - ½vᵀΛ̂v (no (R, C) temporaries)."""
        lam = self._lam()
        ones_u, ones_v = torch.ones_like(u[:, :1]), torch.ones_like(v[:, :1])
        left = torch.cat([u * lam, -0.5 * (u * u * lam).sum(1, keepdim=True), -0.5 * ones_u], dim=1)  # (R, n+2)
        right = torch.cat([v, ones_v, (v * v * lam).sum(1, keepdim=True)], dim=1)  # (C, n+2)
        return left @ right.T

    def logits(self, a, b):
        """The (2B, 2B) logits of the unit-norm views, rows and columns a_1..a_B, b_1..b_B: row r's positive
        at column r ± B, its own at r. The rows of b_i as the ``symmetric`` option says."""
        views = torch.cat([a, b])  # (2B, n)
        logits = self.similarity(views, views)  # (2B, 2B)  s(x_r, x_c): the textbook's (NT-Xent) rows
        if not self.symmetric:
            # The reference's anchor b_i reuses the first view's row s(a_i, b_k) of the cross block.
            half = len(a)
            logits[half:, :half] = logits[:half, half:]
        return logits

    def forward(self, a, b):
        """The scalar loss of the (B, n) representations a, b of the two views."""
        a = a / a.norm(dim=1, keepdim=True)
        b = b / b.norm(dim=1, keepdim=True)
        if self.hn_beta:
            return hard_negative_cross_entropy(self.logits(a, b), self.hn_beta)
        lam = self._lam()  # (n,), (1,) or a number
        ones = torch.ones_like(a[:, :1])
        qa = (a * a * lam).sum(1, keepdim=True)  # (B, 1)  aᵀΛa
        qb = (b * b * lam).sum(1, keepdim=True)
        # s(u, v) = uᵀΛv - ½uᵀΛu - ½vᵀΛv as one matmul of augmented rows: [uΛ, -½uᵀΛu, -½] · [v, 1, vᵀΛv].
        left_a = torch.cat([a * lam, -0.5 * qa, -0.5 * ones], dim=1)  # (B, n+2)
        left_b = torch.cat([b * lam, -0.5 * qb, -0.5 * ones], dim=1)
        right_a = torch.cat([a, ones, qa], dim=1)
        right_b = torch.cat([b, ones, qb], dim=1)
        positive = -0.5 * ((a - b) ** 2 * lam).sum(1)  # (B,)  s(a_i, b_i)
        # log Σ_k exp s(·, ·) over each anchor's candidates, block by block.
        ab = _ShiftedExpRowSums.apply(left_a, right_b, False)  # s(a_i, b_k), positive included
        aa = _ShiftedExpRowSums.apply(left_a, right_a, True)  # s(a_i, a_k), k ≠ i
        bb = _ShiftedExpRowSums.apply(left_b, right_b, True)  # s(b_i, b_k), k ≠ i
        # The reference reuses row i of the cross block for anchor b_i; the textbook takes s(b_i, a_k), its own block.
        cross_b = _ShiftedExpRowSums.apply(left_b, right_a, False) if self.symmetric else ab
        loss_a = contrastive_cross_entropy(positive, [aa, ab])
        loss_b = contrastive_cross_entropy(positive, [bb, cross_b])
        return 0.5 * (loss_a + loss_b)


def lp_distance_pow(x, y, p):
    """‖x_i - y_j‖_p^p for all pairs: (B, n), (M, n) -> (B, M)."""
    if p >= 1:
        # Direct differences: cdist's default for p = 2 above 25 rows is ‖x‖² + ‖y‖² - 2x·y, which
        # cancels catastrophically for close points in float32 and gives a shift of all points
        # (e.g. the encoder's output bias) a spurious gradient that Adam turns into full steps.
        return torch.cdist(x, y, p=p, compute_mode="donot_use_mm_for_euclid_dist") ** p
    diff = (x[:, None, :] - y[None, :, :]).abs().clamp_min(LP_EPS)
    return (diff ** p).sum(-1)


class LpSimCLRLoss(nn.Module):
    """The Lp form: logits -‖a_i - ·‖_p^p / τ, negatives from a rolled by one:
    loss = mean_i [ pos_i/τ + logsumexp_j(-[neg_i·, pos_i]/τ) ]."""

    def __init__(self, p, tau):
        super().__init__()
        self.p, self.tau = p, tau

    def forward(self, a, b):
        neg_views = torch.roll(a, 1, dims=0)
        diff = (a - b).abs()
        if self.p < 1:
            diff = diff.clamp_min(LP_EPS)
        pos = (diff ** self.p).sum(1)  # (B,)
        neg = lp_distance_pow(a, neg_views, self.p)  # (B, B)
        positive = -pos / self.tau
        return contrastive_cross_entropy(positive, [torch.logsumexp(-neg / self.tau, dim=1), positive])


class DotSimCLRLoss(nn.Module):
    """The dot-product form: logits a_i · a'_j / τ, same layout as the Lp form."""

    def __init__(self, tau):
        super().__init__()
        self.tau = tau

    def forward(self, a, b):
        neg_views = torch.roll(a, 1, dims=0)
        positive = (a * b).sum(1) / self.tau  # (B,)
        neg = a @ neg_views.T / self.tau  # (B, B)
        return contrastive_cross_entropy(positive, [torch.logsumexp(neg, dim=1), positive])


# The builders of settings.LOSSES' entries: build(config, init_gen), the parameters drawn from init_gen.
def aninfonce(config, init_gen, **kwargs):
    return AnInfoNCELoss(config.n, symmetric=config.negatives == "symmetric", generator=init_gen,
                         param=config.lambda_param, hn_beta=config.hn_beta, lambda_init=config.lambda_init, **kwargs)


def infonce(config, init_gen):
    return aninfonce(config, init_gen, isotropic=True)


def infonce_fixed(config, init_gen):
    return aninfonce(config, init_gen, fixed_lambda=1.0 / config.tau)


def lp(config, init_gen):
    return LpSimCLRLoss(config.p, config.tau)


def dot(config, init_gen):
    return DotSimCLRLoss(config.tau)
