"""How often AnInfoNCE reaches the theorem's form: the table and the figure of a set of runs.

    python training_logs/theory/theorem_runs.py table training_logs/theory/l100/*_seed?.jsonl --steps 10001 20001
    python training_logs/theory/theorem_runs.py plot training_logs/theory/l100/*_seed?.jsonl -o l100.png

Reads main_mlp.py's metrics files (tools.metrics_io). The runs are grouped into configurations by the flags in
which they differ (their seed, files and save-dir aside). ``table``: per configuration and step, mean ± std
over its seeds of R²_BO (``block_orthogonal_r2``), the block-linear R², Lin., Perm. and the content / style R²
(each group's mean of ``lin_dims``) and the mean of the larger and the smaller half of Λ̂ (sorted: Λ̂'s
entries belong to the outputs, not to the latents), all from the step records (4,096 fresh samples; the block scores fitted on
one half, scored on the other); and, at the last step given, the number of seeds with R²_BO at or above
``--threshold`` with its 95 % Wilson interval. ``plot``: R²_BO, the style R² and Λ̂ against step, every run.
"""

import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402
from scipy.stats import binomtest  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import command_line  # noqa: E402
import settings  # noqa: E402
from tools import metrics_io  # noqa: E402

NOT_A_SETTING = set(settings.INCIDENTAL_FLAGS)  # where and how a run ran, not what it computed
STYLES = ["-", "--", ":", "-.", (0, (1, 3))]


def read_runs(paths):
    """[(configuration label, seed, Records)], the label naming the flags in which the runs differ."""
    runs = [metrics_io.read(path) for path in sorted(paths)]
    keys = sorted({k for r in runs for k in r.args} - NOT_A_SETTING)
    value = lambda r, k: r.args.get(k, command_line.DEFAULTS.get(k))  # a flag not printed: its default
    varying = [k for k in keys if len({repr(value(r, k)) for r in runs}) > 1]
    label = lambda r: ", ".join(f"{k} {value(r, k)}" for k in varying) or "all runs"
    return [(label(r), r.args.get("seed"), r) for r in runs]


def at_step(records, step):
    """The scores of ``records``' step record at ``step``: a dict, or None when it has none."""
    rec = next((r for r in records.steps("unsupervised") if r["step"] == step), None)
    if rec is None:
        return None
    groups = metrics_io.lambda_groups(records.gt_lambda, records.args["n"])
    content, style = metrics_io.per_group(rec["lin_dims"], groups)
    lam = -np.sort(-np.asarray(rec.get("lambda", [np.nan] * len(rec["lin_dims"]))))  # descending
    half = len(lam) // 2
    return {"R²_BO": rec.get("block_orthogonal_r2", np.nan), "block-linear": rec.get("block_linear_r2", np.nan),
            "Lin.": rec["lin"], "Perm.": rec["perm"], "content R²": content, "style R²": style,
            "Λ̂ high": lam[:half].mean(), "Λ̂ low": lam[half:].mean()}


def wilson(k, n):
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return ci.low, ci.high


def table(runs, steps, threshold):
    by_config = {}
    for label, seed, records in runs:
        by_config.setdefault(label, []).append((seed, records))
    columns = ["R²_BO", "block-linear", "Lin.", "Perm.", "content R²", "style R²"]
    lines = ["| configuration | step | seeds | " + " | ".join(columns) + " | Λ̂ high / low half |",
             "|---|---:|---:|" + "---:|" * len(columns) + "---|"]
    reached = []
    for label, members in by_config.items():
        for step in steps:
            scores = [s for s in (at_step(r, step) for _, r in members) if s is not None]
            if not scores:
                continue
            cells = [f"{np.mean([s[c] for s in scores]):.3f} ± {np.std([s[c] for s in scores]):.3f}" for c in columns]
            lam = " / ".join(f"{np.mean([s[c] for s in scores]):.1f}" for c in ("Λ̂ high", "Λ̂ low"))
            lines.append(f"| {label} | {step:,} | {len(scores)} | " + " | ".join(cells) + f" | {lam} |")
        last = [(seed, at_step(r, steps[-1])) for seed, r in members]
        last = [(seed, s) for seed, s in last if s is not None]
        if last:
            k = sum(s["R²_BO"] >= threshold for _, s in last)
            low, high = wilson(k, len(last))
            per_seed = ", ".join(f"{seed}: {s['R²_BO']:.3f}" for seed, s in sorted(last))
            reached.append(f"| {label} | {k} of {len(last)} | {low:.2f}–{high:.2f} | {per_seed} |")
    lines += ["", f"Seeds with R²_BO ≥ {threshold:g} at step {steps[-1]:,} (95 % Wilson interval of the rate):", "",
              "| configuration | reached | 95 % interval | R²_BO per seed |", "|---|---:|---|---|", *reached]
    return "\n".join(lines)


def plot(runs, out):
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5 + 0.12 * len(runs)))
    labels = list(dict.fromkeys(label for label, _, _ in runs))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for label, seed, records in runs:
        steps = [r for r in records.steps("unsupervised") if "block_orthogonal_r2" in r]
        x = [r["step"] for r in steps]
        groups = metrics_io.lambda_groups(records.gt_lambda, records.args["n"])
        style = dict(color=colours[labels.index(label) % len(colours)], ls=STYLES[(seed or 0) % len(STYLES)], lw=1.1)
        axes[0].plot(x, [r["block_orthogonal_r2"] for r in steps], label=f"{label}, seed {seed}", **style)
        axes[1].plot(x, [metrics_io.per_group(r["lin_dims"], groups)[-1] for r in steps], **style)
        if all("lambda" in r for r in steps):
            lam = -np.sort(-np.array([r["lambda"] for r in steps]), axis=1)
            half = lam.shape[1] // 2
            axes[2].plot(x, lam[:, :half].mean(1), **style)
            axes[2].plot(x, lam[:, half:].mean(1), alpha=0.5, **style)
    for value in sorted(set(runs[0][2].gt_lambda or [])):
        axes[2].axhline(value, color="grey", lw=0.8, ls=":")
    titles = ["R²_BO (the theorem's form)", f"R² of the {metrics_io.lambda_groups(runs[0][2].gt_lambda, runs[0][2].args['n'])[-1][0]} latents",
              "Λ̂: mean of the largest / smallest half (log)"]
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].set_ylim(-0.02, 1.02)
    axes[2].set_yscale("log")
    legend = fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=7)
    fig.tight_layout(rect=(0, legend.get_window_extent(fig.canvas.get_renderer()).height / fig.bbox.height, 1, 1))
    fig.savefig(out, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("table", "plot"))
    parser.add_argument("metrics", nargs="+", help="metrics files (JSON lines) of the runs")
    parser.add_argument("--steps", type=int, nargs="+", default=[10001, 20001], help="table: the steps")
    parser.add_argument("--threshold", type=float, default=0.95, help="table: the R²_BO a seed must reach")
    parser.add_argument("-o", "--output", help="plot: the PNG to write")
    args = parser.parse_args(argv)
    try:
        runs = read_runs(args.metrics)
    except metrics_io.logparse.LogParseError as exc:
        parser.error(str(exc))
    if args.what == "table":
        print(table(runs, args.steps, args.threshold))
    elif args.output is None:
        parser.error("plot needs -o")
    else:
        plot(runs, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
