"""Each combination's loss is finite and goes down when it is optimised.

The CLI smoke runs (test_combinations.py) take 3 steps on fresh batches,
where noise hides any trend; here every (space, marginal, conditional, loss,
output normalisation) combination is built exactly as main_mlp builds it and
optimised for a few Adam steps on one fixed batch, so the loss must fall.
"""

import contextlib

import pytest
import torch

import encoders
import main_mlp
from test_combinations import COMBINATIONS, TINY

STEPS = 25
BATCH = 64
LR = 1e-3  # larger than the default 1e-4, so 25 steps show a clear trend


def _optimise(args, supervised):
    """First and last loss of STEPS Adam steps on one fixed batch."""
    torch.manual_seed(0)
    init_gen = torch.Generator().manual_seed(0)
    data_gen = torch.Generator().manual_seed(0)
    exp = main_mlp.build_experiment(args, torch.device("cpu"), init_gen, data_gen)
    f = encoders.build_encoder(args.n, args.derived.normalization)
    loss_fn = None if supervised else exp.loss_fn
    optimizer = main_mlp.build_optimizer(args, f, loss_fn)
    x, target = main_mlp.sample_views(exp.latent, exp.g, BATCH, data_gen, "cpu", supervised)
    # The step main_mlp.py runs, on this one fixed batch.
    values = [main_mlp.optimise(f, loss_fn, optimizer, x, target, contextlib.nullcontext).item()
              for _ in range(STEPS)]
    return values


CASES = [(name, flags, supervised) for name, flags in COMBINATIONS
         for supervised in (False, True)
         if (supervised and "--only-unsupervised" not in flags)
         or (not supervised and "--only-supervised" not in flags)]


@pytest.mark.parametrize("name,flags,supervised", CASES,
                         ids=[f"{c[0]}-{'sup' if c[2] else 'unsup'}" for c in CASES])
def test_loss_is_finite_and_decreases(name, flags, supervised):
    _, args = main_mlp.parse_args(TINY + flags + ["--lr", str(LR)])
    values = _optimise(args, supervised)
    assert all(torch.isfinite(torch.tensor(values))), values
    assert values[-1] < values[0], values
