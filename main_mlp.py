"""Train an encoder to invert a mixing of latents with a contrastive (or supervised) loss.

The synthetic experiments of "Contrastive Learning: Reducing the Gap Between
Theory and Practice" (Rusak et al.), with the command line and log format of
the authors' main_mlp.py. Reads as: parse and validate arguments -> build the
latent space, g, f and the loss -> train -> final evaluation.
"""

import os
import signal
import sys


def _exit_quietly(signum, frame):
    # os._exit, not sys.exit: a SystemExit raised inside torch's import can be swallowed there, or
    # abort the process from a C++ callback; nothing is written yet, so nothing needs flushing.
    os._exit(128 + signum)


if __name__ == "__main__":
    # A signal while torch is still being imported (the imports below come after this on
    # purpose) ends the run at once, without a traceback.
    for _signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR2):
        signal.signal(_signum, _exit_quietly)

import collections
import contextlib
import dataclasses
import ctypes
import functools
import math
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

import disentanglement_utils
import encoders
import invertible_network_utils
import latent_spaces
import losses
import run_support
import settings
import spaces
from argparse_utils import EXIT_BAD_INPUT, ArgumentParser
from run_support import (CHECKPOINT_NAME, EXIT_DIVERGED, EXIT_SIGNAL, EXIT_WRITE_FAILED, Diverged, InputError,
                         RunLog, SaveDirLock, SignalFlag, Stop, WriteError, available_memory, config_fingerprint,
                         exit_on_signals, load_resume_state, refuse_existing_checkpoint, remove_stale_temporaries,
                         save_atomically, save_checkpoint_file)

PROG = "main_mlp.py"
# Fresh marginal samples behind every logged Lin./Perm. score.
N_EVAL_SAMPLES = 4096
# Below this estimated acceptance rate the rejection sampler would need
# more than 10,000 proposals per row: we refuse to start.
MIN_ACCEPTANCE = 1e-4
ACCEPTANCE_PROPOSALS = 20_000
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
# A vMF with κ = 1e8 spreads its samples 1e-4 rad around the mean.
MAX_VMF_KAPPA = 1e8
# The largest fixed Λ̂ = 1/τ the loss is tested finite for.
MAX_FIXED_LAMBDA = 1e4


# --------------------------------------------------------------------------
# Command line


def number(text):
    """An int when the value is integral (so the log prints ``p: 0``), else a float."""
    value = float(text)
    return int(value) if value.is_integer() else value


