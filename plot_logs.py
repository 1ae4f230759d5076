"""Plot the curves of one or several training logs into one PNG.

Four panels, each log overlaid in its own colour (legend: the file name):
Lin. against step, Perm. against step, <Loss> against step, and the
trajectories of the learned Λ̂ entries against step with the ground-truth λ
values as dashed horizontal lines. The image is ``--size`` inches at
``--dpi`` (default 12 x 9 in at 100 dpi: 1200 x 900 pixels), saved without
cropping so that its pixel size is exactly size x dpi.

    python plot_logs.py training_logs/bimodal_aninfonce_seed0.log logs_for_bimodal_lambda.log -o bimodal.png

With ``--per-dimension`` the inputs are ``--metrics-file`` JSON lines and the
panels are the R² of the latent dimensions against step, one panel per group
of equal ground-truth λ (bimodal: the high-λ "content" dimensions and the
low-λ "style" ones, each the mean over its dimensions; linearly spaced: one
panel per dimension, by increasing λ), every file overlaid: which latents
each loss recovers, and which it loses (e.g. AnInfoNCE against InfoNCE).

    python plot_logs.py --per-dimension an.jsonl info.jsonl -o collapse.png

Exit status: 0 written, 2 an input cannot be read (one line on stderr naming
the file and the line; with ``--per-dimension`` also a file that is not a
metrics file of main_mlp.py, or whose latents are not the first file's), the
image cannot be written, or ``-o`` names one of the inputs (never written over).

matplotlib is imported here only, so that the other tools run without it.
"""

import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster node or in CI
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

import logparse  # noqa: E402
from argparse_utils import EXIT_BAD_INPUT, ArgumentParser, same_file, write_stdout  # noqa: E402
from compare_logs import read_per_dimension  # noqa: E402

PROG = "plot_logs.py"
DEFAULT_SIZE = (12.0, 9.0)  # inches
DEFAULT_DPI = 100
# Largest image side, in pixels: beyond, the figure takes gigabytes (and matplotlib refuses 2^16).
MAX_PIXELS = 10_000


def _positive(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def parse_args(argv=None):
    parser = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="+", metavar="LOG", help="logs in the reference format, overlaid")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.png", help="the PNG to write")
    parser.add_argument("--phase", choices=("unsupervised", "supervised"), default="unsupervised",
                        help="the phase of the logs to plot (default: %(default)s)")
    parser.add_argument("--size", type=_positive, nargs=2, default=list(DEFAULT_SIZE), metavar=("W", "H"),
                        help="figure width and height in inches (default: 12 9)")
    parser.add_argument("--dpi", type=_positive, default=DEFAULT_DPI,
                        help="dots per inch (default: %(default)s, so 1200 x 900 pixels at the default size)")
    parser.add_argument("--title", default=None, help="title over the panels (default: the phase plotted)")
    parser.add_argument("--per-dimension", action="store_true",
                        help="the inputs are --metrics-file JSON lines: R² per group of equal ground-truth λ")
    args = parser.parse_args(argv)
    for side in args.size:
        if side * args.dpi > MAX_PIXELS:
            parser.error(f"arguments --size/--dpi: {args.size[0]:g} x {args.size[1]:g} in at {args.dpi:g} dpi "
                         f"is more than {MAX_PIXELS:,} pixels a side")
        if side * args.dpi < 10:
            parser.error(f"arguments --size/--dpi: {args.size[0]:g} x {args.size[1]:g} in at {args.dpi:g} dpi "
                         f"is less than 10 pixels a side")
    for path in args.logs:
        if same_file(args.output, path):
            parser.error(f"argument -o/--output: {args.output} is an input ({path}); give the image another name")
    return args


def labels_for(paths):
    """Legend labels: file names, or the paths as given where two file names coincide."""
    names = [os.path.basename(p) for p in paths]
    return [p if names.count(n) > 1 else n for p, n in zip(paths, names)]


