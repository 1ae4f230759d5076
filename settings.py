"""What the flags imply, decided once, right after parsing; and the table of losses.

Several flags combine into one decision ("is this AnInfoNCE?", "is the
conditional the rejected anisotropic normal?"). Each is made here and read
everywhere else, so the copies cannot drift. Plain Python (no torch at
import): the tools read a log's ``Arguments:`` block (strings) through the
same function.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Loss:
    """One contrastive loss: everything the rest of the project needs to know of it.

    description: what it is, in words (the ``--loss`` help).
    build: ``build(args, init_gen) -> nn.Module``; learnable parameters drawn from ``init_gen``.
    learns_lambda: it has a learnable Λ̂ (a ``theta`` parameter and ``lambdas()``; printed as
        ``lambda init`` and ``learned lambda values``, in both phases, as the reference does).
    blocks: (B, B) float32 blocks its forward and backward hold at their peak (the memory estimate).
    selectable: a ``--loss`` choice (``--space-type extended_sphere --p 0``); the others follow from
        ``--p`` and the space.
    label: how the sweep summaries name it; ``{p}`` is replaced by the run's ``--p``.
    """

    description: str
    build: object
    learns_lambda: bool
    blocks: int
    selectable: bool = True
    label: str = None


def _aninfonce(args, init_gen, isotropic=False):
    import losses  # torch: imported only by the runs that build a loss
    return losses.AnInfoNCELoss(args.n, isotropic=isotropic, symmetric=args.negatives == "symmetric",
                                generator=init_gen, param=args.lambda_param)


def _infonce(args, init_gen):
    return _aninfonce(args, init_gen, isotropic=True)


def _infonce_fixed(args, init_gen):
    import losses
    return losses.AnInfoNCELoss(args.n, symmetric=args.negatives == "symmetric", fixed_lambda=1.0 / args.tau)


def _dot(args, init_gen):
    import losses
    return losses.DotSimCLRLoss(args.tau)


def _lp(args, init_gen):
    import losses
    return losses.LpSimCLRLoss(args.p, args.tau)


# The losses by name. The first entry is the default of --loss. A new loss is one entry here.
LOSSES = {
    "aninfonce": Loss("AnInfoNCE: a learnable diagonal Λ̂", _aninfonce, learns_lambda=True, blocks=4),
    "infonce": Loss("InfoNCE with a learnable temperature: one shared learnable λ", _infonce,
                    learns_lambda=True, blocks=4),
    "infonce-fixed": Loss("the textbook InfoNCE: fixed temperature --tau (Λ̂ = I / τ, nothing learned)",
                          _infonce_fixed, learns_lambda=False, blocks=4),
    "lp": Loss("the Lp form (--p > 0)", _lp, learns_lambda=False, blocks=3, selectable=False,
               label="Lp (p={p})"),
    "dot": Loss("the dot-product form (--p 0 outside extended_sphere)", _dot, learns_lambda=False, blocks=2,
                selectable=False, label="dot product"),
}


def loss_choices():
    """The names ``--loss`` accepts, the default first."""
    return tuple(name for name, loss in LOSSES.items() if loss.selectable)


def loss_help():
    return "; ".join(f"{name}: {LOSSES[name].description}" for name in loss_choices())


def loss_label(name, p="?"):
    """A loss's name in the sweep summaries."""
    label = LOSSES[name].label if name in LOSSES else None
    return name if label is None else label.format(p=p)


# Flags that say where or how a run ran, not what it computed: they may differ between a run and
# its resumption (run_support), and are not differences between two logs (compare_logs.py).
INCIDENTAL_FLAGS = ("save_dir", "resume_training", "resume_if_exists", "overwrite", "log_file", "metrics_file",
                    "device", "compile", "checkpoint_every", "checkpoint_minutes", "num_eval_batches", "seed")


# How θ becomes Λ̂ (--lambda-param; the functions are losses.LAMBDA_PARAMS), the reference's first.
LAMBDA_PARAM_CHOICES = ("softplus", "exp")

# Flags added after runs were checkpointed without them: a checkpoint that lacks one ran with this value.
ADDED_FLAG_DEFAULTS = {"lambda_param": "softplus"}


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
    """The decisions the flags imply.

    loss: a key of LOSSES.
    learns_lambda: the loss has a learnable Λ̂ (LOSSES[loss].learns_lambda).
    anisotropic: the positives come from the rejected anisotropic normal with
        the ground-truth Λ (extended_sphere with --c-p 0): Λ exists and is
        printed as ``ground truth Lambda``.
    normalization: the encoder's output normalisation, one of NORMALIZATIONS.
    """

    loss: str
    learns_lambda: bool
    anisotropic: bool
    normalization: str


def derive(space_type, p, c_p, loss="aninfonce", box_norm=False, sphere_norm=False):
    """The decisions of a run from its flags (numbers or their printed strings).

    ``--loss`` picks the loss on extended_sphere with --p 0 only; elsewhere ``--p`` decides.
    """
    p, c_p = float(p), float(c_p)
    extended = space_type == "extended_sphere"
    if p > 0:
        kind = "lp"
    elif extended:
        kind = loss
    else:
        kind = "dot"
    if box_norm:
        normalization = "learnable_box"
    elif sphere_norm:
        normalization = "learnable_sphere"
    elif p == 0:
        normalization = "fixed_sphere"
    else:
        normalization = "none"
    learns = LOSSES[kind].learns_lambda if kind in LOSSES else False
    return Derived(loss=kind, learns_lambda=learns, anisotropic=extended and c_p == 0,
                   normalization=normalization)


def derive_from_args(args):
    """``derive`` for a parsed argparse namespace."""
    return derive(args.space_type, args.p, args.c_p, args.loss, args.box_norm, args.sphere_norm)
