"""What the flags imply, decided once, right after parsing.

Several flags combine into one decision ("is this AnInfoNCE?", "is the
conditional the rejected anisotropic normal?"). Each is made here and read
everywhere else, so the copies cannot drift. Plain Python: the tools read a
log's ``Arguments:`` block (strings) through the same function.
"""

import dataclasses

# The losses by name: what each one is in words (``--p`` and ``--loss`` pick one).
LOSSES = {
    "aninfonce": "AnInfoNCE: a learnable diagonal Λ̂ (extended_sphere, --p 0)",
    "infonce": "InfoNCE: one shared learnable λ (extended_sphere, --p 0 --loss infonce)",
    "lp": "the Lp form (--p > 0)",
    "dot": "the dot-product form (--p 0 outside extended_sphere)",
}
# The encoder's output normalisations by name (see encoders.NORMALIZATION_LAYERS).
NORMALIZATIONS = ("fixed_sphere", "learnable_sphere", "learnable_box", "none")


@dataclasses.dataclass(frozen=True)
class Derived:
    """The decisions the flags imply.

    loss: a key of LOSSES.
    learns_lambda: the loss has a learnable Λ̂ (printed as ``lambda init`` and
        ``learned lambda values``, in both phases, as the reference does).
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
    """The decisions of a run from its flags (numbers or their printed strings)."""
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
    return Derived(loss=kind, learns_lambda=kind in ("aninfonce", "infonce"),
                   anisotropic=extended and c_p == 0, normalization=normalization)


def derive_from_args(args):
    """``derive`` for a parsed argparse namespace."""
    return derive(args.space_type, args.p, args.c_p, args.loss, args.box_norm, args.sphere_norm)