def build_parser():
    """The command line: one add_argument per flag, the reference's first in its order (so this is long)."""
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    # The reference's flags, in the reference's order (the log's Arguments block).
    parser.add_argument("--sphere-r", type=float, default=1.0, help="radius of the sphere space")
    parser.add_argument("--box-min", type=float, default=0.0, help="lower bound of the box space")
    parser.add_argument("--box-max", type=float, default=1.0, help="upper bound of the box space")
    parser.add_argument("--sphere-norm", action="store_true",
                        help="encoder output on a sphere of learnable radius")
    parser.add_argument("--box-norm", action="store_true",
                        help="encoder output: sigmoid scaled by learnable per-dimension bounds")
    parser.add_argument("--only-supervised", action="store_true", help="run only the supervised (MSE) training")
    parser.add_argument("--only-unsupervised", action="store_true", help="run only the contrastive training")
    parser.add_argument("--more-unsupervised", type=int, default=3,
                        help="the contrastive run has n_steps * this many steps")
    parser.add_argument("--save-dir", type=str, default="",
                        help="directory for g, the encoders and the resumable checkpoint")
    parser.add_argument("--num-eval-batches", type=int, default=10,
                        help="batches of the final evaluation (mean and std reported)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of every random draw; drawn and reported on stderr when omitted")
    parser.add_argument("--act-fct", type=str, default="leaky_relu",
                        choices=invertible_network_utils.ACTIVATIONS, help="activation inside the mixing g")
    parser.add_argument("--c-param", type=float, default=0.05,
                        help="scale of the conditional (vMF concentration for --c-p 0 on sphere)")
    parser.add_argument("--m-param", type=float, default=1.0, help="scale of the marginal (when --m-p is not 0)")
    parser.add_argument("--tau", type=float, default=1.0, help="temperature of the Lp, dot-product and infonce-fixed losses")
    parser.add_argument("--n-mixing-layer", type=int, default=3,
                        help="linear layers in the mixing g (0: the identity)")
    parser.add_argument("--n", type=int, default=10, help="latent dimension")
    parser.add_argument("--space-type", type=str, default="box",
                        choices=tuple(latent_spaces.SPACES), help="latent space")
    parser.add_argument("--m-p", type=number, default=0,
                        help="marginal: 0 uniform, 1 Laplace, 2 normal, other p generalised normal")
    parser.add_argument("--c-p", type=number, default=2,
                        help="conditional: 1 Laplace, 2 normal, other p generalised normal; 0 vMF on sphere, "
                             "the rejected anisotropic normal on extended_sphere")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate of the encoder")
    parser.add_argument("--p", type=number, default=2,
                        help="loss: p > 0 the Lp form; 0 the dot-product form (AnInfoNCE on extended_sphere)")
    parser.add_argument("--batch-size", type=int, default=6144, help="pairs per step")
    parser.add_argument("--n-log-steps", type=int, default=250, help="log every this many steps")
    parser.add_argument("--n-steps", type=int, default=100001,
                        help="supervised steps (the contrastive run does n_steps * more_unsupervised)")
    parser.add_argument("--resume-training", action="store_true",
                        help="continue from the checkpoint in --save-dir")
    # Integer defaults under type=float, as the reference: printed "5" when omitted, "5.0" when passed.
    parser.add_argument("--gt-lambda-1", type=float, default=5,
                        help="ground-truth λ of the last n - floor(n/2) dimensions (bimodal), or the start of "
                             "the linear spacing")
    parser.add_argument("--gt-lambda-2", type=float, default=25,
                        help="ground-truth λ of the first floor(n/2) dimensions (bimodal), or the end of "
                             "the linear spacing")
    parser.add_argument("--linearly-spaced-lambda", action="store_true",
                        help="ground-truth Λ = linspace(gt_lambda_1, gt_lambda_2, n)")
    parser.add_argument("--lr-lambda", type=float, default=1e-3, help="Adam learning rate of the learned Λ̂")
    parser.add_argument("--threshold", type=float, default=0.1,
                        help="acceptance band | ‖z+δ‖ - 1 | < threshold of the positive sampler")
    # Our flags.
    parser.add_argument("--device", type=str, default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: CUDA when available")
    parser.add_argument("--loss", type=str, default=settings.loss_choices()[0], choices=settings.loss_choices(),
                        help=settings.loss_help())
    parser.add_argument("--negatives", type=str, default="reference", choices=("reference", "symmetric"),
                        help="reference: the authors' negatives for the second view; symmetric: NT-Xent")
    parser.add_argument("--log-file", type=str, default=None,
                        help="also write the log here, flushed at every line")
    parser.add_argument("--metrics-file", type=str, default=None,
                        help="JSON lines: the configuration, then one record per logged step")
    parser.add_argument("--precision", type=str, default="float32", choices=("float32", "bf16"),
                        help="bf16: autocast the encoder to bfloat16 (AMX CPUs, GPUs)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder and the loss")
    parser.add_argument("--allow-tf32", action="store_true", help="allow TF32 matmuls on CUDA")
    parser.add_argument("--checkpoint-every", type=int, default=None,
                        help="also checkpoint every this many steps (one is always written in --save-dir "
                             "at every log step and at the end)")
    parser.add_argument("--resume-if-exists", action="store_true",
                        help="resume when --save-dir holds a checkpoint, start fresh when not (for requeued jobs)")
    parser.add_argument("--checkpoint-minutes", type=float, default=None,
                        help="checkpoint every this many minutes instead of at every log step (and on a "
                             "signal, and at the end)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a fresh run in a --save-dir that holds a checkpoint (which it replaces)")
    parser.add_argument("--cond-thresh-ratio", type=float, default=0.0,
                        help="quantile of 25,000 random condition numbers that g's layers must not exceed")
    return parser


def _positive_finite(value):
    return value is not None and math.isfinite(value) and value > 0


def _check_writable_file(parser, flag, path):
    if not path:
        parser.error(f"argument {flag}: an empty file name; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        parser.error(f"argument {flag}: directory {parent} does not exist")
    if os.path.isdir(path):
        parser.error(f"argument {flag}: {path} is a directory; give a file name")
    if (os.path.exists(path) and not os.access(path, os.W_OK)) or not os.access(parent, os.W_OK):
        parser.error(f"argument {flag}: {path} is not writable")


def _check_writable_dir(parser, flag, path, create):
    if os.path.exists(path) and not os.path.isdir(path):
        parser.error(f"argument {flag}: {path} is a file, not a directory")
    if not os.path.exists(path) and not create:
        parser.error(f"argument {flag}: no directory {path} to resume from")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        parser.error(f"argument {flag}: cannot create {path} ({exc.strerror})")
    if not os.access(path, os.W_OK):
        parser.error(f"argument {flag}: {path} is not writable")


def validate_numbers(err, args):
    """Refuse numbers out of range (``err``: the parser's one-line error, exit 2)."""
    for flag, value, low in (("--n", args.n, 2), ("--batch-size", args.batch_size, 2),
                             ("--n-steps", args.n_steps, 1), ("--n-log-steps", args.n_log_steps, 1),
                             ("--num-eval-batches", args.num_eval_batches, 1),
                             ("--more-unsupervised", args.more_unsupervised, 0),
                             ("--n-mixing-layer", args.n_mixing_layer, 0)):
        if value < low:
            err(f"argument {flag}: must be an integer >= {low}, got {value}")
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        err(f"argument --checkpoint-every: must be an integer >= 1, got {args.checkpoint_every}")
    if args.checkpoint_minutes is not None and not _positive_finite(args.checkpoint_minutes):
        err(f"argument --checkpoint-minutes: must be a positive number, got {args.checkpoint_minutes}")
    for flag, value in (("--lr", args.lr), ("--lr-lambda", args.lr_lambda), ("--tau", args.tau),
                        ("--c-param", args.c_param), ("--m-param", args.m_param),
                        ("--sphere-r", args.sphere_r), ("--gt-lambda-1", args.gt_lambda_1),
                        ("--gt-lambda-2", args.gt_lambda_2)):
        if not _positive_finite(value):
            err(f"argument {flag}: must be a positive finite number, got {value}")
    if not _positive_finite(args.threshold):
        err(f"argument --threshold: must be a positive finite number, got {args.threshold}")
    # Values that become float32 tensors must fit one.
    for flag, value in (("--sphere-r", args.sphere_r), ("--box-min", args.box_min), ("--box-max", args.box_max),
                        ("--c-param", args.c_param), ("--m-param", args.m_param), ("--tau", args.tau),
                        ("--gt-lambda-1", args.gt_lambda_1), ("--gt-lambda-2", args.gt_lambda_2)):
        if math.isfinite(value) and abs(value) > FLOAT32_MAX:
            err(f"argument {flag}: must be at most {FLOAT32_MAX:.3g} in magnitude (float32), got {value}")
    if args.space_type == "sphere" and args.c_p == 0 and args.c_param > MAX_VMF_KAPPA:
        err(f"argument --c-param: the von Mises-Fisher concentration must be at most {MAX_VMF_KAPPA:g} "
            f"(beyond, float32 cannot tell the samples from their mean), got {args.c_param}")
    if not (math.isfinite(args.cond_thresh_ratio) and 0 <= args.cond_thresh_ratio <= 1):
        err(f"argument --cond-thresh-ratio: must be in [0, 1], got {args.cond_thresh_ratio}")
    for flag, value in (("--p", args.p), ("--m-p", args.m_p), ("--c-p", args.c_p)):
        if not (math.isfinite(value) and value >= 0):
            err(f"argument {flag}: must be a finite number >= 0, got {value}")
    if not (math.isfinite(args.box_min) and math.isfinite(args.box_max)) or args.box_min >= args.box_max:
        err(f"arguments --box-min/--box-max: need box_min < box_max, got {args.box_min} >= {args.box_max}")
    if args.seed is not None and not 0 <= args.seed < 2 ** 63:
        err(f"argument --seed: must be in [0, 2^63), got {args.seed}")


def validate_args(parser, args, derived):
    """Refuse what cannot run, with a one-line error naming the flag (exit 2)."""
    err = parser.error
    validate_numbers(err, args)
    if args.only_supervised and args.only_unsupervised:
        err("arguments --only-supervised and --only-unsupervised: choose at most one")
    if args.sphere_norm and args.box_norm:
        err("arguments --sphere-norm and --box-norm: choose at most one")
    if args.space_type == "unbounded" and args.m_p == 0:
        err("argument --m-p: the unbounded space has no uniform marginal; use --m-p 1, 2 or another p > 0")
    if args.c_p == 0 and args.space_type in ("box", "unbounded"):
        err(f"argument --c-p: 0 (von Mises-Fisher) needs --space-type sphere or extended_sphere, "
            f"not {args.space_type}")
    contrastive_choice = derived.loss in settings.loss_choices()
    if not contrastive_choice and args.loss != settings.loss_choices()[0]:
        err(f"argument --loss: {args.loss} applies to --space-type extended_sphere with --p 0 only")
    if not contrastive_choice and args.negatives != "reference":
        err("argument --negatives: applies to --space-type extended_sphere with --p 0 only")
    if derived.loss == "infonce-fixed" and 1 / args.tau > MAX_FIXED_LAMBDA:
        err(f"argument --tau: infonce-fixed needs --tau >= {1 / MAX_FIXED_LAMBDA:g} (Λ̂ = 1/τ at most "
            f"{MAX_FIXED_LAMBDA:g}), got {args.tau}")
    if args.device == "cuda" and not torch.cuda.is_available():
        err("argument --device: cuda requested but CUDA is not available")
    if args.compile and args.precision == "bf16":
        err("arguments --compile and --precision bf16: choose at most one")
    if args.resume_training and not args.save_dir:
        err("argument --resume-training: needs --save-dir with a checkpoint")
    if args.save_dir:
        _check_writable_dir(parser, "--save-dir", args.save_dir, create=not args.resume_training)
    for flag, path in (("--log-file", args.log_file), ("--metrics-file", args.metrics_file)):
        if path is not None:
            _check_writable_file(parser, flag, path)
    if args.save_dir:
        for flag, path in (("--log-file", args.log_file), ("--metrics-file", args.metrics_file)):
            if path and os.path.realpath(os.path.dirname(os.path.abspath(path))) == os.path.realpath(args.save_dir) \
                    and run_support.is_save_dir_file(os.path.basename(path)):
                err(f"argument {flag}: {path} is a file the run keeps in --save-dir {args.save_dir}; "
                    f"give another name")
    if args.log_file is not None and args.metrics_file is not None \
            and os.path.realpath(args.log_file) == os.path.realpath(args.metrics_file):
        err(f"arguments --log-file and --metrics-file: both name {args.log_file}; give two files")
    if args.overwrite and args.resume_training:
        err("arguments --overwrite and --resume-training: choose at most one")


def parse_args(argv=None):
    """Returns (parser, args, derived): ``derived`` holds what the flags imply (settings.Derived)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume_if_exists:
        if not args.save_dir:
            parser.error("argument --resume-if-exists: needs --save-dir")
        args.resume_training = os.path.exists(os.path.join(args.save_dir, CHECKPOINT_NAME))
    derived = settings.derive_from_args(args)
    validate_args(parser, args, derived)
    return parser, args, derived


# --------------------------------------------------------------------------
# --------------------------------------------------------------------------
# Building the experiment


@dataclasses.dataclass
class Experiment:
    """What a run draws before training: the latent space, the mixing g and the loss."""

    latent: latent_spaces.LatentSpace
    g: torch.nn.Module
    loss_fn: torch.nn.Module
    threshold: float  # of the layers' condition numbers
    conds: list  # the layers' condition numbers
    gt_lambda: torch.Tensor = None  # (n,) ground-truth Λ (AnInfoNCE experiment)
    theta_init: torch.Tensor = None  # θ of Λ̂ as drawn, before any step
    acceptance: float = None  # of the rejection sampler


def peak_memory(args, derived):
    """A generous estimate of a run's largest memory use, in bytes, from its sizes alone.

    The largest of: g's condition-number search (N_COND_SAMPLES n×n matrices
    and their Gram matrices), the sampler's acceptance check, and a training
    step (the encoder with its gradients and Adam's two moments, the 2B rows
    of activations kept for the backward pass, the loss's B×B blocks, the
    sampler's proposals), plus the loss ring.
    """
    n, bsz = args.n, args.batch_size
    dims = [n] + [k * n for k in encoders.HIDDEN_FACTORS] + [n]
    params = sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))
    width = sum(dims)
    mixing = 3 * invertible_network_utils.N_COND_SAMPLES * n * n * 4
    acceptance = 3 * ACCEPTANCE_PROPOSALS * n * 4 if derived.anisotropic else 0
    blocks = settings.LOSSES[derived.loss].blocks
    proposals = 3 * min(latent_spaces.MAX_CANDIDATES * bsz * n, spaces.MAX_PROPOSAL_ELEMENTS) * 4 \
        if derived.anisotropic else 0
    step = 4 * params * 4 + 2 * (2 * bsz) * width * 4 + blocks * bsz * bsz * 4 + proposals
    evaluation = 2 * max(N_EVAL_SAMPLES, bsz) * width * 4
    ring = min(args.n_log_steps, args.n_steps * max(1, args.more_unsupervised)) * 4
    return max(mixing, acceptance, step, evaluation) + ring


def build_loss(args, derived, init_gen):
    """The contrastive loss the flags pick (an entry of settings.LOSSES; θ of Λ̂ drawn from init_gen)."""
    return settings.LOSSES[derived.loss].build(args, init_gen)


def build_experiment(args, derived, device, init_gen, data_gen):
    """Build the latent space, g and the loss from the flags, in the order the seed fixes.

    θ and g are drawn from ``init_gen`` (CPU), the sampler's acceptance
    estimate from ``data_gen``. Raises InputError when the rejection sampler
    would accept too few proposals to finish a batch.
    """
    space = latent_spaces.build_space(args)
    loss_fn = build_loss(args, derived, init_gen)
    theta_init = loss_fn.theta.detach().clone() if derived.learns_lambda else None
    loss_fn = loss_fn.to(device)
    gt_lambda, positive_std, acceptance = None, None, None
    if derived.anisotropic:
        gt_lambda = latent_spaces.ground_truth_lambda(args.n, args.gt_lambda_1, args.gt_lambda_2,
                                                      args.linearly_spaced_lambda)
        positive_std = gt_lambda.rsqrt().to(device)
        acceptance = spaces.acceptance_rate(space, positive_std, args.threshold,
                                            data_gen, device, ACCEPTANCE_PROPOSALS)
        if acceptance < MIN_ACCEPTANCE:
            raise InputError(f"arguments --threshold/--gt-lambda-1/--gt-lambda-2: the positive sampler accepts "
                             f"{acceptance:.2e} of its proposals (measured on {ACCEPTANCE_PROPOSALS}), below "
                             f"{MIN_ACCEPTANCE:g}; raise --threshold or the λ values (a larger λ draws "
                             f"positives nearer the sphere)")
    g, threshold, conds = invertible_network_utils.construct_invertible_mlp(
        args.n, args.n_mixing_layer, args.act_fct, args.cond_thresh_ratio, init_gen)
    g = g.to(device)
    latent = latent_spaces.build_latent_space(args, space, derived.anisotropic, positive_std, acceptance)
    return Experiment(latent, g, loss_fn, threshold, conds, gt_lambda, theta_init, acceptance)


def build_optimizer(args, f, loss_fn=None):
    """Adam: --lr for the encoder, --lr-lambda for the loss's parameters (θ of Λ̂)."""
    groups = [{"params": list(f.parameters()), "lr": args.lr}]
    loss_params = list(loss_fn.parameters()) if loss_fn is not None else []
    if loss_params:
        groups.append({"params": loss_params, "lr": args.lr_lambda})
    # fused: one kernel for all ~1M parameters instead of a dozen per tensor.
    return torch.optim.Adam(groups, fused=True)


# Training and evaluation


class Scores(collections.namedtuple("Scores", "lin perm lin_dims perm_dims")):
    """Lin. and Perm., and per dimension of z: its R² and its matched |corr| (their means are Lin. and Perm.)."""


@torch.no_grad()
def evaluate(latent, h, num_samples, generator, device):
    """The scores of h on ``num_samples`` fresh marginal samples.

    Returns:
        Scores, or None when h(z) is not finite.
    """
    z = latent.sample_marginal(num_samples, generator, device)
    hz = h(z).float()
    if not bool(torch.isfinite(hz).all()):
        return None
    z, hz = z.cpu().numpy(), hz.cpu().numpy()
    lin_dims = disentanglement_utils.linear_r2_per_dimension(z, hz)
    perm_dims = disentanglement_utils.matched_correlations(z, hz)
    return Scores(float(np.mean(lin_dims)), float(np.mean(perm_dims)), lin_dims.tolist(), perm_dims.tolist())


def sample_views(latent, g, batch_size, generator, device, supervised):
    """The inputs of one step, drawn fresh: ``(x, target)``.

    Contrastive: x = g([z; z~]) (2B, n), both views in one pass, target None.
    Supervised: x = g(z) (B, n) and target z.
    """
    z = latent.sample_marginal(batch_size, generator, device)  # (B, n)
    with torch.no_grad():
        if supervised:
            return g(z), z
        z_pos = latent.sample_conditional(z, generator)  # (B, n)
        return g(torch.cat([z, z_pos])), None


def optimise(f, loss_fn, optimizer, x, target, autocast):
    """One optimiser step of f (and Λ̂) on ``x``. Returns the loss as a 0-d tensor (no host sync)."""
    with autocast():
        h = f(x)
    h = h.float()
    if target is not None:
        loss = F.mse_loss(h, target)
    else:
        half = h.shape[0] // 2
        loss = loss_fn(h[:half], h[half:])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


# --------------------------------------------------------------------------
# The training loop


class Trainer:
    """The state of one run: what a checkpoint holds, and the loop over phases."""

    def __init__(self, args, derived, device, seed, latent, g, loss_fn, log, generator, flag):
        self.args, self.derived, self.device, self.seed = args, derived, device, seed
        self.latent, self.g, self.loss_fn = latent, g, loss_fn
        self.log, self.generator, self.flag = log, generator, flag
        self.f = None  # the encoder of the phase being trained, and its optimiser
        self.optimizer = None
        self.resume = None
        self.last_logged = None
        self.last_checkpoint = time.monotonic()
        if args.precision == "bf16":
            self.autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16)
        else:
            self.autocast = contextlib.nullcontext

    # -- checkpoints -------------------------------------------------------

    def checkpoint_path(self):
        return os.path.join(self.args.save_dir, CHECKPOINT_NAME)

    def save_checkpoint(self, phase, step, loss_buffer):
        if not self.args.save_dir:
            return
        state = {
            "format": run_support.CHECKPOINT_FORMAT,
            "config": config_fingerprint(self.args, self.device),
            "seed": self.seed,
            "phase": phase,
            "step": step,
            "g": self.g.state_dict(),
            "encoder": self.f.state_dict(),
            "loss_fn": self.loss_fn.state_dict() if self.loss_fn is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "loss_buffer": loss_buffer.cpu(),
            "rng_cpu": torch.get_rng_state(),
            "rng_data": self.generator.get_state(),
            "offsets": self.log.offsets(),
            "file_checks": self.log.checks(),
            "last_logged": self.last_logged,
        }
        save_checkpoint_file(state, self.checkpoint_path())
        self.last_checkpoint = time.monotonic()

    def save_models(self, phase):
        if not self.args.save_dir:
            return
        name = "sup_f.pth" if phase == "supervised" else "unsup_f.pth"
        save_atomically(self.f.state_dict(), os.path.join(self.args.save_dir, name))

    # -- the loop ------------------------------------------------------------

    def run_phase(self, phase):
        """Train a fresh encoder for one phase; returns it."""
        args, device = self.args, self.device
        supervised = phase == "supervised"
        total = phase_steps(args, phase)
        f = encoders.build_encoder(args.n, self.derived.normalization).to(device)
        optimizer = build_optimizer(args, f, None if supervised else self.loss_fn)
        self.f, self.optimizer = f, optimizer
        self.log.line(f"supervised test: {supervised}")
        self.log.line(f"f:  {f!r}")
        # The last n_log losses, as a ring; never longer than the phase (--n-log-steps may be huge).
        n_log = args.n_log_steps
        loss_buffer = torch.zeros(max(1, min(n_log, total)), device=device)
        ring = loss_buffer.numel()
        start = self.resume_phase(phase, loss_buffer) if self.resume is not None else 1

        f_step = torch.compile(f) if args.compile else f
        loss_step = torch.compile(self.loss_fn) if args.compile and self.loss_fn is not None else self.loss_fn
        h = torch.nn.Sequential(self.g, f)
        t0, step0 = time.perf_counter(), start
        for step in range(start, total + 1):
            x, target = sample_views(self.latent, self.g, args.batch_size, self.generator, device, supervised)
            loss = optimise(f_step, loss_step, optimizer, x, target, self.autocast)
            loss_buffer[(step - 1) % ring] = loss
            # The reference's rule: step % n_log == 1 or step == n_steps (which
            # crashes it for n_log == 1; there we log every step).
            is_log = n_log == 1 or step % n_log == 1 or step == args.n_steps
            if is_log:
                self.log_step(phase, step, loss_buffer, h, total, t0, step0)
            if self.flag.signum is not None:
                if not is_log:  # a diverged run keeps its last finite checkpoint
                    self.check_finite(phase, step, loss_buffer, f)
                self.save_checkpoint(phase, step, loss_buffer)
                raise Stop(self.flag.signum, f"step {step} of the {phase} run")
            if self.checkpoint_due(step, total, is_log):
                if not is_log:  # log_step has just checked
                    self.check_finite(phase, step, loss_buffer, f)
                self.save_checkpoint(phase, step, loss_buffer)
        self.save_models(phase)
        return f

    def resume_phase(self, phase, loss_buffer):
        """Restore the checkpoint's state into this phase's encoder, optimiser, Λ̂, ring and generators.

        Returns the first step to run (1 when the checkpoint is of another phase).
        """
        resume = self.resume
        if resume["phase"] != phase:
            return 1
        self.f.load_state_dict(resume["encoder"])
        self.optimizer.load_state_dict(resume["optimizer"])
        if self.loss_fn is not None and resume["loss_fn"] is not None:
            self.loss_fn.load_state_dict(resume["loss_fn"])
        saved = resume["loss_buffer"]  # a shorter ring when the run is being extended
        loss_buffer[:saved.numel()].copy_(saved[:loss_buffer.numel()])
        torch.set_rng_state(resume["rng_cpu"])
        self.generator.set_state(resume["rng_data"])
        self.last_logged = resume["last_logged"]
        self.resume = None
        self.log.to_file = True
        self.log.info(f"resumed the {phase} run after step {resume['step']}")
        return resume["step"] + 1

    def checkpoint_due(self, step, total, is_log):
        """A checkpoint at every log step (or every --checkpoint-minutes instead), at the end of the
        phase, and every --checkpoint-every steps when given."""
        args = self.args
        if args.checkpoint_minutes is None:
            due = is_log
        else:
            due = time.monotonic() - self.last_checkpoint >= 60 * args.checkpoint_minutes
        return due or step == total or (args.checkpoint_every is not None and step % args.checkpoint_every == 0)

    def check_finite(self, phase, step, loss_buffer, f):
        """Stop with the step of divergence when a loss or a parameter is not finite."""
        n_log = loss_buffer.numel()
        window = min(step, n_log)
        steps = torch.arange(step - window + 1, step + 1)
        recent = loss_buffer.cpu()[(steps - 1) % n_log]
        bad = (~torch.isfinite(recent)).nonzero()
        params = list(f.parameters()) + (list(self.loss_fn.parameters()) if self.loss_fn else [])
        params_ok = all(bool(torch.isfinite(p).all()) for p in params)
        if len(bad) == 0 and params_ok:
            return
        first_index = int(bad[0, 0]) if len(bad) else window - 1
        first = int(steps[first_index]) if len(bad) else step
        # The last finite loss: in the window before the first bad one, else the last logged step's.
        before = recent[:first_index]
        if len(before):
            last = f"last finite loss {before[-1].item():.4f} at step {first - 1}"
        elif self.last_logged is not None:
            last = f"last finite loss {self.last_logged['loss']:.4f} at step {self.last_logged['step']}"
        else:
            last = "no finite loss before it"
        logged = ""
        if self.last_logged is not None:
            rec = self.last_logged
            logged = (f"; last logged step {rec['step']}: Loss {rec['loss']:.4f}, <Loss> {rec['mean_loss']:.4f}, "
                      f"Lin. {rec['lin']:.4f}, Perm. {rec['perm']:.4f}")
        raise Diverged(f"the {phase} run diverged at step {first}: non-finite "
                       f"{'loss' if len(bad) else 'parameters'} ({last}{logged}); "
                       f"try a smaller --lr / --lr-lambda")

    def log_step(self, phase, step, loss_buffer, h, total, t0, step0):
        f = self.f
        self.check_finite(phase, step, loss_buffer, f)
        n_log = loss_buffer.numel()
        count = min(step, n_log)
        values = loss_buffer.cpu()
        loss = values[(step - 1) % n_log].item()
        mean_loss = (values.sum() / count).item() if count == n_log else values[:count].mean().item()
        scores = evaluate(self.latent, h, N_EVAL_SAMPLES, self.generator, self.device)
        if scores is None:
            raise Diverged(f"the {phase} run diverged at step {step}: the encoder's output is not finite "
                           f"(last loss {loss:.4f}); try a smaller --lr / --lr-lambda")
        lin, perm = scores.lin, scores.perm
        self.log.line(f"Step: {step} \t Loss: {loss:.4f} \t <Loss>: {mean_loss:.4f} \t "
                      f"Lin. Disentanglement: {lin:.4f} \t Perm. Disentanglement: {perm:.4f}")
        record = {"type": "step", "phase": phase, "step": step, "loss": loss, "mean_loss": mean_loss,
                  "lin": lin, "perm": perm, "lin_dims": scores.lin_dims, "perm_dims": scores.perm_dims}
        if self.derived.normalization == "learnable_sphere":
            # The reference prints the radius parameter itself (two lines).
            self.log.line(f"r: {f[-1].r}")
            record["r"] = f[-1].r.item()
        if self.derived.learns_lambda:  # in both phases (untrained in the supervised one), as the reference
            lam = self.loss_fn.lambdas().detach().cpu().tolist()
            self.log.line(f"learned lambda values: {[round(v, 1) for v in lam]} \t")
            record["lambda"] = lam
        self.log.record(**record)
        self.last_logged = record
        elapsed = time.perf_counter() - t0
        done = step - step0 + 1
        rate = done / elapsed if elapsed > 0 else float("nan")
        eta = (total - step) / rate if rate > 0 else float("nan")
        self.log.info(f"[{phase}] step {step}/{total}  {rate:.1f} steps/s  ETA {eta / 60:.1f} min")

    def final_evaluation(self, h):
        batches = []
        for _ in range(self.args.num_eval_batches):
            if self.flag.signum is not None:  # the checkpoint of the last step is on disk
                raise Stop(self.flag.signum, "the last step, in the final evaluation")
            scores = evaluate(self.latent, h, self.args.batch_size, self.generator, self.device)
            if scores is None:
                raise Diverged("the encoder's output is not finite in the final evaluation")
            batches.append(scores)
        lin = [s.lin for s in batches]
        perm = [s.perm for s in batches]
        self.log.line(f"linear mean: {float(np.mean(lin))} std: {float(np.std(lin))}")
        self.log.line(f"perm mean: {float(np.mean(perm))} std: {float(np.std(perm))}")
        self.log.record(type="final", lin_mean=float(np.mean(lin)), lin_std=float(np.std(lin)),
                        perm_mean=float(np.mean(perm)), perm_std=float(np.std(perm)),
                        lin_dims=np.mean([s.lin_dims for s in batches], axis=0).tolist(),
                        perm_dims=np.mean([s.perm_dims for s in batches], axis=0).tolist())


# --------------------------------------------------------------------------
# Running it


def argument_lines(args):
    """The ``Arguments:`` block, as the reference prints it."""
    return ["Arguments:"] + [f"\t{key}: {value if value is not None else 'None'}" for key, value in vars(args).items()]


def config_record(args, seed, device):
    """The first record of --metrics-file."""
    return dict(type="config", args=vars(args), seed=seed, device=str(device), torch=torch.__version__,
                numpy=np.__version__, python=platform.python_version())


def print_header(args, device, seed, exp, id_scores, log):
    """Everything the reference prints before training: the arguments, Λ, g and the identity scores."""
    for line in argument_lines(args):
        log.line(line)
    log.record(**config_record(args, seed, device))
    if exp.acceptance is not None:
        log.info(f"positive sampler acceptance rate: {exp.acceptance:.3f}")
    if exp.theta_init is not None:
        log.line(f"lambda init:  {exp.theta_init!r}")
    if exp.gt_lambda is not None:
        log.line(f"ground truth Lambda:  {exp.gt_lambda.to(device)!r}")
    log.line(f"condition number threshold: {exp.threshold:.6f}")
    for i, c in enumerate(exp.conds):
        log.line(f"layer {i + 1}/{len(exp.conds)},  condition number: {c!r}")
    log.line(f"Id. Lin. Disentanglement: {id_scores.lin:.4f}")
    log.line(f"Id. Perm. Disentanglement: {id_scores.perm:.4f}")


def run(args, derived, device, seed, exp, id_scores, data_gen, log, flag, resume):
    """Print the header, train every phase, evaluate once. Returns the exit status."""
    try:
        print_header(args, device, seed, exp, id_scores, log)
        if args.save_dir and resume is None:
            # Before training, as the reference: an interrupted run leaves the mixing on disk.
            save_atomically(exp.g.state_dict(), os.path.join(args.save_dir, "g.pth"))
        trainer = Trainer(args, derived, device, seed, exp.latent, exp.g, exp.loss_fn, log, data_gen, flag)
        trainer.resume = resume
        phases = [p for p, skip in (("supervised", args.only_unsupervised),
                                    ("unsupervised", args.only_supervised)) if not skip]
        if resume is not None:
            phases = phases[phases.index(resume["phase"]):]
        for phase in phases:
            f = trainer.run_phase(phase)
        # One evaluation after the last phase, as the reference.
        trainer.final_evaluation(torch.nn.Sequential(exp.g, f))
    except Stop as stop:
        name = signal.Signals(stop.signum).name
        where = f"checkpoint in {args.save_dir}" if args.save_dir else "no checkpoint (no --save-dir)"
        log.info(f"{PROG}: stopped by {name} after {stop.where}; {where}. "
                 + ("Resume with the same command plus --resume-training." if args.save_dir else ""))
        return EXIT_SIGNAL[stop.signum]
    except Diverged as exc:
        log.info(f"{PROG}: error: {exc}")
        return EXIT_DIVERGED
    except WriteError as exc:
        log.info(f"{PROG}: error: {exc}; the last checkpoint written is intact")
        return EXIT_WRITE_FAILED
    except spaces.SamplerError as exc:
        log.info(f"{PROG}: error: {exc}")
        return EXIT_BAD_INPUT
    return 0


def keep_freed_memory():
    """Let glibc keep freed buffers instead of returning them to the OS.

    A CPU step allocates and frees the same ~50 MB of activations every time;
    with glibc's defaults those come back from the OS as fresh pages, one
    page fault per 4 KB (~3,000 per step, about 6 % of the step). No effect
    elsewhere (another libc, macOS, Windows).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's maximum on 64-bit
    libc.mallopt(m_trim_threshold, 1 << 30)


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def phase_steps(args, phase):
    """How many steps a phase of this run has."""
    return args.n_steps if phase == "supervised" else args.n_steps * args.more_unsupervised


def prepare(args, derived, device):
    """Everything before the first output file is opened, so that a refusal cuts nothing.

    Returns (resume state or None, seed, experiment, identity scores, data generator).
    Raises InputError (or the sampler's SamplerError) for a run that cannot start.
    """
    if args.save_dir:
        remove_stale_temporaries(args.save_dir)  # under the directory's lock
        refuse_existing_checkpoint(args)
    resume = load_resume_state(args, device, lambda phase: phase_steps(args, phase)) \
        if args.resume_training else None
    seed = args.seed
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        RunLog.info(f"no --seed given: drew seed {seed} (pass --seed {seed} to repeat this run)")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.allow_tf32
        torch.backends.cudnn.allow_tf32 = args.allow_tf32
    need, have = peak_memory(args, derived), available_memory(device)
    if have is not None and need > have:
        raise InputError(f"arguments --n/--batch-size: this run needs about {need / 2**30:.1f} GiB at its "
                         f"peak, the {device.type} has {have / 2**30:.1f} GiB available; lower --batch-size "
                         f"or --n")
    # All randomness: the global CPU generator (encoder initialisation), one
    # CPU generator for g and θ, one generator on the device for the data.
    torch.manual_seed(seed)
    init_gen = torch.Generator().manual_seed(seed)
    data_gen = torch.Generator(device=device).manual_seed(seed)
    exp = build_experiment(args, derived, device, init_gen, data_gen)
    id_scores = evaluate(exp.latent, exp.g, N_EVAL_SAMPLES, data_gen, device)
    if id_scores is None:
        raise InputError("arguments --sphere-r/--m-param/--c-param/--box-min/--box-max: the latents or "
                         "the mixing's output are not finite at these scales")
    return resume, seed, exp, id_scores, data_gen


def open_outputs(args, resume, locks):
    """The RunLog; on resume the files are cut back to the checkpoint and say the run's arguments now."""
    if resume is None:
        return RunLog(args.log_file, args.metrics_file)
    return run_support.continue_files(args, resume, os.path.join(args.save_dir, CHECKPOINT_NAME), locks)


def main(argv=None):
    exit_on_signals()
    for stream in (sys.stdout, sys.stderr):
        # A terminal that cannot show λ or a path's characters gets escapes, not a traceback.
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    parser, args, derived = parse_args(argv)
    device = resolve_device(args.device)
    keep_freed_memory()
    lock = log = None
    locks = []
    try:
        lock = SaveDirLock(args.save_dir) if args.save_dir else None
        for flag, path in (("--log-file", args.log_file), ("--metrics-file", args.metrics_file)):
            locks.append(run_support.OutputLock(flag, path, create=not args.resume_training))
        resume, seed, exp, id_scores, data_gen = prepare(args, derived, device)
        log = open_outputs(args, resume, locks)
        return run(args, derived, device, seed, exp, id_scores, data_gen, log, SignalFlag(), resume)
    except (InputError, spaces.SamplerError) as exc:
        parser.error(str(exc))
    except WriteError as exc:
        RunLog.info(f"{PROG}: error: {exc}")
        return EXIT_WRITE_FAILED
    finally:
        if log is not None:
            log.close()
        for output_lock in locks:
            output_lock.release()
        if lock is not None:
            lock.release()


if __name__ == "__main__":
    sys.exit(main())
