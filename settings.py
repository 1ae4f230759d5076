"""Every name a flag takes, declared once: the losses, spaces, conditionals, activations, output
normalisations and λ parametrisations, each entry with its help and its builder by dotted name (imported
when a run builds it); and what the flags imply, decided once (``derive``). Plain Python, so that the command
line, ``--help`` and the tools (which read a log's ``Arguments:`` block, strings, through the same
functions) import no torch."""

import dataclasses
import itertools
import pkgutil


@dataclasses.dataclass(frozen=True)
class Choice:
    """One name a flag takes (or the flags pick): its help, and its builder by dotted name, imported only
    when a run builds it (``load``), so that the command line, ``--help`` and the tools stay torch-free."""

    help: str
    build: str


def contrastive_sphere(space_type, p):
    """Where --loss picks the loss: the dot-product form on extended_sphere."""
    return space_type == "extended_sphere" and p == 0


@dataclasses.dataclass(frozen=True)
class Loss(Choice):
    """One contrastive loss. ``build(config, init_gen) -> nn.Module``, its parameters drawn from init_gen."""

    applies: object = contrastive_sphere  # (space_type, p) -> whether it is the run's loss there
    where: str = "--space-type extended_sphere with --p 0"  # the same, in words (its refusals)
    reads: tuple = ()  # the flags of ours it reads (dests); elsewhere a value other than the default is refused
    learns_lambda: bool = False  # a learnable Λ̂ (``theta``, ``lambdas()``): the lambda init / learned lambda lines
    blocks: int = 4  # the (B, B) float32 blocks it holds at its peak (the memory estimate)
    selectable: bool = True  # a --loss choice where it applies; the others are picked by --p and the space alone
    label: str = None  # its name in sweep summaries, ``{p}`` replaced by --p (None: its name)


ANINFONCE_FLAGS = ("negatives", "lambda_param", "lambda_init", "hn_beta")

# The losses by name, the first (--loss's default, and the loss of a log that predates --loss) the reference's.
# Where several apply, --loss picks among them; where one does, it is the run's loss.
LOSSES = {
    "aninfonce": Loss("AnInfoNCE: a learnable diagonal Λ̂", "losses.aninfonce", reads=ANINFONCE_FLAGS,
                      learns_lambda=True),
    "infonce": Loss("InfoNCE with a learnable temperature: one shared learnable λ", "losses.infonce",
                    reads=ANINFONCE_FLAGS, learns_lambda=True),
    "infonce-fixed": Loss("the textbook InfoNCE: fixed temperature --tau (Λ̂ = I / τ, nothing learned)",
                          "losses.infonce_fixed", reads=("negatives", "hn_beta")),
    "lp": Loss("the Lp form (--p > 0)", "losses.lp", applies=lambda space_type, p: p > 0,
               where="--p > 0", blocks=3, selectable=False, label="Lp (p={p})"),
    "dot": Loss("the dot-product form (--p 0 outside extended_sphere)", "losses.dot",
                applies=lambda space_type, p: p == 0 and space_type != "extended_sphere",
                where="--p 0 outside --space-type extended_sphere", blocks=2, selectable=False, label="dot product"),
}
DEFAULT_LOSS = next(iter(LOSSES))


def loss_label(name, p="?"):
    """A loss's name in the sweep summaries (the name itself for a loss of no entry)."""
    label = LOSSES[name].label if name in LOSSES else None
    return name if label is None else label.format(p=p)


# --space-type: the space it builds, build(config).
SPACES = {
    "box": Choice("[--box-min, --box-max]^n", "latent_spaces.box"),
    "sphere": Choice("the sphere of radius --sphere-r", "latent_spaces.sphere"),
    "unbounded": Choice("R^n", "latent_spaces.unbounded"),
    "extended_sphere": Choice("R^n, its positives near the unit sphere", "latent_spaces.extended_sphere"),
}

# --act-fct: the activation between g's layers, build() -> a fresh module.
ACTIVATIONS = {
    "relu": Choice("ReLU", "torch.nn.ReLU"),
    "leaky_relu": Choice("LeakyReLU of slope 0.2", "invertible_network_utils.leaky_relu"),
    "elu": Choice("ELU", "torch.nn.ELU"),
    "smooth_leaky_relu": Choice("0.2 x + 0.8 softplus(x)", "invertible_network_utils.SmoothLeakyReLU"),
    "softplus": Choice("softplus", "torch.nn.Softplus"),
}

# The encoder's output normalisation (``derive`` picks it from --box-norm, --sphere-norm and --p): the
# encoder's last module, build(n) (None: no module).
NORMALIZATIONS = {
    "fixed_sphere": Choice("onto the unit sphere (--p 0)", "encoders.unit_sphere"),
    "learnable_sphere": Choice("onto a sphere of learnable radius (--sphere-norm)", "encoders.learnable_sphere"),
    "learnable_box": Choice("a sigmoid scaled by learnable bounds (--box-norm)", "encoders.SoftclipLayer"),
    "none": Choice("none (--p > 0)", None),
}

# --lambda-param: how θ becomes Λ̂, build -> (θ -> Λ̂, Λ̂ -> θ); the first the reference's.
LAMBDA_PARAMS = {
    "softplus": Choice("softplus(θ), as the reference", "losses.SOFTPLUS"),
    "exp": Choice("exp(θ): log space, the same initial Λ̂", "losses.EXP"),
}


# The object ``module.name`` names (an entry's builder), its module imported now.
load = pkgutil.resolve_name


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



@dataclasses.dataclass(frozen=True)
class Derived:
    """The decisions the flags imply."""

    loss: str  # a key of LOSSES
    loss_from_flag: bool  # --loss picked it (where several apply); elsewhere --p and the space do
    conditional: str  # a key of CONDITIONALS (None: its --c-p is not defined on the space)
    anisotropic: bool  # CONDITIONALS[conditional].ground_truth_lambda: Λ exists, printed as ground truth Lambda
    normalization: str  # the encoder's output normalisation, a key of NORMALIZATIONS


def derive(space_type, p, c_p, loss=DEFAULT_LOSS, box_norm=False, sphere_norm=False):
    """The decisions of a run from its flags (numbers or their printed strings)."""
    p, c_p = float(p), float(c_p)
    applies = [name for name, entry in LOSSES.items() if entry.applies(space_type, p)]
    if not applies:
        raise ValueError(f"no loss applies to --space-type {space_type} with --p {p:g}")
    from_flag = loss in applies and LOSSES[loss].selectable
    kind = loss if from_flag else applies[0]
    if box_norm or sphere_norm:
        normalization = "learnable_box" if box_norm else "learnable_sphere"
    else:
        normalization = "fixed_sphere" if p == 0 else "none"
    conditional = conditional_name(space_type, c_p)
    anisotropic = conditional is not None and CONDITIONALS[conditional].ground_truth_lambda
    return Derived(kind, from_flag, conditional, anisotropic, normalization)
