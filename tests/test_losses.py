"""The contrastive losses against hand computations with explicit Python loops."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import command_line
import losses
import settings

THETA = [-1.0, 0.0, 0.5, 2.0]  # known θ for n = 4: Λ̂ = softplus(θ) ≈ 0.31, 0.69, 0.97, 2.13


def _unit(b, n, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, n, generator=g, dtype=dtype), dim=1)


def _softplus(t):
    return math.log1p(math.exp(t))


def _s(u, v, lam):
    """s(u, v) = -½ (u - v)ᵀ Λ (u - v), with plain Python floats."""
    return -0.5 * sum(l * (x - y) ** 2 for l, x, y in zip(lam, u, v))


def _log_sum_exp(values):
    return math.log(sum(math.exp(v) for v in values))


def hand_aninfonce(a, b, lam, symmetric):
    """AnInfoNCE over the 2B anchors, candidate sets spelt out one by one."""
    a, b = a.tolist(), b.tolist()
    bsz = len(a)
    total = 0.0
    for i in range(bsz):
        pos = _s(a[i], b[i], lam)
        # Anchor a_i: the other first views, and every second view (b_i is the positive).
        cands = [_s(a[i], a[k], lam) for k in range(bsz) if k != i]
        cands += [_s(a[i], b[k], lam) for k in range(bsz)]
        assert len(cands) == 2 * bsz - 1
        total += _log_sum_exp(cands) - pos
        # Anchor b_i: the other second views, the cross-view negatives, the positive.
        cands = [_s(b[i], b[k], lam) for k in range(bsz) if k != i]
        if symmetric:
            cands += [_s(b[i], a[k], lam) for k in range(bsz) if k != i]
        else:  # the reference reuses the first view's row of the cross block
            cands += [_s(a[i], b[k], lam) for k in range(bsz) if k != i]
        cands.append(pos)
        assert len(cands) == 2 * bsz - 1
        total += _log_sum_exp(cands) - pos
    return total / (2 * bsz)


def _aninfonce(n, theta, symmetric, isotropic=False, dtype=torch.float64):
    loss = losses.AnInfoNCELoss(n, isotropic=isotropic, symmetric=symmetric).to(dtype)
    with torch.no_grad():
        loss.theta.copy_(torch.tensor(theta, dtype=dtype))
    return loss


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bsz", [2, 3, 5])
def test_aninfonce_matches_hand_loop(symmetric, bsz):
    a, b = _unit(bsz, 4, 10 + bsz), _unit(bsz, 4, 20 + bsz)
    loss = _aninfonce(4, THETA, symmetric)
    lam = [_softplus(t) for t in THETA]
    assert loss(a, b).item() == pytest.approx(hand_aninfonce(a, b, lam, symmetric), rel=1e-12, abs=1e-12)
    # softplus(θ) is what lambdas() reports.
    torch.testing.assert_close(loss.lambdas(), torch.tensor(lam, dtype=torch.float64))


@pytest.mark.parametrize("symmetric", [False, True])
def test_aninfonce_float32_matches_hand_loop(symmetric):
    a, b = _unit(3, 4, 1, torch.float32), _unit(3, 4, 2, torch.float32)
    loss = _aninfonce(4, THETA, symmetric, dtype=torch.float32)
    lam = [_softplus(t) for t in THETA]
    assert loss(a, b).item() == pytest.approx(hand_aninfonce(a.double(), b.double(), lam, symmetric), rel=1e-5)


def test_aninfonce_inputs_not_modified():
    a, b = _unit(3, 4, 3), _unit(3, 4, 4)
    a0, b0 = a.clone(), b.clone()
    _aninfonce(4, THETA, False)(a, b)
    assert torch.equal(a, a0) and torch.equal(b, b0)


@pytest.mark.parametrize("symmetric", [False, True])
def test_aninfonce_normalises_its_inputs(symmetric):
    """Each representation is divided by its norm inside the loss, as in the reference."""
    a, b = _unit(5, 4, 7), _unit(5, 4, 8)
    scale_a = torch.tensor([0.5, 1.0, 2.0, 3.0, 0.25], dtype=torch.float64)[:, None]
    scale_b = torch.tensor([4.0, 0.3, 1.0, 1.5, 2.0], dtype=torch.float64)[:, None]
    loss = _aninfonce(4, THETA, symmetric)
    lam = [_softplus(t) for t in THETA]
    expected = hand_aninfonce(a, b, lam, symmetric)
    assert loss(a * scale_a, b * scale_b).item() == pytest.approx(expected, rel=1e-12)
    # A learnable radius r in front of the loss gets no gradient through it.
    r = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    loss(r * a, r * b).backward()
    assert abs(r.grad.item()) < 1e-12


def test_aninfonce_box_outputs_are_normalised():
    """Sigmoid outputs (--box-norm) are not unit vectors: the loss sees them normalised."""
    g = torch.Generator().manual_seed(3)
    a = torch.sigmoid(torch.randn(6, 4, generator=g, dtype=torch.float64))
    b = torch.sigmoid(torch.randn(6, 4, generator=g, dtype=torch.float64))
    lam = [_softplus(t) for t in THETA]
    expected = hand_aninfonce(F.normalize(a, dim=1), F.normalize(b, dim=1), lam, False)
    assert _aninfonce(4, THETA, False)(a, b).item() == pytest.approx(expected, rel=1e-12)
    assert abs(expected - hand_aninfonce(a, b, lam, False)) > 1e-3  # normalising matters here


def plain_aninfonce(a, b, lam, symmetric):
    """AnInfoNCE with torch.logsumexp over the full (2B, 2B - 1) candidate matrix."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)

    def sim(u, v):  # (B, B): s(u_i, v_k)
        d = u[:, None, :] - v[None, :, :]
        return -0.5 * (d * d * lam).sum(-1)

    eye = torch.eye(len(a), dtype=torch.bool)
    s_ab, s_aa, s_bb = sim(a, b), sim(a, a), sim(b, b)
    cross_b = sim(b, a) if symmetric else s_ab
    rows_a = torch.cat([s_aa.masked_fill(eye, float("-inf")), s_ab], 1)
    rows_b = torch.cat([s_bb.masked_fill(eye, float("-inf")), cross_b], 1)
    positive = s_ab.diagonal()
    return 0.5 * ((torch.logsumexp(rows_a, 1) - positive).mean() + (torch.logsumexp(rows_b, 1) - positive).mean())


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("lam_value", [1.0, 50.0, 500.0, 1e4])
def test_aninfonce_stable_for_large_lambda(symmetric, lam_value):
    """No overflow or underflow to ±inf: equal to a plain logsumexp form up to Λ̂ = 10⁴."""
    a, b = _unit(64, 10, 30, torch.float32), _unit(64, 10, 31, torch.float32)
    theta = [lam_value + math.log(-math.expm1(-lam_value))] * 10  # softplus(θ) = lam_value
    loss = _aninfonce(10, theta, symmetric, dtype=torch.float32)
    lam = F.softplus(torch.tensor(theta, dtype=torch.float64))
    expected = plain_aninfonce(a.double(), b.double(), lam, symmetric).item()
    value = loss(a, b)
    assert math.isfinite(value.item())
    assert value.item() == pytest.approx(expected, rel=1e-4)
    a.requires_grad_(True)
    loss(a, b).backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(loss.theta.grad).all()


