"""The command line of main_mlp.py: its parser, the checks of what it was given, ``parse_args``, and the
run's configuration, ``Config``: a frozen dataclass of every flag (its fields and types read from the
parser) with what they imply (``derived``).

Every refusal is one line naming the flag, exit status 2, before anything runs. No torch (the tables it
offers as choices are settings'), so that ``--help`` is quick and tools.sweep checks its runs' arguments
in-process with ``read_args``.
"""

import dataclasses
import math
import os
import typing

import settings
from plumbing.argparse_utils import ArgumentParser, same_file
from plumbing.files import CHECKPOINT_NAME, LOCK_NAME, is_save_dir_file

PROG = "main_mlp.py"
DESCRIPTION = "Train an encoder to invert a mixing of latents with a contrastive (or supervised) loss."
FLOAT32_MAX = 3.4028234663852886e38  # float(torch.finfo(torch.float32).max)
# A vMF with κ = 1e8 spreads its samples 1e-4 rad around the mean.
MAX_VMF_KAPPA = 1e8
# The largest fixed Λ̂ = 1/τ the loss is tested finite for; also the largest --lambda-init.
MAX_FIXED_LAMBDA = 1e4
# The smallest normal float32: a smaller --lambda-init scales the initial Λ̂ towards 0, θ towards -inf.
FLOAT32_TINY = 1.1754943508222875e-38
# The largest --p of the Lp form: float32 ends near 2^128, so |x|^p stays finite for every coordinate
# difference |x| < 2 up to p = 128 (and a larger p is an overflow, not a loss, in the first step).
MAX_P = 128


def number(text):
    """An int when the value is integral (so the log prints ``p: 0``), else a float."""
    value = float(text)
    return int(value) if value.is_integer() else value


def build_parser():
    """The command line: the reference's flags first, in its order (a log's ``Arguments:`` block), then ours."""
    parser = ArgumentParser(prog=PROG, description=DESCRIPTION)
    _add_reference_flags(parser)
    _add_our_flags(parser)
    return parser


def _choices(table, intro=None):
    """``choices`` and ``help`` of a flag that names an entry of ``table`` (settings)."""
    help_ = "; ".join(f"{name}: {entry.help}" for name, entry in table.items())
    return dict(choices=tuple(table), help=f"{intro}; {help_}" if intro else help_)


def _add_reference_flags(parser):
    parser.add_argument("--sphere-r", type=float, default=1.0, help="radius of the sphere space")
    parser.add_argument("--box-min", type=float, default=0.0, help="lower bound of the box space")
    parser.add_argument("--box-max", type=float, default=1.0, help="upper bound of the box space")
    parser.add_argument("--sphere-norm", action="store_true", help="encoder output on a sphere of learnable radius")
    parser.add_argument("--box-norm", action="store_true",
                        help="encoder output: sigmoid scaled by learnable per-dimension bounds")
    parser.add_argument("--only-supervised", action="store_true", help="run only the supervised (MSE) training")
    parser.add_argument("--only-unsupervised", action="store_true", help="run only the contrastive training")
    parser.add_argument("--more-unsupervised", type=int, default=3,
                        help="the contrastive run has n_steps * this many steps")
    parser.add_argument("--save-dir", default="", help="directory for g, the encoders and the resumable checkpoint")
    parser.add_argument("--num-eval-batches", type=int, default=10,
                        help="batches of the final evaluation (mean and std reported)")
    parser.add_argument("--seed", type=int, help="seed of every random draw; drawn and reported on stderr when omitted")
    parser.add_argument("--act-fct", default="leaky_relu", **_choices(settings.ACTIVATIONS, "activation inside g"))
    parser.add_argument("--c-param", type=float, default=0.05,
                        help="scale of the conditional (vMF concentration for --c-p 0 on sphere)")
    parser.add_argument("--m-param", type=float, default=1.0, help="scale of the marginal (when --m-p is not 0)")
    parser.add_argument("--tau", type=float, default=1.0,
                        help="temperature of the Lp, dot-product and infonce-fixed losses")
    parser.add_argument("--n-mixing-layer", type=int, default=3, help="linear layers in the mixing g (0: the identity)")
    parser.add_argument("--n", type=int, default=10, help="latent dimension")
    parser.add_argument("--space-type", default="box", **_choices(settings.SPACES, "latent space"))
    parser.add_argument("--m-p", type=number, default=0,
                        help="marginal: 0 uniform, 1 Laplace, 2 normal, other p generalised normal")
    parser.add_argument("--c-p", type=number, default=2, help=settings.conditional_help())
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate of the encoder")
    parser.add_argument("--p", type=number, default=2,
                        help="loss: p > 0 the Lp form; 0 the dot-product form (AnInfoNCE on extended_sphere)")
    parser.add_argument("--batch-size", type=int, default=6144, help="pairs per step")
    parser.add_argument("--n-log-steps", type=int, default=250, help="log every this many steps")
    parser.add_argument("--n-steps", type=int, default=100001,
                        help="supervised steps (the contrastive run does n_steps * more_unsupervised)")
    parser.add_argument("--resume-training", action="store_true", help="continue from the checkpoint in --save-dir")
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


