"""What β · s spans over an anchor's negatives, at the start and at the end of a hard-negative run.

    python training_logs/hard_negatives/hn_scale.py SAVE_DIR [SAVE_DIR ...]

For each finished run's save-dir (its configuration from the checkpoint there, as tools.rescore reads it): the
start is the run's own initial state, rebuilt from its seed as main_mlp.py draws it (g, θ of Λ̂, then the
encoder from the global generator); the end is its trained encoder (unsup_f.pth) and the loss's Λ̂ of its
checkpoint. On one batch of --batch-size pairs drawn with --seed: per anchor, the spread (max - min) of
β · s_k over its M = 2B - 2 negatives, and the share of the weight w = softmax(β s) that its 5 % hardest
negatives carry (5 % at β = 0); the median over the 2B anchors.
"""

import argparse
import dataclasses
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import encoders  # noqa: E402
import main_mlp  # noqa: E402
from plumbing.checkpoint import read_checkpoint  # noqa: E402
from plumbing.files import CHECKPOINT_NAME  # noqa: E402
from tools import rescore  # noqa: E402

HARDEST = 0.05


def negatives(logits):
    """(2B, 2B - 2) logits of each anchor's negatives (its own column and its positive dropped)."""
    two_b = logits.shape[0]
    half = two_b // 2
    keep = torch.ones_like(logits, dtype=torch.bool)
    rows = torch.arange(two_b)
    keep[rows, rows] = False
    keep[rows, (rows + half) % two_b] = False
    return logits[keep].view(two_b, two_b - 2)


@torch.no_grad()
def spread(loss_fn, h, latent, batch_size, beta, generator):
    """(median spread of β·s, median weight share of the hardest 5 %) on one batch."""
    z = latent.sample_marginal(batch_size, generator, torch.device("cpu"))
    z_pos = latent.sample_conditional(z, generator)
    a, b = h(z), h(z_pos)
    a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    s = beta * negatives(loss_fn.logits(a, b))  # (2B, M)
    w = torch.softmax(s, dim=1)
    top = max(1, int(round(HARDEST * s.shape[1])))
    share = w.topk(top, dim=1).values.sum(1)
    return float((s.max(1).values - s.min(1).values).median()), float(share.median())


def states(save_dir):
    """The run's (start, end) as (loss_fn, h, latent) triples and its β."""
    args = rescore.run_config(save_dir, None)
    checkpoint = read_checkpoint(os.path.join(save_dir, CHECKPOINT_NAME), main_mlp.CHECKPOINT_LAYOUT, "SAVE_DIR")
    args = dataclasses.replace(args, seed=checkpoint["seed"])
    derived = args.derived
    device = torch.device("cpu")
    torch.manual_seed(args.seed)  # as main_mlp.prepare: the encoder's initial weights from the global generator
    init_gen, data_gen = torch.Generator().manual_seed(args.seed), torch.Generator().manual_seed(args.seed)
    exp = main_mlp.build_experiment(args, device, init_gen, data_gen)
    start_f = encoders.build_encoder(args.n, derived.normalization)
    start = (exp.loss_fn, torch.nn.Sequential(exp.g, start_f), exp.latent)
    end = main_mlp.build_experiment(args, device, torch.Generator().manual_seed(args.seed),
                                    torch.Generator().manual_seed(args.seed))  # its loss and g, to be loaded
    end.loss_fn.load_state_dict(checkpoint["loss_fn"])
    end.g.load_state_dict(rescore.load_state(os.path.join(save_dir, "g.pth")))
    end_f = encoders.build_encoder(args.n, derived.normalization)
    end_f.load_state_dict(rescore.load_state(os.path.join(save_dir, main_mlp.ENCODER_FILES["unsupervised"])))
    return (start, (end.loss_fn, torch.nn.Sequential(end.g, end_f), exp.latent)), args


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("save_dirs", nargs="+")
    parser.add_argument("--seed", type=int, default=0, help="seed of the batch (default: 0)")
    opts = parser.parse_args(argv)
    print("| run | β | spread of β·s, start | end | weight of the hardest 5 %, start | end |")
    print("|---|---:|---:|---:|---:|---:|")
    for save_dir in opts.save_dirs:
        (start, end), args = states(save_dir)
        row = [spread(*state, args.batch_size, args.hn_beta, torch.Generator().manual_seed(opts.seed))
               for state in (start, end)]
        print(f"| {os.path.basename(os.path.normpath(save_dir))} | {args.hn_beta:g} | {row[0][0]:.3g} | "
              f"{row[1][0]:.3g} | {row[0][1]:.3f} | {row[1][1]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