def test_aninfonce_large_batch_large_theta_is_finite():
    """n = 10, B = 1000, θ = 500: finite, and equal to the logsumexp form."""
    a, b = _unit(1000, 10, 40, torch.float32), _unit(1000, 10, 41, torch.float32)
    loss = _aninfonce(10, [500.0] * 10, symmetric=False, dtype=torch.float32)
    expected = plain_aninfonce(a.double(), b.double(), F.softplus(torch.full((10,), 500.0, dtype=torch.float64)),
                               False).item()
    assert loss(a, b).item() == pytest.approx(expected, rel=1e-5)


def test_negative_modes_differ_on_generic_inputs():
    a, b = _unit(3, 4, 5), _unit(3, 4, 6)
    ref = _aninfonce(4, THETA, symmetric=False)(a, b).item()
    sym = _aninfonce(4, THETA, symmetric=True)(a, b).item()
    assert abs(ref - sym) > 1e-3


def _nt_xent_logits(a, b, tau, reference_layout):
    """Cosine-similarity logits (2B, 2B) / τ with the self-similarity masked by -inf."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    s_aa, s_ab, s_bb = a @ a.T / tau, a @ b.T / tau, b @ b.T / tau
    # Row B+i holds anchor b_i's candidates: textbook s(b_i, a_k) = (s_ab)ᵀ, the
    # reference's quirk reuses s(a_i, b_k) = s_ab untransposed.
    lower = s_ab if reference_layout else s_ab.T
    logits = torch.cat([torch.cat([s_aa, s_ab], 1), torch.cat([lower, s_bb], 1)], 0)
    return logits.masked_fill(torch.eye(2 * len(a), dtype=torch.bool), float("-inf"))


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bsz", [2, 3, 8])
def test_infonce_is_cosine_nt_xent_with_temperature(symmetric, bsz):
    theta = 1.3
    lam = _softplus(theta)
    a, b = _unit(bsz, 5, 30 + bsz), _unit(bsz, 5, 40 + bsz)
    loss = _aninfonce(5, [theta], symmetric, isotropic=True)
    ours = loss(a, b)

    logits = _nt_xent_logits(a, b, 1.0 / lam, reference_layout=not symmetric)
    labels = torch.cat([torch.arange(bsz) + bsz, torch.arange(bsz)])
    # In the reference layout anchor b_i's positive s(a_i, b_i) sits at column i.
    expected = F.cross_entropy(logits, labels)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    # ... and against the hand loop with Λ̂ = λI.
    assert ours.item() == pytest.approx(hand_aninfonce(a, b, [lam] * 5, symmetric), rel=1e-12)
    torch.testing.assert_close(loss.lambdas(), torch.full((5,), lam, dtype=torch.float64))


def test_infonce_reference_layout_differs_from_textbook():
    a, b = _unit(4, 5, 50), _unit(4, 5, 51)
    lam = _softplus(1.3)
    labels = torch.cat([torch.arange(4) + 4, torch.arange(4)])
    textbook = F.cross_entropy(_nt_xent_logits(a, b, 1 / lam, False), labels)
    ours_ref = _aninfonce(5, [1.3], symmetric=False, isotropic=True)(a, b)
    assert abs(ours_ref.item() - textbook.item()) > 1e-4


def test_theta_init_is_normal_with_std_0_1():
    theta = losses.AnInfoNCELoss(20_000, generator=torch.Generator().manual_seed(0)).theta.detach()
    assert abs(theta.mean().item()) < 0.005  # 5 standard errors
    assert theta.std().item() == pytest.approx(losses.THETA_INIT_STD, rel=0.03)
    # Seeded: the same generator seed gives the same θ.
    again = losses.AnInfoNCELoss(20_000, generator=torch.Generator().manual_seed(0)).theta.detach()
    assert torch.equal(theta, again)
    assert losses.AnInfoNCELoss(7, isotropic=True).theta.shape == (1,)


@pytest.mark.parametrize("symmetric", [False, True])
def test_loss_at_init_is_log_2b_minus_1(symmetric):
    bsz, n = 1000, 10
    loss = losses.AnInfoNCELoss(n, symmetric=symmetric, generator=torch.Generator().manual_seed(0))
    # θ ~ N(0, 0.1²): Λ̂ starts near softplus(0) = ln 2 (|θ| < 4σ moves it by < 0.2).
    assert (loss.lambdas() - math.log(2)).abs().max() < 0.2
    g = torch.Generator().manual_seed(1)
    # All views equal: every similarity is 0 and the loss is exactly ln(2B - 1).
    same = F.normalize(torch.randn(1, n, generator=g), dim=1).expand(bsz, n)
    assert loss(same, same).item() == pytest.approx(math.log(2 * bsz - 1), abs=1e-5)
    # Views equal up to a small perturbation: still ln(2B - 1) to within 1e-3.
    a = F.normalize(same + 1e-2 * torch.randn(bsz, n, generator=g), dim=1)
    b = F.normalize(same + 1e-2 * torch.randn(bsz, n, generator=g), dim=1)
    assert loss(a, b).item() == pytest.approx(math.log(2 * bsz - 1), abs=1e-3)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("isotropic", [False, True])
def test_aninfonce_gradients(symmetric, isotropic):
    a = _unit(3, 4, 60).requires_grad_(True)
    b = _unit(3, 4, 61).requires_grad_(True)
    loss = _aninfonce(4, [0.3] if isotropic else THETA, symmetric, isotropic)
    loss(a, b).backward()
    for t in (a.grad, b.grad, loss.theta.grad):
        assert torch.isfinite(t).all()
    assert loss.theta.grad.abs().sum() > 0
    # Analytic gradients (θ, a, b) against finite differences.
    theta = loss.theta.detach().clone().requires_grad_(True)

    def f(th, x, y):
        return functional_call(loss, {"theta": th}, (x, y))

    assert torch.autograd.gradcheck(f, (theta, a.detach().requires_grad_(True),
                                        b.detach().requires_grad_(True)))


def test_aninfonce_gradients_finite_with_identical_views():
    a = _unit(1, 4, 62).expand(4, 4).clone().requires_grad_(True)
    b = a.detach().clone().requires_grad_(True)
    loss = _aninfonce(4, THETA, symmetric=False)
    loss(a, b).backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    assert torch.isfinite(loss.theta.grad).all()


# ---------------------------------------------------------------- Lp and dot forms


def hand_lp(a, b, p, tau, eps=0.0):
    """The Lp form: loss = mean_i [pos_i/τ + logsumexp_j(-[neg_i·, pos_i]/τ)], negatives a rolled by one.

    ``eps`` floors |x| as the module does for p < 1 (0: exact arithmetic).
    """
    a, b = a.tolist(), b.tolist()
    bsz = len(a)
    rolled = [a[(j - 1) % bsz] for j in range(bsz)]  # torch.roll(a, 1, 0)

    def dist(u, v):
        return sum(max(abs(x - y), eps) ** p for x, y in zip(u, v))

    total = 0.0
    for i in range(bsz):
        pos = dist(a[i], b[i])
        logits = [-dist(a[i], rolled[j]) / tau for j in range(bsz)] + [-pos / tau]
        total += pos / tau + _log_sum_exp(logits)
    return total / bsz


def hand_dot(a, b, tau):
    a, b = a.tolist(), b.tolist()
    bsz = len(a)
    rolled = [a[(j - 1) % bsz] for j in range(bsz)]

    def dot(u, v):
        return sum(x * y for x, y in zip(u, v))

    total = 0.0
    for i in range(bsz):
        pos = dot(a[i], b[i]) / tau
        logits = [dot(a[i], rolled[j]) / tau for j in range(bsz)] + [pos]
        total += _log_sum_exp(logits) - pos
    return total / bsz


def _gauss(b, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("p", [0.5, 1.0, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("bsz", [2, 3, 5])
def test_lp_loss_matches_hand_loop(p, bsz):
    tau = 0.7
    a, b = _gauss(bsz, 4, 70 + bsz), _gauss(bsz, 4, 80 + bsz)
    ours = losses.LpSimCLRLoss(p, tau)(a, b).item()
    if p < 1:
        # The rolled batch always contains a_i itself (a'_{i+1} = a_i), so the
        # |x| floor of the module matters there: mirror it, and bound the
        # difference to the exact value.
        assert ours == pytest.approx(hand_lp(a, b, p, tau, eps=losses.LP_EPS), rel=1e-12)
        bound = 2 * 4 * losses.LP_EPS ** p / tau
        assert abs(ours - hand_lp(a, b, p, tau)) <= bound
    else:
        assert ours == pytest.approx(hand_lp(a, b, p, tau), rel=1e-10)


@pytest.mark.parametrize("bsz", [2, 3, 5])
def test_dot_loss_matches_hand_loop(bsz):
    tau = 0.3
    a, b = _gauss(bsz, 4, 90 + bsz), _gauss(bsz, 4, 95 + bsz)
    assert losses.DotSimCLRLoss(tau)(a, b).item() == pytest.approx(hand_dot(a, b, tau), rel=1e-12)


@pytest.mark.parametrize("p", [0.5, 1.0, 1.5, 2.0])
def test_lp_loss_gradients_finite_with_coinciding_rows(p):
    a = _gauss(4, 3, 100)
    a[1] = a[0]  # two rows coincide
    b = a.clone()
    b[2] += 0.1  # positives coincide with their anchors except row 2
    a.requires_grad_(True)
    b.requires_grad_(True)
    value = losses.LpSimCLRLoss(p, 0.5)(a, b)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


def test_lp_loss_float32_gradients_finite_p_half():
    a = torch.randn(6, 4)
    a[3] = a[2]
    a.requires_grad_(True)
    b = a.detach().clone().requires_grad_(True)
    losses.LpSimCLRLoss(0.5, 1.0)(a, b).backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("tau", [1.0, 0.2])
def test_fixed_temperature_infonce_is_aninfonce_with_lambda_one_over_tau(symmetric, tau):
    """infonce-fixed equals AnInfoNCE with Λ̂ = I / τ, value and gradient; it has no parameters."""
    a, b = _unit(9, 5, 3), _unit(9, 5, 4)
    fixed = losses.AnInfoNCELoss(5, symmetric=symmetric, fixed_lambda=1 / tau)
    assert list(fixed.parameters()) == [] and fixed.state_dict() == {}
    # θ with softplus(θ) = 1/τ exactly: θ = log(exp(1/τ) - 1).
    theta = math.log(math.expm1(1 / tau))
    learnable = _aninfonce(5, [theta] * 5, symmetric)
    a1, a2 = a.clone().requires_grad_(), a.clone().requires_grad_()
    v_fixed, v_learn = fixed(a1, b), learnable(a2, b)
    assert v_fixed.item() == pytest.approx(v_learn.item(), rel=1e-12)
    assert v_fixed.item() == pytest.approx(hand_aninfonce(a, b, [1 / tau] * 5, symmetric), rel=1e-12)
    v_fixed.backward()
    v_learn.backward()
    assert torch.allclose(a1.grad, a2.grad, rtol=1e-10, atol=1e-12)
    assert torch.equal(fixed.lambdas(), torch.full((5,), 1 / tau))


def test_fixed_temperature_infonce_float32():
    a, b = _unit(16, 4, 5, torch.float32), _unit(16, 4, 6, torch.float32)
    value = losses.AnInfoNCELoss(4, fixed_lambda=5.0)(a, b).item()
    assert value == pytest.approx(hand_aninfonce(a.double(), b.double(), [5.0] * 4, False), rel=1e-5)


def test_lp_loss_gives_the_output_bias_no_gradient_in_float32():
    """Shifting every representation by one vector changes no distance, so the encoder's output
    bias has no gradient in theory. In float32 the matrix-product form of the distances
    (‖x‖² + ‖y‖² - 2x·y) breaks that by ~1e-3 of the weight gradient when the outputs sit away
    from the origin; direct differences keep it at rounding level."""
    import encoders

    torch.manual_seed(0)
    f = encoders.build_encoder(10, "none")
    with torch.no_grad():
        f[-1].bias.fill_(3.0)  # outputs away from the origin, as after training
    h = f(torch.randn(512, 10))
    losses.LpSimCLRLoss(2, 1.0)(h[:256], h[256:]).backward()
    bias, weight = f[-1].bias.grad.abs().max().item(), f[-1].weight.grad.abs().max().item()
    assert bias < 1e-4 * weight


# Λ̂ in log space (--lambda-param exp)


@pytest.mark.parametrize("isotropic", [False, True])
def test_exp_parametrisation_starts_from_the_same_lambda(isotropic):
    soft = losses.AnInfoNCELoss(5, isotropic=isotropic, generator=torch.Generator().manual_seed(3))
    log_space = losses.AnInfoNCELoss(5, isotropic=isotropic, generator=torch.Generator().manual_seed(3),
                                     param="exp")
    assert torch.allclose(log_space.lambdas(), soft.lambdas(), rtol=1e-6, atol=0)
    assert torch.allclose(log_space.theta, soft.lambdas()[:log_space.theta.numel()].log())


@pytest.mark.parametrize("symmetric", [False, True])
def test_exp_parametrisation_has_the_same_value_and_a_rescaled_gradient(symmetric):
    """Same Λ̂, same loss; dL/dθ = dL/dΛ̂ · Λ̂ in log space, dL/dΛ̂ · sigmoid(θ_softplus) in softplus."""
    a, b = _unit(6, 4, 70), _unit(6, 4, 71)
    soft = _aninfonce(4, THETA, symmetric)
    log_space = losses.AnInfoNCELoss(4, symmetric=symmetric, param="exp").double()
    with torch.no_grad():
        log_space.theta.copy_(soft.lambdas().log())
    value_soft, value_exp = soft(a, b), log_space(a, b)
    assert abs(value_soft.item() - value_exp.item()) < 1e-12
    value_soft.backward()
    value_exp.backward()
    lam = soft.lambdas().detach()
    grad_lambda = soft.theta.grad / torch.sigmoid(soft.theta.detach())
    assert torch.allclose(log_space.theta.grad, grad_lambda * lam, atol=1e-12)
    theta = log_space.theta.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda th: functional_call(log_space, {"theta": th}, (a, b)), (theta,))


# ---------------------------------------------------------------- the initial scale of Λ̂ (--lambda-init)


def _reference_theta(n, seed):
    """The reference's θ ~ N(0, 0.1²), drawn as it draws it."""
    return torch.randn(n, generator=torch.Generator().manual_seed(seed)) * losses.THETA_INIT_STD


