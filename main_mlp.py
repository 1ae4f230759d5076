"""Train an encoder to invert a mixing of latents with a contrastive (or supervised) loss: the synthetic
experiments of "Contrastive Learning: Reducing the Gap Between Theory and Practice" (Rusak et al.), with the
command line and log format of the authors' main_mlp.py. Reads as: parse (command_line.py) -> build the latent
space, g, f and the loss -> train -> final evaluation; plumbing/ keeps a run's work through kills and signals.
"""

import sys

if __name__ == "__main__":
    # Before torch is imported (hence the imports below): a signal now ends the run at once, without a traceback.
    from plumbing import signals
    signals.install("exit")
    from plumbing import argparse_utils
    argparse_utils.reopen_closed_streams()  # before any file is opened: it would take a closed stream's place
    import command_line
    command_line.build_parser().parse_args()  # --help and a malformed command line end here, before torch loads

import contextlib
import dataclasses
import functools
import json
import os
import platform
import re
import time

import numpy as np
import torch
import torch.nn.functional as F

import command_line
import disentanglement_utils
import encoders
import invertible_network_utils
import latent_spaces
import losses
import settings
import spaces
from command_line import PROG, parse_args
from plumbing import checkpoint, files, locks, signals
from plumbing.errors import EXIT_WRITE_FAILED, Diverged, InputError, WriteError, exit_status
from plumbing.log import RunLog, continue_files, refuse_files_of_others
from plumbing.survival import Survival, keep_freed_memory, refuse_if_too_big

# Fresh marginal samples behind every logged Lin./Perm. score.
N_EVAL_SAMPLES = 4096
# Below this estimated acceptance rate the rejection sampler would need over 10,000 proposals a row: refused.
MIN_ACCEPTANCE = 1e-4
ACCEPTANCE_PROPOSALS = 20_000


@dataclasses.dataclass
class Experiment:
    """What a run draws before training: the latent space, the mixing g and the loss."""

    latent: latent_spaces.LatentSpace
    g: torch.nn.Module
    loss_fn: torch.nn.Module
    threshold: float  # of the layers' condition numbers
    conds: list  # the layers' condition numbers
    gt_lambda: torch.Tensor = None  # (n,) ground-truth Λ (AnInfoNCE experiment)
    theta_init: torch.Tensor = None  # θ of Λ̂ as drawn, before any step (None: the loss learns no Λ̂)
    acceptance: float = None  # of the rejection sampler
    groups: list = None  # index arrays of the latents of equal ground-truth λ (the block score's blocks)


def build_experiment(args, device, init_gen, data_gen):
    """Build the latent space, g and the loss in the order the seed fixes: θ of Λ̂ and g from ``init_gen``
    (CPU), the sampler's acceptance estimate from ``data_gen``. Raises InputError when the rejection
    sampler would accept too few proposals to finish a batch."""
    derived = args.derived
    loss = settings.LOSSES[derived.loss]
    space = latent_spaces.build_space(args)
    loss_fn = settings.load(loss.build)(args, init_gen)
    theta_init = loss_fn.theta.detach().clone() if loss.learns_lambda else None
    loss_fn = loss_fn.to(device)
    gt_lambda, positive_std, acceptance = None, None, None
    conditional = settings.CONDITIONALS[derived.conditional]
    if derived.anisotropic:
        gt_lambda = latent_spaces.ground_truth_lambda(args.n, args.gt_lambda_1, args.gt_lambda_2,
                                                      args.linearly_spaced_lambda)
        positive_std = gt_lambda.rsqrt().to(device)
    if conditional.acceptance:
        estimate = settings.load(conditional.acceptance)
        acceptance = estimate(args, space, positive_std, data_gen, device, ACCEPTANCE_PROPOSALS)
        if acceptance < MIN_ACCEPTANCE:
            raise InputError(f"arguments --threshold/--gt-lambda-1/--gt-lambda-2: the positive sampler accepts "
                             f"{acceptance:.2e} of its proposals (measured on {ACCEPTANCE_PROPOSALS}), below "
                             f"{MIN_ACCEPTANCE:g}; raise --threshold or the λ values (a larger λ draws "
                             f"positives nearer the sphere)")
    g, threshold, conds = invertible_network_utils.construct_invertible_mlp(
        args.n, args.n_mixing_layer, args.act_fct, args.cond_thresh_ratio, init_gen)
    latent = latent_spaces.build_latent_space(args, space, derived.conditional, positive_std, acceptance)
    groups = disentanglement_utils.lambda_groups(gt_lambda.numpy()) if gt_lambda is not None else None
    return Experiment(latent, g.to(device), loss_fn, threshold, conds, gt_lambda, theta_init, acceptance, groups)


