"""Host synchronisations of a training step, counted on the CPU.

On a GPU every call that reads a value back (``.item()``, ``bool(t)``,
``nonzero``, a boolean mask, a copy to the CPU) stalls the host until the
device's queue has drained. A step that does not log needs exactly one per
round of the positive sampler's rejection loop: the host must learn which
rows are still open, since their number fixes the next round's draw (a
sampler that skipped it would have to draw a fixed number of candidates and
give different samples). Everything else (the mixing, the encoder, the
loss, Adam, the loss ring) stays on the device.
"""

import contextlib
import functools

import pytest
import torch

import encoders
from tools import host_sync
import invertible_network_utils
import main_mlp
import spaces
from cli_util import restore_signal_handlers
from test_spaces import README_LAMBDA, RandnRecorder

README = ["--n", "10", "--space-type", "extended_sphere", "--c-p", "0", "--p", "0", "--only-unsupervised",
          "--gt-lambda-1", "5", "--gt-lambda-2", "25", "--device", "cpu"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def experiment():
    """(args, experiment, encoder, optimiser) of the README configuration, on the CPU."""
    _, args = main_mlp.parse_args(README + ["--batch-size", "1000"])
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as patch:
        # g's threshold from 1,000 random condition numbers instead of 25,000: the
        # same kind of mixing in a tenth of the time (no sync depends on it).
        patch.setattr(invertible_network_utils, "construct_invertible_mlp",
                      functools.partial(invertible_network_utils.construct_invertible_mlp, n_iter_cond_thresh=1000))
        exp = main_mlp.build_experiment(args, CPU, torch.Generator().manual_seed(0),
                                        torch.Generator().manual_seed(0))
    f = encoders.build_encoder(args.n)
    return args, exp, f, main_mlp.build_optimizer(args, f, exp.loss_fn)


def contrastive_step(args, exp, f, optimizer, gen, loss_ring):
    """A non-logging step of the training loop: fresh views, one optimiser step, the loss into the ring."""
    x, _ = main_mlp.sample_views(exp.latent, exp.g, args.batch_size, gen, CPU, False)  # (2B, n)
    loss = main_mlp.optimise(f, exp.loss_fn, optimizer, x, None, contextlib.nullcontext)
    loss_ring[0] = loss  # as the loop stores it: a device-side copy


def test_a_contrastive_step_syncs_once_per_sampler_round(experiment, monkeypatch):
    args, exp, f, optimizer = experiment
    gen = torch.Generator().manual_seed(1)
    ring = torch.zeros(250)
    contrastive_step(args, exp, f, optimizer, gen, ring)  # Adam's state exists, as in every later step
    recorder = RandnRecorder(monkeypatch)  # the sampler's (m, K, n) proposal draws: one per round
    with host_sync.count_host_syncs() as syncs:
        contrastive_step(args, exp, f, optimizer, gen, ring)
    monkeypatch.undo()
    rounds = len(recorder.batches)
    # At batch 1000 with 1.5 expected draws' worth of proposals a row, about 22 % of the
    # rows are open after round 1 and ~1 % after round 2: three rounds at this seed.
    # Before, each round synced three times (the mask writes) and the first twice: 8.
    assert rounds == 3
    assert syncs.calls == {"aten.nonzero.default": rounds}
    assert syncs.total == 3


def test_a_sampler_that_accepts_every_proposal_syncs_once():
    space = spaces.ExtendedSphereSpace(10)
    z = space.uniform(500, torch.Generator().manual_seed(0), "cpu")
    with host_sync.count_host_syncs() as syncs:
        # A band of 10 around the unit sphere accepts every proposal: one round, and
        # the one sync that tells the host so.
        space.anisotropic_normal(z, README_LAMBDA.rsqrt(), 10.0, torch.Generator().manual_seed(1), 4)
    assert syncs.total == 1


def test_a_supervised_step_does_not_sync(experiment):
    args, exp, f, _ = experiment
    optimizer = main_mlp.build_optimizer(args, f)
    gen = torch.Generator().manual_seed(2)
    with host_sync.count_host_syncs() as syncs:
        x, target = main_mlp.sample_views(exp.latent, exp.g, 256, gen, CPU, True)  # (B, n), (B, n)
        main_mlp.optimise(f, None, optimizer, x, target, contextlib.nullcontext)
    assert syncs.total == 0


def test_the_counter_counts_each_read_back_once():
    x = torch.arange(6.0)
    mask = x > 2
    reads = {"item": lambda: x[0].item(), "bool": lambda: bool(mask.any()), "float": lambda: float(x[1]),
             "tolist": lambda: x.tolist(), "cpu": lambda: x.cpu(), "nonzero": lambda: mask.nonzero(),
             "mask read": lambda: x[mask], "mask write": lambda: x.clone().__setitem__(mask, 0.0)}
    for name, read in reads.items():
        with host_sync.count_host_syncs() as syncs:
            read()
        assert syncs.total == 1, name
    with host_sync.count_host_syncs() as syncs:
        rows = torch.tensor([0, 2])
        y = x[rows] * 2 + x[1:3]  # integer and slice indexing, arithmetic: all on the device
        y[0] = x[4]  # a device-side copy
    assert syncs.total == 0
    assert x.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # the methods are restored and still work


@pytest.mark.parametrize("shape", [(40,), (40, 3)])
def test_settle_round_writes_what_the_masked_write_writes(shape):
    gen = torch.Generator().manual_seed(3)
    out = torch.randn(100, *shape[1:], generator=gen)
    rows = torch.randperm(100, generator=gen)[:shape[0]]  # (m,) distinct open rows
    done = torch.rand(shape[0], generator=gen) < 0.6  # (m,)
    values = torch.randn(*shape, generator=gen)  # (m, ...)
    expected = out.clone()
    expected[rows[done]] = values[done]
    left = spaces.settle_round(out, rows, done, values)
    assert torch.equal(out, expected)
    assert torch.equal(left, rows[~done])


@pytest.mark.slow
def test_the_training_loop_adds_no_sync_to_a_step_that_does_not_log(monkeypatch, capsys):
    # The whole run, main_mlp.main: 20 steps, logged at steps 1 and 10 (--n-steps) only.
    argv = README + ["--batch-size", "256", "--n-steps", "10", "--more-unsupervised", "2", "--n-log-steps", "100",
                     "--num-eval-batches", "1", "--seed", "0"]
    starts, draws = [], []  # the sync count as each step starts; the step of each proposal draw
    real_views, real_randn = main_mlp.sample_views, torch.randn

    def views(*args, **kwargs):
        starts.append(syncs.total)
        return real_views(*args, **kwargs)

    def randn(*size, **kwargs):
        out = real_randn(*size, **kwargs)
        if out.dim() == 3:  # the positive sampler's (m, K, n) proposals: one draw per round
            draws.append(len(starts))
        return out

    monkeypatch.setattr(main_mlp, "sample_views", views)
    with restore_signal_handlers(), host_sync.count_host_syncs() as syncs:
        monkeypatch.setattr(torch, "randn", randn)
        code = main_mlp.main(argv)
        monkeypatch.setattr(torch, "randn", real_randn)
    capsys.readouterr()
    assert code == 0 and len(starts) == 20
    for step in [*range(2, 10), *range(11, 20)]:  # from its start to the next step's
        rounds = draws.count(step)
        assert rounds >= 1 and starts[step] - starts[step - 1] == rounds, step
    assert starts[1] - starts[0] > draws.count(1)  # a logged step reads its loss and scores back