def _add_our_flags(parser):
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: CUDA when available")
    selectable = {name: loss for name, loss in settings.LOSSES.items() if loss.selectable}
    parser.add_argument("--loss", default=settings.DEFAULT_LOSS, **_choices(selectable))
    parser.add_argument("--negatives", default="reference", choices=("reference", "symmetric"),
                        help="reference: the authors' negatives for the second view; symmetric: NT-Xent")
    parser.add_argument("--log-file", help="also write the log here, flushed at every line")
    parser.add_argument("--metrics-file", help="JSON lines: the configuration, then one record per logged step")
    parser.add_argument("--precision", default="float32", choices=("float32", "bf16"),
                        help="bf16: autocast the encoder to bfloat16 (AMX CPUs, GPUs)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder and the loss")
    parser.add_argument("--allow-tf32", action="store_true", help="allow TF32 matmuls on CUDA")
    parser.add_argument("--checkpoint-every", type=int,
                        help="also checkpoint every this many steps (one is always written in --save-dir "
                             "at every log step and at the end)")
    parser.add_argument("--resume-if-exists", action="store_true",
                        help="resume when --save-dir holds a checkpoint, start fresh when not (for requeued jobs)")
    parser.add_argument("--checkpoint-minutes", type=float,
                        help="checkpoint every this many minutes instead of at every log step (and at the "
                             "first step, on a signal, and at the end)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a fresh run over an earlier one: in a --save-dir that holds a checkpoint "
                             "or models (removed), into a --log-file / --metrics-file that holds another run's "
                             "output (replaced; never a file with other names, hard links)")
    parser.add_argument("--lambda-param", default=next(iter(settings.LAMBDA_PARAMS)),
                        **_choices(settings.LAMBDA_PARAMS, "how the learned Λ̂ is parametrised"))
    parser.add_argument("--cond-thresh-ratio", type=float, default=0.0,
                        help="quantile of 25,000 random condition numbers that g's layers must not exceed")
    parser.add_argument("--hn-beta", type=float, default=0.0,
                        help="hard negatives (Robinson et al. 2021): each negative's term weighted by exp(β · its "
                             "logit), normalised over the anchor's negatives; 0: the plain loss")
    parser.add_argument("--lambda-init", type=float, default=None,
                        help="the learned Λ̂'s initial scale: the reference's initial Λ̂ (≈ 0.69) times V / ln 2, "
                             "mean about V, from the same draws; default: the reference's")


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
    if os.path.islink(path) and not os.path.exists(path):
        parser.error(f"argument {flag}: {path} is a symbolic link to {os.path.realpath(path)}, which does not "
                     f"exist; create that directory or give another")
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


