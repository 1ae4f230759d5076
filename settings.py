"""What the flags imply, decided once here and read everywhere else; the table of conditionals by their
flags; the names of the tables that need torch. Plain Python: the tools read a log's ``Arguments:``
block (strings) through the same functions."""

import dataclasses


# --loss's default and the loss of a log that predates --loss: the reference's AnInfoNCE (the losses: losses.LOSSES).
DEFAULT_LOSS = "aninfonce"
# The losses derive picks from --p and the space instead of --loss (keys of losses.LOSSES).
LP_LOSS, DOT_LOSS = "lp", "dot"


@dataclasses.dataclass(frozen=True)
class ConditionalChoice:
    """Which flags pick a conditional p(z~ | z); its sampler is latent_spaces.CONDITIONALS[same name]."""

    words: str  # how --c-p's help names it
    c_p: float = None  # the --c-p that picks it; None: any --c-p that no entry names
    spaces: tuple = None  # the --space-types it is defined on (None: all); elsewhere its --c-p is refused
    # Its positives are drawn with the ground-truth Λ (--gt-lambda-1/-2, --linearly-spaced-lambda): the log
    # prints it, and the latents fall into groups of equal λ (the block score's blocks, the tools' λ groups).
    ground_truth_lambda: bool = False


# The conditionals by name, as --c-p and --space-type pick them. A new one is an entry here, its
# sampler's entry in latent_spaces.CONDITIONALS, and its sampling method in spaces.py.
CONDITIONALS = {
    "laplace": ConditionalChoice("1 Laplace", c_p=1),
    "normal": ConditionalChoice("2 normal", c_p=2),
    "generalized_normal": ConditionalChoice("other p generalised normal"),
    "vmf": ConditionalChoice("0 vMF on sphere", c_p=0, spaces=("sphere",)),
    "anisotropic": ConditionalChoice("the rejected anisotropic normal on extended_sphere", c_p=0,
                                     spaces=("extended_sphere",), ground_truth_lambda=True),
}


def conditional_help():
    """``--c-p``'s help: the conditionals of every space, then those of some spaces only."""
    every = [c.words for c in CONDITIONALS.values() if c.spaces is None]
    some = [c.words for c in CONDITIONALS.values() if c.spaces is not None]
    return "conditional: " + ", ".join(every) + ("; " + ", ".join(some) if some else "")


def conditional_candidates(c_p):
    """The names of the conditionals ``--c-p`` picks among (by the space)."""
    named = [name for name, c in CONDITIONALS.items() if c.c_p is not None and float(c.c_p) == float(c_p)]
    return named or [name for name, c in CONDITIONALS.items() if c.c_p is None]


def conditional_name(space_type, c_p):
    """The conditional ``--space-type`` and ``--c-p`` pick; None when the ``--c-p``'s are not defined on it."""
    return next((name for name in conditional_candidates(c_p)
                 if CONDITIONALS[name].spaces is None or space_type in CONDITIONALS[name].spaces), None)


# How or where a run ran, not what it computed: a resumption may change them (run_support); compare_logs ignores them.
INCIDENTAL_FLAGS = ("save_dir", "resume_training", "resume_if_exists", "overwrite", "log_file", "metrics_file",
                    "device", "compile", "checkpoint_every", "checkpoint_minutes", "num_eval_batches", "seed")

# How θ becomes Λ̂ (--lambda-param; the functions are losses.LAMBDA_PARAMS), the reference's first.
LAMBDA_PARAM_CHOICES = ("softplus", "exp")

# Flags added after runs were checkpointed without them: a checkpoint that lacks one ran with this value.
ADDED_FLAG_DEFAULTS = {"lambda_param": "softplus", "hn_beta": 0.0, "lambda_init": None}

# Flags that a log's Arguments block and its config record name only when they differ from this default, so
# that a run which leaves one alone writes, byte for byte, what it wrote before the flag existed; a log or
# record without one ran with the default.
UNPRINTED_DEFAULTS = {"hn_beta": 0.0, "lambda_init": None}


def printed_args(args):
    """``vars(args)`` as a run prints it (the Arguments block, the config record): UNPRINTED_DEFAULTS left out."""
    return {key: value for key, value in vars(args).items()
            if key not in UNPRINTED_DEFAULTS or value != UNPRINTED_DEFAULTS[key]}

# The files a run keeps in its --save-dir (named here, torch-free, for the tools as well).
CHECKPOINT_NAME = "checkpoint.pth"
LOCK_NAME = ".lock"
MODEL_NAMES = ("g.pth", "sup_f.pth", "unsup_f.pth")


def is_save_dir_file(name):
    """Whether ``name`` is (or is a temporary of) a file a run keeps in its --save-dir."""
    return any(name == own or name.startswith(own + ".tmp") for own in (CHECKPOINT_NAME, LOCK_NAME) + MODEL_NAMES)


# The names of the tables that need torch (latent_spaces.SPACES, invertible_network_utils.ACTIVATIONS),
# for the command line's choices without importing torch; a test holds them equal to the tables.
SPACE_NAMES = ("box", "sphere", "unbounded", "extended_sphere")
ACTIVATION_NAMES = ("relu", "leaky_relu", "elu", "smooth_leaky_relu", "softplus")

# The encoder's output normalisations by name (see encoders.NORMALIZATION_LAYERS).
NORMALIZATIONS = ("fixed_sphere", "learnable_sphere", "learnable_box", "none")


@dataclasses.dataclass(frozen=True)
class Derived:
    """The decisions the flags imply."""

    loss: str  # a key of losses.LOSSES
    loss_from_flag: bool  # --loss picked it (extended_sphere with --p 0); elsewhere --p and the space do
    conditional: str  # a key of CONDITIONALS (None: its --c-p is not defined on the space)
    anisotropic: bool  # CONDITIONALS[conditional].ground_truth_lambda: Λ exists, printed as ground truth Lambda
    normalization: str  # the encoder's output normalisation, one of NORMALIZATIONS


def derive(space_type, p, c_p, loss=DEFAULT_LOSS, box_norm=False, sphere_norm=False):
    """The decisions of a run from its flags (numbers or their printed strings)."""
    p, c_p = float(p), float(c_p)
    from_flag = space_type == "extended_sphere" and p == 0
    kind = LP_LOSS if p > 0 else (loss if from_flag else DOT_LOSS)
    if box_norm or sphere_norm:
        normalization = "learnable_box" if box_norm else "learnable_sphere"
    else:
        normalization = "fixed_sphere" if p == 0 else "none"
    conditional = conditional_name(space_type, c_p)
    anisotropic = conditional is not None and CONDITIONALS[conditional].ground_truth_lambda
    return Derived(kind, from_flag, conditional, anisotropic, normalization)


def derive_from_args(args):
    """``derive`` for a parsed argparse namespace."""
    return derive(args.space_type, args.p, args.c_p, args.loss, args.box_norm, args.sphere_norm)