def _table_loss(name, param, lambda_init, gen, n=5):
    args = command_line.config(n=n, lambda_param=param, lambda_init=lambda_init)
    return settings.load(settings.LOSSES[name].build)(args, gen)


@pytest.mark.parametrize("name", ["aninfonce", "infonce"])
@pytest.mark.parametrize("param", ["softplus", "exp"])
def test_lambda_init_default_is_the_reference_theta_bit_for_bit(name, param):
    """No --lambda-init: θ equal (==) to the loss built without the option, and to the reference's draw."""
    isotropic = name == "infonce"
    before = losses.AnInfoNCELoss(5, isotropic=isotropic, generator=torch.Generator().manual_seed(3), param=param)
    theta = _table_loss(name, param, None, torch.Generator().manual_seed(3)).theta
    assert torch.equal(theta, before.theta)
    reference = _reference_theta(1 if isotropic else 5, 3)
    assert torch.equal(theta, reference if param == "softplus" else settings.load(settings.LAMBDA_PARAMS[param].build)[1](F.softplus(reference)))


@pytest.mark.parametrize("name", ["aninfonce", "infonce"])
@pytest.mark.parametrize("param", ["softplus", "exp"])
def test_lambda_init_scales_the_reference_lambda(name, param):
    """--lambda-init 10: Λ̂ = 10 · softplus(θ_ref) / ln 2 (θ_ref the reference's draw from the same generator);
    AnInfoNCE's mean within 5 % of 10 (n = 50); the generator is left where the reference leaves it."""
    size = 1 if name == "infonce" else 50
    gen = torch.Generator().manual_seed(3)
    lam = _table_loss(name, param, 10.0, gen, n=50).lambdas()
    expected = 10 * F.softplus(_reference_theta(size, 3).double()) / math.log(2)
    assert lam.dtype == torch.float32 and lam.shape == (50,)
    assert torch.allclose(lam[:size].double(), expected, rtol=1e-6, atol=0)
    if name == "aninfonce":
        assert abs(lam.mean().item() - 10) < 0.5
    reference_gen = torch.Generator().manual_seed(3)
    torch.randn(size, generator=reference_gen)  # the reference's one draw of θ
    assert torch.equal(gen.get_state(), reference_gen.get_state())


