"""The figure of the λ 100 / 10 runs: content and style R², the block score and Λ̂ against step.

    python training_logs/theory/plot_theory.py training_logs/theory/lambda100/*_seed?.jsonl \
        -o training_logs/theory/lambda100.png

Reads main_mlp.py's metrics files (JSON lines: a config record, then step records); a run's colour
is its loss and Λ̂ parametrisation, its line style its seed. Content are the latents of the larger
ground-truth λ (--gt-lambda-2, the first floor(n/2)), style those of the smaller; the Λ̂ panel shows
the mean of the largest floor(n/2) entries of Λ̂ (solid) and of the rest (faint).
"""

import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402

COLOURS = {"aninfonce softplus": "tab:blue", "aninfonce exp": "tab:green", "infonce-fixed": "tab:orange"}
STYLES = ["-", "--", ":", "-."]


def read_run(path):
    with open(path, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    args = records[0]["args"]
    steps = [r for r in records if r.get("type") == "step"]
    half = args["n"] // 2
    lin = np.array([r["lin_dims"] for r in steps])  # (T, n)
    run = {"step": np.array([r["step"] for r in steps]), "content": lin[:, :half].mean(1),
           "style": lin[:, half:].mean(1), "block": np.array([r["block"] for r in steps]),
           "seed": records[0]["seed"], "args": args}
    if "lambda" in steps[0]:
        # Λ̂'s entries belong to the outputs, which are the latents in some order: the largest
        # floor(n/2) are compared with the content λ, the rest with the style λ.
        lam = -np.sort(-np.array([r["lambda"] for r in steps]), axis=1)  # (T, n), descending
        run["lambda_content"], run["lambda_style"] = lam[:, :half].mean(1), lam[:, half:].mean(1)
    loss = args.get("loss", "aninfonce")
    run["label"] = f"{loss} {args.get('lambda_param', 'softplus')}" if loss == "aninfonce" else loss
    return run


def plot(runs, out):
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    panels = [("content", "content R² (λ = {c:g})"), ("style", "style R² (λ = {s:g})"),
              ("block", "block score"), (None, "Λ̂: mean of the largest / smallest half (log)")]
    args = runs[0]["args"]
    c, s = args["gt_lambda_2"], args["gt_lambda_1"]
    for ax, (key, title) in zip(axes, panels):
        for run in runs:
            style = dict(color=COLOURS.get(run["label"], "k"), ls=STYLES[run["seed"] % len(STYLES)], lw=1.2)
            if key is not None:
                ax.plot(run["step"], run[key], label=f"{run['label']}, seed {run['seed']}", **style)
            elif "lambda_content" in run:
                ax.plot(run["step"], run["lambda_content"], **style)
                ax.plot(run["step"], run["lambda_style"], alpha=0.6, **style)
        if key is None:
            ax.set_yscale("log")
            for value in (c, s):
                ax.axhline(value, color="grey", lw=0.8, ls=":")
        else:
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(title.format(c=c, s=s))
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", nargs="+", help="metrics files (JSON lines) of the runs")
    parser.add_argument("-o", "--output", required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    missing = [path for path in args.metrics if not os.path.isfile(path)]
    if missing:
        parser.error(f"argument metrics: no file {missing[0]}")
    plot([read_run(path) for path in sorted(args.metrics)], args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