def peak_memory(args):
    """A generous estimate of a run's largest memory use in bytes, from its sizes and tables alone: the largest
    of g's condition-number search, the acceptance check, a training step and an evaluation, plus the loss ring."""
    n, bsz = args.n, args.batch_size
    dims = encoders.layer_widths(n)
    params = sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))
    width = sum(dims)
    mixing = 3 * invertible_network_utils.N_COND_SAMPLES * n * n * 4
    derived = args.derived
    conditional = settings.CONDITIONALS[derived.conditional]
    acceptance = 3 * ACCEPTANCE_PROPOSALS * n * 4 if conditional.acceptance else 0
    blocks = losses.HARD_NEGATIVE_BLOCKS if args.hn_beta else settings.LOSSES[derived.loss].blocks
    proposals = 3 * settings.load(conditional.proposal_elements)(args) * 4 if conditional.proposal_elements else 0
    # the encoder with its gradients and Adam's two moments, the 2B rows of activations kept for the
    # backward pass, the loss's (B, B) blocks, the conditional's proposals
    step = 4 * params * 4 + 2 * (2 * bsz) * width * 4 + blocks * bsz * bsz * 4 + proposals
    evaluation = 2 * max(N_EVAL_SAMPLES, bsz) * width * 4
    ring = min(args.n_log_steps, args.n_steps * max(1, args.more_unsupervised)) * 4
    return max(mixing, acceptance, step, evaluation) + ring


def build_optimizer(args, f, loss_fn=None):
    """Adam: --lr for the encoder, --lr-lambda for the loss's parameters (θ of Λ̂)."""
    groups = [{"params": list(f.parameters()), "lr": args.lr}]
    if loss_fn is not None and list(loss_fn.parameters()):
        groups.append({"params": list(loss_fn.parameters()), "lr": args.lr_lambda})
    # fused: one kernel for all ~1M parameters instead of a dozen per tensor.
    return torch.optim.Adam(groups, fused=True)


@torch.no_grad()
def evaluate(latent, h, num_samples, generator, device, groups=None, metrics=None):
    """{field: value} of the ``metrics`` (default: disentanglement_utils.METRICS) that apply, on ``num_samples``
    fresh marginal samples (``groups``: Experiment.groups), or None when h(z) is not finite."""
    z = latent.sample_marginal(num_samples, generator, device)
    hz = h(z).float()
    if not bool(torch.isfinite(hz).all()):
        return None
    z, hz = z.cpu().numpy(), hz.cpu().numpy()
    scores = {}
    for metric in disentanglement_utils.METRICS if metrics is None else metrics:
        scores.update(metric.score(z, hz, groups) or {})
    return scores


def sample_views(latent, g, batch_size, generator, device, supervised):
    """The inputs of one step, drawn fresh: ``(x, target)``: contrastive, x = g([z; z~]) (2B, n),
    both views in one pass, and None; supervised, x = g(z) (B, n) and z."""
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
    loss = F.mse_loss(h, target) if target is not None else loss_fn(*h.chunk(2))  # the two views' (B, n) halves
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


@dataclasses.dataclass(frozen=True)
class Run:
    """One run: what the flags decided, what was drawn before training, where it writes (``prepare``
    builds it before any output file is opened, ``main`` adds the ``log``; Survival reads it too)."""

    args: command_line.Config
    device: torch.device
    seed: int
    exp: Experiment
    generator: torch.Generator  # the data's (on the device)
    id_scores: dict  # of the mixing alone (h = g)
    resume: dict = None  # the checkpoint's state to continue, or None
    log: RunLog = None


@dataclasses.dataclass
class Phase:
    """The phase being trained: its name and length, its encoder and optimiser, its last losses."""

    name: str  # "supervised" or "unsupervised"
    total: int
    f: torch.nn.Module
    optimizer: torch.optim.Optimizer
    losses: torch.Tensor  # (ring,) the last --n-log-steps losses, on the device
    parts: dict  # what a checkpoint keeps of the phase, by its names in the file (CHECKPOINT_LAYOUT.parts)