# ---------------------------------------------------------------- hard negatives (--hn-beta)

HN_LOSSES = ("aninfonce", "infonce", "infonce-fixed")  # the losses --hn-beta applies to


def _hn_loss(name, symmetric, beta):
    """The loss ``name`` as its table entry builds it, in float64, θ set to known values."""
    args = command_line.config(n=4, negatives="symmetric" if symmetric else "reference", tau=0.4, hn_beta=beta)
    loss = settings.load(settings.LOSSES[name].build)(args, torch.Generator().manual_seed(0)).double()
    if settings.LOSSES[name].learns_lambda:
        with torch.no_grad():
            loss.theta.copy_(torch.tensor(THETA if name == "aninfonce" else [0.3], dtype=torch.float64))
    return loss


def _hn_lambda(name, loss):
    """Λ̂ of ``loss`` as a function of its θ (a differentiable (n,) tensor), or the fixed 1/τ."""
    if not settings.LOSSES[name].learns_lambda:
        return torch.full((4,), 1 / 0.4, dtype=torch.float64)
    return F.softplus(loss.theta).expand(4)


def direct_hard_negative(a, b, lam, symmetric, beta):
    """Robinson et al.'s hard-negative loss spelt out anchor by anchor over the full (2B, 2B) similarity
    matrix, by direct differences: -log(e^pos / (e^pos + M Σ_k w_k e^{s_k})), w_k = e^{β s_k} / Σ_j e^{β s_j}."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    views = torch.cat([a, b])
    d = views[:, None, :] - views[None, :, :]
    sim = -0.5 * (d * d * lam).sum(-1)  # (2B, 2B)  s(x_r, x_c)
    bsz, terms = len(a), []
    for r in range(2 * bsz):
        partner, row = (r + bsz) % (2 * bsz), sim[r]
        if r >= bsz and not symmetric:  # the reference: anchor b_i's first-view columns are s(a_i, b_k)
            row = torch.cat([sim[r - bsz, bsz:], sim[r, bsz:]])
        neg = torch.stack([row[k] for k in range(2 * bsz) if k not in (r, partner)])
        w = torch.exp(beta * neg) / torch.exp(beta * neg).sum()
        pos = torch.exp(row[partner])
        terms.append(-torch.log(pos / (pos + len(neg) * (w * torch.exp(neg)).sum())))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("name", HN_LOSSES)
def test_hn_beta_zero_is_the_loss_bit_for_bit(name, symmetric):
    """β = 0 is the reference's loss: value and gradients equal (==) to the loss built without --hn-beta."""
    a, b = _unit(6, 4, 110), _unit(6, 4, 111)
    ours = _hn_loss(name, symmetric, 0.0)
    # The loss as built before --hn-beta existed: no hn_beta given, the same Λ̂.
    plain = losses.AnInfoNCELoss(4, isotropic=name == "infonce", symmetric=symmetric,
                                 fixed_lambda=None if settings.LOSSES[name].learns_lambda else 1 / 0.4).double()
    plain.load_state_dict(ours.state_dict())
    xa, xb = a.clone().requires_grad_(), a.clone().requires_grad_()
    value, expected = ours(xa, b), plain(xb, b)
    assert torch.equal(value, expected)
    value.backward()
    expected.backward()
    assert torch.equal(xa.grad, xb.grad)
    for p, q in zip(ours.parameters(), plain.parameters()):
        assert torch.equal(p.grad, q.grad)
    # The full-matrix path at β = 0 is the same loss (to rounding), and the direct form the hand loop.
    full = losses.hard_negative_cross_entropy(ours.logits(F.normalize(a, dim=1), F.normalize(b, dim=1)), 0.0)
    assert full.item() == pytest.approx(value.item(), rel=1e-12)
    lam = _hn_lambda(name, ours).detach()
    direct = direct_hard_negative(a, b, lam, symmetric, 0.0).item()
    assert direct == pytest.approx(hand_aninfonce(a, b, lam.tolist(), symmetric), rel=1e-12)