def _save_dir_holding(path, save_dir):
    """The --save-dir (this run's, or a directory with a run's lock file) that ``path`` (placed: resolve_places)
    is one of the files of, by its name or where its links lead; None when it is none."""
    for candidate in (path, os.path.realpath(path)):
        directory, name = os.path.split(candidate)
        if not is_save_dir_file(name):
            continue
        if save_dir and same_file(directory, save_dir):  # by device and inode: a bind mount too
            return save_dir
        if os.path.exists(os.path.join(directory, LOCK_NAME)):
            return directory
    return None


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
                        ("--gt-lambda-2", args.gt_lambda_2), ("--threshold", args.threshold)):
        if not _positive_finite(value):
            err(f"argument {flag}: must be a positive finite number, got {value}")
    # Values that become float32 tensors must fit one.
    for flag, value in (("--sphere-r", args.sphere_r), ("--box-min", args.box_min), ("--box-max", args.box_max),
                        ("--c-param", args.c_param), ("--m-param", args.m_param), ("--tau", args.tau),
                        ("--gt-lambda-1", args.gt_lambda_1), ("--gt-lambda-2", args.gt_lambda_2)):
        if math.isfinite(value) and abs(value) > FLOAT32_MAX:
            err(f"argument {flag}: must be at most {FLOAT32_MAX:.3g} in magnitude (float32), got {value}")
    if settings.conditional_name(args.space_type, args.c_p) == "vmf" and args.c_param > MAX_VMF_KAPPA:
        err(f"argument --c-param: the von Mises-Fisher concentration must be at most {MAX_VMF_KAPPA:g} "
            f"(beyond, float32 cannot tell the samples from their mean), got {args.c_param}")
    if not (math.isfinite(args.hn_beta) and 0 <= args.hn_beta <= FLOAT32_MAX):
        err(f"argument --hn-beta: must be a finite number >= 0 (at most {FLOAT32_MAX:.3g}, float32), "
            f"got {args.hn_beta}")
    if args.lambda_init is not None and not FLOAT32_TINY <= args.lambda_init <= MAX_FIXED_LAMBDA:
        err(f"argument --lambda-init: must be a number in [{FLOAT32_TINY:.3g}, {MAX_FIXED_LAMBDA:g}] (float32's "
            f"smallest normal number to the largest Λ̂ the loss is tested finite for), got {args.lambda_init}")
    if not (math.isfinite(args.cond_thresh_ratio) and 0 <= args.cond_thresh_ratio <= 1):
        err(f"argument --cond-thresh-ratio: must be in [0, 1], got {args.cond_thresh_ratio}")
    for flag, value in (("--p", args.p), ("--m-p", args.m_p), ("--c-p", args.c_p)):
        if not (math.isfinite(value) and value >= 0):
            err(f"argument {flag}: must be a finite number >= 0, got {value}")
    if args.p > MAX_P:
        err(f"argument --p: must be at most {MAX_P} (beyond, |x|^p overflows float32 for coordinate differences "
            f"below 2), got {args.p:g}")
    if not (math.isfinite(args.box_min) and math.isfinite(args.box_max)) or args.box_min >= args.box_max:
        err(f"arguments --box-min/--box-max: need box_min < box_max, got {args.box_min} >= {args.box_max}")
    if args.seed is not None and not 0 <= args.seed < 2 ** 63:
        err(f"argument --seed: must be in [0, 2^63), got {args.seed}")


