"""Plot the curves of one or several runs into one PNG.

The inputs are metrics files (``--metrics-file``, ``.jsonl``: every field a run
recorded) or text logs in the reference format (a published log). Four panels,
each run overlaid in its own colour (legend: the file name): Lin. against
step, Perm. against step, <Loss> against step, and the trajectories of the
learned Λ̂ entries against step with the ground-truth λ values as dashed
horizontal lines; a fifth, the block score (and, dotted, ``block_orth``)
against step, when a metrics file has it. The image is ``--size`` inches at
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
import metrics_io  # noqa: E402
from argparse_utils import EXIT_BAD_INPUT, ArgumentParser, bounded, same_file, write_stdout  # noqa: E402

PROG = "plot_logs.py"
DEFAULT_SIZE = (12.0, 9.0)  # inches
DEFAULT_DPI = 100
# Largest image side, in pixels: beyond, the figure takes gigabytes (and matplotlib refuses 2^16).
MAX_PIXELS = 10_000
POSITIVE = bounded(float, above=0)


def parse_args(argv=None):
    parser = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="+", metavar="LOG",
                        help="metrics files (.jsonl) or logs in the reference format, overlaid")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.png", help="the PNG to write")
    parser.add_argument("--phase", choices=("unsupervised", "supervised"), default="unsupervised",
                        help="the phase of the logs to plot (default: %(default)s)")
    parser.add_argument("--size", type=POSITIVE, nargs=2, default=list(DEFAULT_SIZE), metavar=("W", "H"),
                        help="figure width and height in inches (default: 12 9)")
    parser.add_argument("--dpi", type=POSITIVE, default=DEFAULT_DPI,
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


# The panels of one score each: (record field, y label, title).
SCORE_PANELS = (("lin", "Lin. disentanglement (R²)", "Lin. vs step"),
                ("perm", "Perm. disentanglement", "Perm. vs step"),
                ("mean_loss", "<Loss> (running mean of the loss)", "<Loss> vs step"))
# The block score's panel, drawn when a run recorded it: (field, line style).
BLOCK_CURVES = (("block", "-"), ("block_orth", ":"))


def _curve(ax, steps, key, **style):
    """Plot ``key`` of the step records that have it; returns whether any had."""
    points = [(r["step"], r[key]) for r in steps if metrics_io.is_number(r.get(key))]
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], **style)
    return bool(points)


def _lambda_curves(ax, steps, colour, label):
    """The trajectories of the learned Λ̂ entries; returns whether the run logged any."""
    with_lambda = [r for r in steps if isinstance(r.get("lambda"), list)]
    if not with_lambda:
        return False
    n_entries = len(with_lambda[-1]["lambda"])
    for j in range(n_entries):
        # Only records with the full vector: a run changes its length nowhere, but a hand-made file could.
        pts = [(r["step"], r["lambda"][j]) for r in with_lambda if len(r["lambda"]) == n_entries]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colour, linewidth=1.0, alpha=0.8,
                label=label if j == 0 else None)
    return True


def plot(runs, labels, phase_name, size, dpi, title):
    """Draw the panels (a fifth, the block score, when a run recorded it); returns the figure."""
    with_block = any("block" in r for run in runs for r in run.steps(phase_name))
    fig, axes = plt.subplots(2, 3 if with_block else 2, figsize=size, dpi=dpi, squeeze=False)
    axes = axes.ravel()
    score_axes, ax_lam = axes[:3], axes[3]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    truths = set()
    any_lambda = False
    for i, (run, label) in enumerate(zip(runs, labels)):
        colour = colours[i % len(colours)]
        steps = run.steps(phase_name)
        for ax, (key, _, _) in zip(score_axes, SCORE_PANELS):
            _curve(ax, steps, key, color=colour, label=label)
        any_lambda |= _lambda_curves(ax_lam, steps, colour, label)
        if with_block:
            for key, style in BLOCK_CURVES:
                _curve(axes[4], steps, key, color=colour, linestyle=style,
                       label=f"{label} ({key})" if key != "block" else label)
        if run.gt_lambda is not None:
            truths.update(run.gt_lambda)

    for k, value in enumerate(sorted(truths)):
        ax_lam.axhline(value, color="black", linestyle="--", linewidth=0.9,
                       label=r"ground-truth $\lambda$" if k == 0 else None)
    if not any_lambda:
        ax_lam.text(0.5, 0.5, r"no learned $\hat\Lambda$ in these logs", transform=ax_lam.transAxes,
                    ha="center", va="center")
    panels = [(ylabel, panel_title) for _, ylabel, panel_title in SCORE_PANELS]
    panels.append((r"learned $\hat\Lambda$ entries", r"$\hat\Lambda$ trajectories; dashed: ground-truth $\lambda$"))
    if with_block:
        panels.append(("block score", "block score vs step; dotted: block_orth"))
        axes[5].set_visible(False)
    for ax, (ylabel, panel_title) in zip(axes, panels):
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_per_dimension(runs, labels, phase_name, size, dpi, title):
    """One panel per λ group of the first run: each run's mean R² over the group against step.

    Runs of the same loss share a colour (AnInfoNCE against InfoNCE at a glance), each seed its own
    line style; the legend names the file.
    """
    groups = runs[0][1]  # metrics_io.read_per_dimension: every run has the first one's
    cols = min(len(groups), 5)
    rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=size, dpi=dpi, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ("-", "--", ":", "-.")
    losses = list(dict.fromkeys(run.args.get("loss") for run, _ in runs))
    seen = {}
    looks = []
    for run, _ in runs:
        k = seen.get(run.args.get("loss"), 0)
        seen[run.args.get("loss")] = k + 1
        looks.append((colours[losses.index(run.args.get("loss")) % len(colours)], styles[k % len(styles)]))
    for g, (ax, (name, _)) in enumerate(zip(axes.ravel(), groups)):
        for (run, _), label, (colour, style) in zip(runs, labels, looks):
            steps = [r for r in run.steps(phase_name) if "lin_dims" in r]
            ax.plot([r["step"] for r in steps], [metrics_io.per_group(r["lin_dims"], groups)[g] for r in steps],
                    color=colour, linestyle=style, label=label)
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
            inputs = metrics_io.read_per_dimension(args.logs, args.phase)
        else:
            inputs = [metrics_io.read_any(path, args.phase) for path in args.logs]
    except logparse.LogParseError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return EXIT_BAD_INPUT
    title = args.title if args.title is not None else f"{args.phase} phase"
    draw = plot_per_dimension if args.per_dimension else plot
    fig = draw(inputs, labels_for(args.logs), args.phase, tuple(args.size), args.dpi, title)
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
