"""Plot the curves of one or several runs into one PNG.

    python -m tools.plot_logs training_logs/bimodal_aninfonce_seed0.log logs_for_bimodal_lambda.log -o bimodal.png
    python -m tools.plot_logs --per-dimension an.jsonl info.jsonl -o collapse.png

The inputs are metrics files (``--metrics-file``, ``.jsonl``) or text logs in the reference format (a published
log), each run in its own colour. The panels, the image's size and the exit statuses (0 written, 2 bad input or
an image that cannot be written): docs/tools.md.
"""

import math
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster node or in CI
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402

import disentanglement_utils  # noqa: E402
from plumbing.argparse_utils import bounded, same_file, write_stdout  # noqa: E402
from tools import common, logparse, metrics_io  # noqa: E402

PROG = "tools.plot_logs"
# Largest image side, in pixels: beyond, the figure takes gigabytes (and matplotlib refuses 2^16).
MAX_PIXELS = 10_000
POSITIVE = bounded(float, above=0)
# Beyond this, a curve's range overflows when matplotlib places its ticks (1e308 to -1e308): such values,
# which no run writes, and non-finite ones are left out of the curves (a gap), as are such ground-truth lines.
MAX_DRAWN = 1e300
# The panel of the loss: (record field, y label, title).
LOSS_PANEL = ("mean_loss", "<Loss> (running mean of the loss)", "<Loss> vs step")
# Step-record numbers that are not scores of h.
NOT_SCORES = {"step", "loss", "r"}
STYLES = ("-", ":", "--", "-.")


def parse_args(argv=None):
    parser = common.parser(PROG, __doc__)
    add = parser.add_argument
    add("logs", nargs="+", metavar="LOG", help="metrics files (.jsonl) or logs in the reference format, overlaid")
    add("-o", "--output", required=True, metavar="OUT.png", help="the PNG to write")
    common.add_phase(parser, "plot")
    add("--size", type=POSITIVE, nargs=2, default=[12.0, 9.0], metavar=("W", "H"),
        help="figure width and height in inches (default: 12 9)")
    add("--dpi", type=POSITIVE, default=100,
        help="dots per inch (default: %(default)s, so 1200 x 900 pixels at the default size)")
    add("--title", default=None, help="title over the panels (default: the phase plotted)")
    add("--per-dimension", action="store_true",
        help="the inputs are --metrics-file JSON lines: R² per group of equal ground-truth λ")
    args = parser.parse_args(argv)
    size = f"{args.size[0]:g} x {args.size[1]:g} in at {args.dpi:g} dpi"
    for side in args.size:
        if side * args.dpi > MAX_PIXELS:
            parser.error(f"arguments --size/--dpi: {size} is more than {MAX_PIXELS:,} pixels a side")
        if side * args.dpi < 10:
            parser.error(f"arguments --size/--dpi: {size} is less than 10 pixels a side")
    for path in args.logs:
        if same_file(args.output, path):
            parser.error(f"argument -o/--output: {args.output} is an input ({path}); give the image another name")
    return args


def drawable(value):
    """``value`` as a curve shows it: nan (a gap) when it is not finite or beyond ±MAX_DRAWN."""
    return value if math.isfinite(value) and abs(value) <= MAX_DRAWN else math.nan


def _curve(ax, steps, key, **style):
    points = [(r["step"], drawable(r[key])) for r in steps if metrics_io.is_number(r.get(key))]
    if points:
        ax.plot(*zip(*points), **style)


def _finish(fig, axes, titles, title):
    """Label the panels of ``titles``, ``[(y label, title)]``; hide the grid's others."""
    for ax in axes[len(titles):]:
        ax.set_visible(False)
    for ax, (ylabel, panel_title) in zip(axes, titles):
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title)
        ax.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def other_scores(runs, phase_name, panels):
    """{field: label} of the step records' other numbers that are drawn (declared ones with their label)."""
    declared = {f.name: f for f in disentanglement_utils.fields(numbers=True)}
    left_out = NOT_SCORES | {key for key, _, _ in panels} | {k for k, f in declared.items() if f.plot is None}
    keys = dict.fromkeys(key for run in runs for r in run.steps(phase_name) for key, value in r.items()
                         if key not in left_out and metrics_io.is_number(value))
    return {key: declared[key].label if key in declared else key for key in keys}