def validate_args(parser, args):
    """Refuse what cannot run, with a one-line error naming the flag (exit 2), from the values alone
    (no file is looked at: tools.sweep checks its runs with it before it makes their directories)."""
    err = parser.error
    validate_numbers(err, args)
    derived = args.derived
    if args.only_supervised and args.only_unsupervised:
        err("arguments --only-supervised and --only-unsupervised: choose at most one")
    if args.sphere_norm and args.box_norm:
        err("arguments --sphere-norm and --box-norm: choose at most one")
    if args.space_type == "unbounded" and args.m_p == 0:
        err("argument --m-p: the unbounded space has no uniform marginal; use --m-p 1, 2 or another p > 0")
    if derived.conditional is None:
        named = [settings.CONDITIONALS[name] for name in settings.conditional_candidates(args.c_p)]
        err(f"argument --c-p: {args.c_p} needs --space-type {' or '.join(s for c in named for s in c.spaces)} "
            f"({', '.join(c.words for c in named)}), not {args.space_type}")
    if not derived.loss_from_flag and args.loss != settings.DEFAULT_LOSS:
        err(f"argument --loss: {args.loss} applies to {settings.LOSSES[args.loss].where} only")
    refuse_unread(err, args, derived.loss)
    if derived.loss == "infonce-fixed" and 1 / args.tau > MAX_FIXED_LAMBDA:
        err(f"argument --tau: infonce-fixed needs --tau >= {1 / MAX_FIXED_LAMBDA:g} (Λ̂ = 1/τ at most "
            f"{MAX_FIXED_LAMBDA:g}), got {args.tau}")
    if args.compile and args.precision == "bf16":
        err("arguments --compile and --precision bf16: choose at most one")
    if args.resume_training and not args.save_dir:
        err("argument --resume-training: needs --save-dir with a checkpoint")
    if args.overwrite and args.resume_training:
        err("arguments --overwrite and --resume-training: choose at most one")


def refuse_unread(err, args, loss):
    """Refuse a flag that a loss reads (settings.Loss.reads) set where the run's ``loss`` does not read it."""
    reads = () if args.only_supervised else settings.LOSSES[loss].reads
    for dest in dict.fromkeys(d for entry in settings.LOSSES.values() for d in entry.reads):
        if dest in reads or getattr(args, dest) == DEFAULTS[dest]:
            continue
        flag = "--" + dest.replace("_", "-")
        if args.only_supervised:
            err(f"argument {flag}: --only-supervised trains no contrastive loss")
        readers = [name for name, entry in settings.LOSSES.items() if dest in entry.reads]
        err(f"argument {flag}: the {loss} loss does not read it (--space-type {args.space_type}, --p {args.p}, "
            f"--loss {args.loss}); it applies to --loss {' / '.join(readers)} on {settings.LOSSES[readers[0]].where}")


def validate_files(parser, args):
    """Refuse a --save-dir or output files that cannot be written (making the --save-dir)."""
    err = parser.error
    if args.save_dir:
        _check_writable_dir(parser, "--save-dir", args.save_dir, create=not args.resume_training)
    for flag, path in (("--log-file", args.log_file), ("--metrics-file", args.metrics_file)):
        if path is None:
            continue
        _check_writable_file(parser, flag, path)
        where = _save_dir_holding(path, args.save_dir)
        if where is not None:
            err(f"argument {flag}: {path} is a file a run keeps in its --save-dir {where}; give another name")
    if args.log_file is not None and args.metrics_file is not None and same_file(args.log_file, args.metrics_file):
        err(f"arguments --log-file and --metrics-file: both name {args.log_file}; give two files")


# The flags that name a run's places: recorded as ``place`` makes them, so that the same spelling from
# another directory is another run.
PLACE_FLAGS = (("--save-dir", "save_dir"), ("--log-file", "log_file"), ("--metrics-file", "metrics_file"))


def place(path):
    """``path`` made absolute, every directory above it resolved; its last name is kept as given (a link
    to a log stays a link, a dangling --save-dir link is still named as such)."""
    path = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def resolve_places(err, args):
    """Refuse a path with a control character (a newline would split the log's header) and make every
    place absolute (``place``)."""
    for flag, key in PLACE_FLAGS:
        value = getattr(args, key)
        bad = [c for c in value or "" if ord(c) < 32 or c == "\x7f"]
        if bad:
            err(f"argument {flag}: {value!r} holds a control character ({bad[0]!r}); give a path without one")
        if value:  # "" stays "" (no --save-dir; an empty file name is refused with the files)
            setattr(args, key, place(value))