# What a checkpoint keeps of the experiment: the parts (True: may be None, as older runs' loss), the phases, and
# the numbers of a logged step with their labels (a divergence repeats the last ones).
CHECKPOINT_LAYOUT = checkpoint.Layout(
    parts={"g": False, "encoder": False, "loss_fn": True, "optimizer": False}, phases=("supervised", "unsupervised"),
    logged={"loss": "Loss", "mean_loss": "<Loss>",
            **{f.name: f.label for f in disentanglement_utils.fields(numbers=True, reference=True)}})


# Each phase's trained encoder in the --save-dir, as the reference names them.
ENCODER_FILES = {"unsupervised": "unsup_f.pth", "supervised": "sup_f.pth"}


def phase_steps(args, phase):
    """How many steps a phase of this run has."""
    return args.n_steps if phase == "supervised" else args.n_steps * args.more_unsupervised


def phase_names(args):
    """The phases of this run, in order."""
    return [p for p, skip in (("supervised", args.only_unsupervised),
                              ("unsupervised", args.only_supervised)) if not skip]


def autocast_for(precision, device):
    """The context the encoder's forward runs in for ``--precision`` (also the benchmark's)."""
    if precision == "bf16":
        return functools.partial(torch.autocast, device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def train_phase(run, survival, name):
    """Train a fresh encoder for one phase (continuing the checkpoint's when it is of this phase)."""
    args, device, exp = run.args, run.device, run.exp
    supervised = name == "supervised"
    total = phase_steps(args, name)
    f = encoders.build_encoder(args.n, args.derived.normalization).to(device)
    optimizer = build_optimizer(args, f, None if supervised else exp.loss_fn)
    phase = Phase(name, total, f, optimizer, torch.zeros(max(1, min(args.n_log_steps, total)), device=device),
                  {"g": exp.g, "encoder": f, "loss_fn": exp.loss_fn, "optimizer": optimizer})  # ring: not > phase
    run.log.line(f"supervised test: {supervised}")
    run.log.line(f"f:  {f!r}")
    start = survival.resume(phase)
    f_step = torch.compile(f) if args.compile else f
    loss_step = torch.compile(exp.loss_fn) if args.compile and exp.loss_fn is not None else exp.loss_fn
    autocast = autocast_for(args.precision, device)
    h = torch.nn.Sequential(exp.g, f)
    clock = (time.perf_counter(), start)
    for step in range(start, total + 1):
        x, target = sample_views(exp.latent, exp.g, args.batch_size, run.generator, device, supervised)
        loss = optimise(f_step, loss_step, phase.optimizer, x, target, autocast)
        phase.losses[(step - 1) % phase.losses.numel()] = loss
        # The reference's rule (which crashes it for n_log == 1; there we log every step).
        is_log = args.n_log_steps == 1 or step % args.n_log_steps == 1 or step == args.n_steps
        if is_log:
            log_step(run, survival, phase, step, h, clock)
        survival.after_step(phase, step, is_log)
    survival.finish(phase, {ENCODER_FILES[name]: f})
    return f


def log_step(run, survival, phase, step, h, clock):
    """The Step line (and r, Λ̂) of ``step``, its metrics record, progress on stderr."""
    survival.check_finite(phase, step)
    ring = phase.losses.numel()
    values = phase.losses.cpu()
    loss = values[(step - 1) % ring].item()
    mean_loss = (values.sum() / ring).item() if step >= ring else values[:step].mean().item()
    scores = evaluate(run.exp.latent, h, N_EVAL_SAMPLES, run.generator, run.device, run.exp.groups)
    if scores is None:
        raise Diverged(f"the {phase.name} run diverged at step {step}: the encoder's output is not finite "
                       f"(last loss {loss:.4f}); try a smaller --lr / --lr-lambda")
    run.log.line(f"Step: {step} \t Loss: {loss:.4f} \t <Loss>: {mean_loss:.4f} \t "
                 f"Lin. Disentanglement: {scores['lin']:.4f} \t Perm. Disentanglement: {scores['perm']:.4f}")
    record = {"type": "step", "phase": phase.name, "step": step, "loss": loss, "mean_loss": mean_loss, **scores}
    if run.args.derived.normalization == "learnable_sphere":
        # The reference prints the radius parameter itself (two lines).
        run.log.line(f"r: {phase.f[-1].r}")
        record["r"] = phase.f[-1].r.item()
    if run.exp.theta_init is not None:  # in both phases (untrained in the supervised one), as the reference
        lam = run.exp.loss_fn.lambdas().detach().cpu().tolist()
        run.log.line(f"learned lambda values: {[round(v, 1) for v in lam]} \t")
        record["lambda"] = lam
    run.log.record(**record)
    survival.last_logged = record
    t0, step0 = clock
    elapsed = time.perf_counter() - t0
    rate = (step - step0 + 1) / elapsed if elapsed > 0 else float("nan")
    eta = (phase.total - step) / rate if rate > 0 else float("nan")
    run.log.info(f"[{phase.name}] step {step}/{phase.total}  {rate:.1f} steps/s  ETA {eta / 60:.1f} min")


def final_evaluation(run, survival, h):
    """``--num-eval-batches`` evaluations after the last phase: their mean and std, as the reference (the
    block scores, where they apply, on as many further batches of at least N_EVAL_SAMPLES samples)."""
    args = run.args
    # The others' batches are drawn after the reference's, which so stay as the reference draws them.
    metrics = disentanglement_utils.METRICS
    protocols = [(args.batch_size, [m for m in metrics if m.reference]),
                 (max(N_EVAL_SAMPLES, args.batch_size), [m for m in metrics if not m.reference])]
    record = {}
    for num_samples, metrics in protocols:
        batches = []
        for _ in range(args.num_eval_batches):
            survival.stop_if_signalled("the last step, in the final evaluation")
            scores = evaluate(run.exp.latent, h, num_samples, run.generator, run.device, run.exp.groups, metrics)
            if scores is None:
                raise Diverged("the encoder's output is not finite in the final evaluation")
            batches.append(scores)
            if not scores:  # none of these metrics applies to this run
                break
        record.update(summarise_batches(batches, spread_fields(metrics)))
    run.log.line(f"linear mean: {record['lin_mean']} std: {record['lin_std']}")
    run.log.line(f"perm mean: {record['perm_mean']} std: {record['perm_std']}")
    run.log.record(type="final", **record)


def spread_fields(metrics):
    """The names of the fields of ``metrics`` whose std the final record keeps."""
    return {field.name for metric in metrics for field in metric.fields if field.spread}


def summarise_batches(batches, spread):
    """The final record's fields of a list of evaluations (see disentanglement_utils.Metric)."""
    record = {}
    for key, first in batches[0].items():
        values = [scores[key] for scores in batches]
        if isinstance(first, list):
            record[key] = np.mean(values, axis=0).tolist()
        else:
            record[f"{key}_mean"] = float(np.mean(values))
            if key in spread:
                record[f"{key}_std"] = float(np.std(values))
    return record


def train(run, survival):
    """Print the header, train every phase, evaluate once."""
    args, resume = run.args, run.resume
    print_header(run)
    if args.save_dir and resume is None:
        if args.overwrite:
            files.remove_previous_run(args.save_dir)
        # Before training, as the reference: an interrupted run leaves the mixing on disk.
        checkpoint.save_atomically(run.exp.g.state_dict(), os.path.join(args.save_dir, "g.pth"))
    phases = phase_names(args)
    if resume is not None:
        phases = phases[phases.index(resume["phase"]):]
    for name in phases:
        f = train_phase(run, survival, name)
    final_evaluation(run, survival, torch.nn.Sequential(run.exp.g, f))  # once, after the last phase, as the reference


def argument_lines(args):
    """The ``Arguments:`` block, as the reference prints it (command_line.printed_args: a flag of
    command_line.UNPRINTED_AT_DEFAULT at its default not named)."""
    return ["Arguments:"] + [f"\t{key}: {value if value is not None else 'None'}"
                             for key, value in command_line.printed_args(args).items()]


# What a killed start can have written after its beginning, before its first checkpoint (at step 1), per file (log,
# metrics): (the start of a step's line, that of step 1, those of the final scores); more is not a leftover.
LEFTOVER_LINES = ((b"Step: ", re.compile(rb"Step: 1 \t"), (b"linear mean: ", b"perm mean: ")),
                  (b'{"type": "step"', re.compile(rb'\{"type": "step", "phase": "\w+", "step": 1, '),
                   (b'{"type": "final"',)))


def file_beginnings(args):
    """What a fresh run of ``args`` writes first, as bytes: (its log's Arguments block, the start of its
    config record); a file that begins so is this command's own (plumbing.log.refuse_files_of_others)."""
    log = "".join(f"{line}\n" for line in argument_lines(args))
    # the config record's first two keys
    metrics = json.dumps(dict(type="config", args=command_line.printed_args(args)))[:-1]
    return log.encode("utf-8"), metrics.encode("utf-8")


def print_header(run):
    """Everything the reference prints before training: the arguments, Λ, g and the identity scores."""
    args, exp, log = run.args, run.exp, run.log
    for line in argument_lines(args):
        log.line(line)
    log.record(type="config", args=command_line.printed_args(args), seed=run.seed, device=str(run.device),
               torch=torch.__version__, numpy=np.__version__, python=platform.python_version())
    if exp.acceptance is not None:
        log.info(f"positive sampler acceptance rate: {exp.acceptance:.3f}")
    if exp.theta_init is not None:
        log.line(f"lambda init:  {exp.theta_init!r}")
    if exp.gt_lambda is not None:
        log.line(f"ground truth Lambda:  {exp.gt_lambda.to(run.device)!r}")
    log.line(f"condition number threshold: {exp.threshold:.6f}")
    for i, c in enumerate(exp.conds):
        log.line(f"layer {i + 1}/{len(exp.conds)},  condition number: {c!r}")
    log.line(f"Id. Lin. Disentanglement: {run.id_scores['lin']:.4f}")
    log.line(f"Id. Perm. Disentanglement: {run.id_scores['perm']:.4f}")


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def prepare(args, device):
    """The Run (without its log), before any output file is opened so that a refusal cuts nothing.
    Raises InputError (or the sampler's SamplerError) for a run that cannot start."""
    if args.save_dir:
        files.remove_temporaries(args.save_dir)  # a killed run's, under the directory's lock
    phases = {name: phase_steps(args, name) for name in phase_names(args)}
    resume = checkpoint.resume_state(args, device, phases, CHECKPOINT_LAYOUT, command_line.DEFAULTS)  # None: fresh
    if resume is not None and args.seed is None:  # the checkpoint's seed
        args = dataclasses.replace(args, seed=resume["seed"])
    refuse_files_of_others(args, file_beginnings(args), LEFTOVER_LINES)
    seed = args.seed
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        RunLog.info(f"no --seed given: drew seed {seed} (pass --seed {seed} to repeat this run)")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.allow_tf32
        torch.backends.cudnn.allow_tf32 = args.allow_tf32
    refuse_if_too_big(peak_memory(args), device)
    # All randomness: the global CPU generator (encoder init), a CPU one for g and θ, one on the device for the data.
    torch.manual_seed(seed)
    init_gen = torch.Generator().manual_seed(seed)
    data_gen = torch.Generator(device=device).manual_seed(seed)
    exp = build_experiment(args, device, init_gen, data_gen)
    checkpoint.refuse_models_of_others(args, {"g.pth": exp.g})
    id_scores = evaluate(exp.latent, exp.g, N_EVAL_SAMPLES, data_gen, device)
    if id_scores is None:
        raise InputError("arguments --sphere-r/--m-param/--c-param/--box-min/--box-max: the latents or "
                         "the mixing's output are not finite at these scales")
    return Run(args, device, seed, exp, data_gen, id_scores, resume)


def main(argv=None):
    signals.install("exit", f"{PROG}: stopped by {{name}} during start-up; nothing of the run to save yet")
    parser, args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():  # here: the command line imports no torch
        parser.error("argument --device: cuda requested but CUDA is not available")
    device = resolve_device(args.device)
    keep_freed_memory()
    try:
        with locks.run_locks(args) as outputs:
            run = prepare(args, device)
            if run.resume is None:
                log = RunLog(PROG, args.log_file, args.metrics_file)
            else:  # the files cut back to the checkpoint, saying the run's arguments now
                log = continue_files(PROG, run.args, run.resume, os.path.join(args.save_dir, files.CHECKPOINT_NAME),
                                     outputs)
            run = dataclasses.replace(run, log=log)
            try:
                survival = Survival(run, signals.install("remember"), CHECKPOINT_LAYOUT)
                return exit_status(lambda: train(run, survival), PROG, args.save_dir, (spaces.SamplerError,))
            finally:
                run.log.close()
    except (InputError, spaces.SamplerError) as exc:
        parser.error(str(exc))
    except WriteError as exc:
        RunLog.info(f"{PROG}: error: {exc}")
        return EXIT_WRITE_FAILED


if __name__ == "__main__":
    sys.exit(main())