@pytest.mark.parametrize("beta", [0.5, 3.0])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("name", HN_LOSSES)
def test_hard_negative_loss_and_gradients_match_the_direct_form(name, symmetric, beta):
    """β > 0: the value and the gradients (representations, θ of Λ̂) of the full-matrix form equal the
    direct form's to 1e-12 in float64; the representations are not unit-norm (the loss normalises them)."""
    g = torch.Generator().manual_seed(120)
    a = torch.randn(5, 4, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(5, 4, generator=g, dtype=torch.float64).requires_grad_()
    loss = _hn_loss(name, symmetric, beta)
    value = loss(a, b)
    value.backward()
    ours = [a.grad.clone(), b.grad.clone()] + [p.grad.clone() for p in loss.parameters()]
    a.grad, b.grad = None, None
    for p in loss.parameters():
        p.grad = None
    direct = direct_hard_negative(a, b, _hn_lambda(name, loss), symmetric, beta)
    direct.backward()
    theirs = [a.grad, b.grad] + [p.grad for p in loss.parameters()]
    assert len(theirs) == (3 if settings.LOSSES[name].learns_lambda else 2)
    assert abs(value.item() - direct.item()) <= 1e-12
    for mine, expected in zip(ours, theirs):
        torch.testing.assert_close(mine, expected, rtol=0, atol=1e-12)
    assert abs(value.item() - _hn_loss(name, symmetric, 0.0)(a, b).item()) > 1e-3  # β matters here


def test_hard_negatives_move_the_gradient_to_the_nearest_negative():
    """Three pairs on the circle at angles 0, 0.3 and 1 (each positive 0.05 further on): every anchor has
    one negative much nearer than the rest. At β = 0 its share of the gradient on the anchor's negative
    logits is the plain softmax share e^{s_near} / Σ_k e^{s_k}; it grows with β, to most of it."""
    angles = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    a = torch.stack([angles.cos(), angles.sin()], 1)
    b = torch.stack([(angles + 0.05).cos(), (angles + 0.05).sin()], 1)
    logits = losses.AnInfoNCELoss(2, fixed_lambda=1.0).logits(a, b)  # (6, 6)
    shares = []
    for beta in (0.0, 1.0, 4.0, 16.0, 64.0):
        x = logits.detach().clone().requires_grad_()
        losses.hard_negative_cross_entropy(x, beta).backward()
        row_shares = []
        for r in range(6):
            neg = [k for k in range(6) if k not in (r, (r + 3) % 6)]
            near = neg[int(x[r, neg].argmax())]
            row_shares.append(x.grad[r, near].abs().item() / x.grad[r, neg].abs().sum().item())
            if beta == 0:
                assert row_shares[-1] == pytest.approx(
                    math.exp(x[r, near].item()) / x[r, neg].exp().sum().item(), rel=1e-12)
        shares.append(row_shares)
    for before, after in zip(shares, shares[1:]):
        assert all(later > earlier for earlier, later in zip(before, after))
    assert max(shares[0]) < 0.31 and min(shares[-1]) > 0.85


@pytest.mark.parametrize("beta", [1e-300, 2.0, 3.4e38])
def test_hard_negative_loss_finite_in_float32_for_any_beta_and_large_lambda(beta):
    """Λ̂ = 10⁴ (logits down to -2·10⁴) in float32: finite value and gradient for a β that rounds to 0 in
    float32, a moderate one and the largest the command line takes; the first is the plain loss."""
    a = _unit(64, 10, 130, torch.float32).requires_grad_()
    b = _unit(64, 10, 131, torch.float32)
    value = losses.AnInfoNCELoss(10, fixed_lambda=1e4, hn_beta=beta)(a, b)
    value.backward()
    assert math.isfinite(value.item()) and torch.isfinite(a.grad).all()
    in_float64 = losses.AnInfoNCELoss(10, fixed_lambda=1e4, hn_beta=beta)(a.double(), b.double()).item()
    assert value.item() == pytest.approx(in_float64, rel=1e-4)
    if beta < 1e-30:
        assert value.item() == pytest.approx(losses.AnInfoNCELoss(10, fixed_lambda=1e4)(a, b).item(), rel=1e-5)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("name", HN_LOSSES)
def test_the_plain_full_matrix_path_is_the_fast_loss(name, symmetric):
    """The readable path a variant edits (the (2B, 2B) logits, then their cross-entropy; at β = 0 the plain
    loss) and the fast path the loss runs (row sums of exp without the matrix's cross-entropy): value and
    gradients (representations, θ of Λ̂) equal to 1e-12 in float64."""
    g = torch.Generator().manual_seed(140)
    a = torch.randn(7, 4, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(7, 4, generator=g, dtype=torch.float64).requires_grad_()
    loss = _hn_loss(name, symmetric, 0.0)
    grads = []
    for path in ("fast", "plain"):
        for x in (a, b, *loss.parameters()):
            x.grad = None
        if path == "fast":
            value = loss(a, b)
        else:
            value = losses.hard_negative_cross_entropy(loss.logits(F.normalize(a, dim=1), F.normalize(b, dim=1)), 0.0)
        value.backward()
        grads.append([value.detach()] + [x.grad.clone() for x in (a, b, *loss.parameters())])
    for fast, plain in zip(*grads):
        assert torch.allclose(fast, plain, atol=1e-12, rtol=0)