def _parse(parser, argv):
    """The Config of ``argv``, its values checked (``validate_args``), its places resolved."""
    args = parser.parse_args(argv)
    resolve_places(parser.error, args)
    if args.resume_if_exists:
        if not args.save_dir:
            parser.error("argument --resume-if-exists: needs --save-dir")
        if args.overwrite:
            parser.error("arguments --overwrite and --resume-if-exists: choose at most one")
        args.resume_training = os.path.exists(os.path.join(args.save_dir, CHECKPOINT_NAME))
    config = Config(**vars(args))
    validate_args(parser, config)
    return config


def parse_args(argv=None):
    """(parser, config), the files checked as well."""
    parser = build_parser()
    config = _parse(parser, argv)
    validate_files(parser, config)
    return parser, config


def _raise(message):
    raise ValueError(message)


def read_args(argv):
    """``{dest: value}`` as the log's ``Arguments:`` block prints what main_mlp.py makes of ``argv``, its
    values checked, no file touched; ValueError: main_mlp.py's refusal (without ``main_mlp.py: error: ``)."""
    parser = build_parser()
    parser.error = _raise  # argparse calls self.error: a refusal becomes an exception, not an exit
    config = _parse(parser, argv)
    return {key: str(value) for key, value in printed_args(config).items()}


def flags():
    """``{flag: (dest, takes a value)}``: every flag of main_mlp.py (``--help`` aside)."""
    return {flag: (action.dest, action.nargs != 0) for action in build_parser()._actions
            if action.dest != "help" for flag in action.option_strings}


class _Derivations:
    """What a Config's flags imply (settings.derive), read as ``config.derived``."""

    @property
    def derived(self):
        return settings.derive(self.space_type, self.p, self.c_p, self.loss, self.box_norm, self.sphere_norm)


def _field_type(action):
    kind = bool if action.nargs == 0 else {number: float, None: str}.get(action.type, action.type)
    return kind if action.default is not None else typing.Optional[kind]


_ACTIONS = [action for action in build_parser()._actions if action.dest != "help"]
# Every flag's default: also the value of a flag that an older checkpoint does not name.
DEFAULTS = {action.dest: action.default for action in _ACTIONS}
# The flags the reference does not have, each with its default: a whole Arguments block of ours (every one
# of the reference's flags in it) written before one of them existed ran with its default.
_OURS = ArgumentParser(add_help=False)
_add_our_flags(_OURS)
OUR_DEFAULTS = {action.dest: action.default for action in _OURS._actions}
REFERENCE_FLAGS = [dest for dest in DEFAULTS if dest not in OUR_DEFAULTS]
# The run's configuration: one field per flag, in the parser's order (its ``vars`` is the Arguments block).
Config = dataclasses.make_dataclass("Config", [(a.dest, _field_type(a)) for a in _ACTIONS], bases=(_Derivations,),
                                    frozen=True)
Config.__module__ = __name__  # where pickle finds it


def config(**values):
    """A Config of the parser's defaults, ``values`` replacing some (tests, rescoring; nothing validated)."""
    return Config(**{**DEFAULTS, **values})


# Flags that a log's Arguments block and its config record name only when they differ from their default, so
# that a run which leaves one alone writes, byte for byte, what it wrote before the flag existed; a log or
# record without one ran with the default.
UNPRINTED_AT_DEFAULT = ("hn_beta", "lambda_init")


def printed_args(config):
    """The flags as a run prints them (the Arguments block, the config record), UNPRINTED_AT_DEFAULT left out
    at their default."""
    return {key: value for key, value in vars(config).items()
            if key not in UNPRINTED_AT_DEFAULT or value != DEFAULTS[key]}