def plot(runs, labels, phase_name, size, dpi, title):
    """Draw the panels (a last one, of the other scores, when a run recorded any); returns the figure."""
    # the panels of one score each, (record field, y label, title): the scores declared with one, then <Loss>
    panels = [(f.name, f.label, f"{f.label} vs step") for f in disentanglement_utils.fields(numbers=True)
              if f.plot == "panel"] + [LOSS_PANEL]
    others = other_scores(runs, phase_name, panels)
    count = len(panels) + 1 + bool(others)
    fig, axes = plt.subplots(2, -(-count // 2), figsize=size, dpi=dpi, squeeze=False)
    axes = axes.ravel()
    lambda_ax = axes[len(panels)]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    any_lambda = False
    for i, (run, label) in enumerate(zip(runs, labels)):
        colour, steps = colours[i % len(colours)], run.steps(phase_name)
        for ax, (key, _, _) in zip(axes, panels):
            _curve(ax, steps, key, color=colour, label=label)
        with_lambda = [r for r in steps if isinstance(r.get("lambda"), list)]  # the learned Λ̂ entries' trajectories
        any_lambda |= bool(with_lambda)
        n_entries = len(with_lambda[-1]["lambda"]) if with_lambda else 0
        # Only records with the full vector: a run changes its length nowhere, but a hand-made file could.
        full = [r for r in with_lambda if len(r["lambda"]) == n_entries]
        for j in range(n_entries):
            lambda_ax.plot([r["step"] for r in full], [drawable(r["lambda"][j]) for r in full], color=colour,
                           linewidth=1.0, alpha=0.8, label=label if j == 0 else None)
        for k, (key, name) in enumerate(others.items()):
            _curve(axes[count - 1], steps, key, color=colour, linestyle=STYLES[k % len(STYLES)],
                   label=f"{label} ({name})")
    truths = sorted({value for run in runs if run.gt_lambda is not None for value in run.gt_lambda
                     if not math.isnan(drawable(value))})
    for k, value in enumerate(truths):
        lambda_ax.axhline(value, color="black", linestyle="--", linewidth=0.9,
                          label=r"ground-truth $\lambda$" if k == 0 else None)
    if not any_lambda:
        lambda_ax.text(0.5, 0.5, r"no learned $\hat\Lambda$ in these logs", transform=lambda_ax.transAxes,
                       ha="center", va="center")
    titles = [(ylabel, panel_title) for _, ylabel, panel_title in panels]
    titles.append((r"learned $\hat\Lambda$ entries", r"$\hat\Lambda$ trajectories; dashed: ground-truth $\lambda$"))
    if others:
        titles.append(("score", "other scores vs step"))
    for ax in axes[:len(titles)]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    return _finish(fig, axes, titles, title)


def plot_per_dimension(runs, labels, phase_name, size, dpi, title):
    """One panel per λ group of the first run: each run's mean R² over the group against step; runs of the
    same loss share a colour (AnInfoNCE against InfoNCE at a glance), each seed its own line style."""
    groups = runs[0][1]  # metrics_io.read_per_dimension: every run has the first one's
    cols = min(len(groups), 5)
    fig, axes = plt.subplots(-(-len(groups) // cols), cols, figsize=size, dpi=dpi, squeeze=False)
    axes = axes.ravel()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    losses = [run.args.get("loss") for run, _ in runs]
    kinds = list(dict.fromkeys(losses))
    looks = [(colours[kinds.index(loss) % len(colours)], ("-", "--", ":", "-.")[losses[:i].count(loss) % 4])
             for i, loss in enumerate(losses)]
    for g, ax in enumerate(axes[:len(groups)]):
        for (run, _), label, (colour, style) in zip(runs, labels, looks):
            steps = [r for r in run.steps(phase_name) if disentanglement_utils.R2_PER_LATENT in r]
            r2 = [drawable(metrics_io.per_group(r[disentanglement_utils.R2_PER_LATENT], groups)[g]) for r in steps]
            ax.plot([r["step"] for r in steps], r2, color=colour, linestyle=style, label=label)
        ax.set_ylim(-0.05, 1.05)
    axes[0].legend(fontsize="small")
    return _finish(fig, axes, [("R² of the group's latents", name) for name, _ in groups], title)


def main(argv=None):
    """Write the PNG; returns the exit status (0 written, 2 bad input)."""
    args = parse_args(argv)
    try:
        inputs = (metrics_io.read_per_dimension(args.logs, args.phase) if args.per_dimension
                  else [metrics_io.read_any(path, args.phase) for path in args.logs])
    except logparse.LogParseError as exc:
        return common.error(PROG, exc)
    names = [os.path.basename(p) for p in args.logs]  # the legend's labels; the paths where two names coincide
    labels = [p if names.count(n) > 1 else n for p, n in zip(args.logs, names)]
    draw = plot_per_dimension if args.per_dimension else plot
    # A value the readers let through may be huge (1e308): numpy's overflow while placing ticks is no error.
    with np.errstate(all="ignore"):
        fig = draw(inputs, labels, args.phase, tuple(args.size), args.dpi,
                   args.title if args.title is not None else f"{args.phase} phase")
        try:
            # No bbox_inches="tight": the pixel size stays exactly size x dpi; format="png": the file has
            # exactly the name given (matplotlib would add ".png" to a name without an extension).
            fig.savefig(args.output, dpi=args.dpi, format="png")
        except OSError as exc:
            return common.error(PROG, f"cannot write {args.output} ({exc.strerror or exc})")
        finally:
            plt.close(fig)
    write_stdout(f"wrote {args.output}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
