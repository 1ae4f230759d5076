"""What the flags imply, decided once here and read everywhere else; the conditionals (the flags that pick
each, its builders by name); the names of the tables that need torch. Plain Python: the tools read a log's
``Arguments:`` block (strings) through the same functions."""

import dataclasses
import importlib
import itertools


# --loss's default and the loss of a log that predates --loss: the reference's AnInfoNCE (the losses: losses.LOSSES).
DEFAULT_LOSS = "aninfonce"
# The losses derive picks from --p and the space instead of --loss (keys of losses.LOSSES).
LP_LOSS, DOT_LOSS = "lp", "dot"


@dataclasses.dataclass(frozen=True)
class Conditional:
    """A conditional p(z~ | z): the flags that pick it and, by dotted name (imported when a run builds it, so
    that the command line stays torch-free), the functions that build it."""

    words: str  # how --c-p's help names it
    sampler: str  # build(args, positive_std, acceptance) -> an object with sample(space, z, generator)
    c_p: float = None  # the --c-p that picks it; None: any --c-p that no entry names
    spaces: tuple = None  # the --space-types it is defined on (None: all); elsewhere its --c-p is refused
    # Its positives are drawn with the ground-truth Λ (--gt-lambda-1/-2, --linearly-spaced-lambda): the log
    # prints it, and the latents fall into groups of equal λ (the block score's blocks, the tools' λ groups).
    ground_truth_lambda: bool = False
    # estimate(args, space, positive_std, generator, device, num) -> its sampler's acceptance rate (None: no
    # rejection); the run logs it, refuses a rate too low, and passes it to ``sampler``.
    acceptance: str = None
    proposal_elements: str = None  # f(args): the elements of its largest proposal tensor in a step (memory)


def load(dotted):
    """The function or class ``module.name`` names (a Conditional's builders), its module imported now."""
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def check_conditionals(table):
    """Raise ValueError when two entries of ``table`` both match one --space-type and --c-p."""
    for (a, x), (b, y) in itertools.combinations(table.items(), 2):
        same_c_p = x.c_p == y.c_p if None in (x.c_p, y.c_p) else float(x.c_p) == float(y.c_p)
        shared = (x.spaces or y.spaces or ["every space"] if None in (x.spaces, y.spaces)
                  else sorted(set(x.spaces) & set(y.spaces)))
        if same_c_p and shared:
            c_p = "any other --c-p" if x.c_p is None else f"--c-p {x.c_p:g}"
            raise ValueError(f"conditionals {a!r} and {b!r} both match {c_p} on {', '.join(shared)}: "
                             f"give one of them another --c-p or other spaces")
    return table


# The conditionals by name, each picked by its --c-p on its spaces; no two match one (space, --c-p) (checked
# here, at import). A new one is an entry here and the functions it names.
CONDITIONALS = check_conditionals({
    "laplace": Conditional("1 Laplace", "latent_spaces.Around", c_p=1),
    "normal": Conditional("2 normal", "latent_spaces.Around", c_p=2),
    "generalized_normal": Conditional("other p generalised normal", "latent_spaces.Around"),
    "vmf": Conditional("0 vMF on sphere", "latent_spaces.VonMisesFisher", c_p=0, spaces=("sphere",)),
    "anisotropic": Conditional("the rejected anisotropic normal on extended_sphere", "latent_spaces.AnisotropicNormal",
                               c_p=0, spaces=("extended_sphere",), ground_truth_lambda=True,
                               acceptance="latent_spaces.anisotropic_acceptance",
                               proposal_elements="latent_spaces.anisotropic_proposals"),
})


def conditional_help():
    """``--c-p``'s help: the conditionals of every space, then those of some spaces only."""
    every = [c.words for c in CONDITIONALS.values() if c.spaces is None]
    some = [c.words for c in CONDITIONALS.values() if c.spaces is not None]
    return "conditional: " + ", ".join(every) + ("; " + ", ".join(some) if some else "")


def conditional_candidates(c_p):
    """The names of the conditionals ``--c-p`` picks among (by the space): those naming it, else "any other"."""
    named = [name for name, c in CONDITIONALS.items() if c.c_p is not None and float(c.c_p) == float(c_p)]
    return named or [name for name, c in CONDITIONALS.items() if c.c_p is None]


def conditional_name(space_type, c_p):
    """The one conditional ``--space-type`` and ``--c-p`` pick; None when the ``--c-p``'s are not defined on it."""
    matches = [name for name in conditional_candidates(c_p)
               if CONDITIONALS[name].spaces is None or space_type in CONDITIONALS[name].spaces]
    if len(matches) > 1:  # an entry added after the import-time check
        check_conditionals({name: CONDITIONALS[name] for name in matches})
    return matches[0] if matches else None


# How or where a run ran, not what it computed: a resumption may change them (plumbing.checkpoint); compare_logs ignores them.
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