def plot(logs, labels, phase_name, size, dpi, title):
    """Draw the four panels; returns the figure."""
    fig, axes = plt.subplots(2, 2, figsize=size, dpi=dpi)
    ax_lin, ax_perm, ax_loss, ax_lam = axes.ravel()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    truths = set()
    any_lambda = False
    for i, (log, label) in enumerate(zip(logs, labels)):
        colour = colours[i % len(colours)]
        steps = log.phase(phase_name).steps
        x = [r["step"] for r in steps]
        ax_lin.plot(x, [r["lin"] for r in steps], color=colour, label=label)
        ax_perm.plot(x, [r["perm"] for r in steps], color=colour, label=label)
        ax_loss.plot(x, [r["mean_loss"] for r in steps], color=colour, label=label)
        with_lambda = [r for r in steps if r["lambda"] is not None]
        if with_lambda:
            any_lambda = True
            lam_steps = [r["step"] for r in with_lambda]
            n_entries = len(with_lambda[-1]["lambda"])
            for j in range(n_entries):
                # Only records with the full vector: a log may change length
                # nowhere, but a hand-made one could.
                pts = [(s, r["lambda"][j]) for s, r in zip(lam_steps, with_lambda) if len(r["lambda"]) == n_entries]
                ax_lam.plot([p[0] for p in pts], [p[1] for p in pts], color=colour, linewidth=1.0,
                            alpha=0.8, label=label if j == 0 else None)
        if log.gt_lambda is not None:
            truths.update(log.gt_lambda)

    for k, value in enumerate(sorted(truths)):
        ax_lam.axhline(value, color="black", linestyle="--", linewidth=0.9,
                       label=r"ground-truth $\lambda$" if k == 0 else None)
    if not any_lambda:
        ax_lam.text(0.5, 0.5, r"no learned $\hat\Lambda$ in these logs", transform=ax_lam.transAxes,
                    ha="center", va="center")

    for ax, ylabel, panel_title in (
            (ax_lin, "Lin. disentanglement (R²)", "Lin. vs step"),
            (ax_perm, "Perm. disentanglement", "Perm. vs step"),
            (ax_loss, "<Loss> (running mean of the loss)", "<Loss> vs step"),
            (ax_lam, r"learned $\hat\Lambda$ entries", r"$\hat\Lambda$ trajectories; dashed: ground-truth $\lambda$")):
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_per_dimension(runs, labels, size, dpi, title):
    """One panel per λ group of the first run: each run's mean R² over the group against step.

    Runs of the same loss share a colour (AnInfoNCE against InfoNCE at a glance), each seed its own
    line style; the legend names the file.
    """
    groups = runs[0][2]  # read_per_dimension: every run has the first one's
    cols = min(len(groups), 5)
    rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=size, dpi=dpi, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ("-", "--", ":", "-.")
    losses = []
    for args, _, _ in runs:
        if args.get("loss") not in losses:
            losses.append(args.get("loss"))
    seen = {}
    looks = []
    for args, _, _ in runs:
        k = seen.get(args.get("loss"), 0)
        seen[args.get("loss")] = k + 1
        looks.append((colours[losses.index(args.get("loss")) % len(colours)], styles[k % len(styles)]))
    for ax, (name, dims) in zip(axes.ravel(), groups):
        for (_, steps, _), label, (colour, style) in zip(runs, labels, looks):
            x = [r["step"] for r in steps]
            y = [logparse.group_r2(r, dims) for r in steps]
            ax.plot(x, y, color=colour, linestyle=style, label=label)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("R² of the group's latents")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(True, alpha=0.3)
    for ax in axes.ravel()[len(groups):]:
        ax.set_visible(False)
    axes.ravel()[0].legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def main(argv=None):
    """Write the PNG; returns the exit status (0 written, 2 bad input)."""
    args = parse_args(argv)
    try:
        if args.per_dimension:
            inputs = read_per_dimension(args.logs, args.phase)
        else:
            inputs = [logparse.parse_log(path) for path in args.logs]
            for log in inputs:
                logparse.require_steps(log, args.phase)
    except logparse.LogParseError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return EXIT_BAD_INPUT
    title = args.title if args.title is not None else f"{args.phase} phase"
    if args.per_dimension:
        fig = plot_per_dimension(inputs, labels_for(args.logs), tuple(args.size), args.dpi, title)
    else:
        fig = plot(inputs, labels_for(args.logs), args.phase, tuple(args.size), args.dpi, title)
    try:
        # No bbox_inches="tight": the pixel size stays exactly size x dpi.
        # format="png": the file is written under exactly the name given (matplotlib
        # would otherwise add ".png" to a name without an extension).
        fig.savefig(args.output, dpi=args.dpi, format="png")
    except OSError as exc:
        sys.stderr.write(f"{PROG}: error: cannot write {args.output} ({exc.strerror or exc})\n")
        return EXIT_BAD_INPUT
    finally:
        plt.close(fig)
    write_stdout(f"wrote {args.output}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
