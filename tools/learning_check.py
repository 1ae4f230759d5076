"""Does our code learn as fast as the authors' early on? A regression check, not a timed test.

    python -m tools.learning_check --seeds 1 2 3 4 5 6 7 8 9 10 --jobs 2 --out-dir runs/learning_check
    python -m tools.learning_check --summarize-only --out-dir training_logs/learning_check_b256

What it runs and prints, and its exit statuses (0 within the authors' spread, 1 not, 2 bad input): docs/tools.md.
"""

import statistics
import sys

import scipy.stats

import disentanglement_utils
from plumbing.argparse_utils import positive_int, write_stdout
from tools import common, logparse, sweep, sweep_summary

PROG = "tools.learning_check"
NAME = "bimodal_b256"
TRAIN_ARGS = ["--n", "10", "--batch-size", "256", "--space", "extended_sphere", "--c-p", "0", "--p", "0",
              "--only-unsupervised", "--gt-lambda-1", "5", "--gt-lambda-2", "25", "--n-steps", "1334",
              "--num-eval-batches", "1"]
STEPS = (1001, 2001, 3001, 4001)
CHECKED_STEPS = (2001, 3001, 4001)
# The figures compared: <Loss> and the numbers of the reference's own scores (its logs' Lin. and Perm.).
METRICS = (("mean_loss", "<Loss>"),) + tuple((f.name, f.label) for f in
                                            disentanglement_utils.fields(numbers=True, reference=True))
# The one that decides the exit status.
CHECKED = "lin"
# The authors' code at TRAIN_ARGS: {step: {metric: (mean, sd, runs)}}, from
# 15 unseeded runs of their main_mlp.py (see training_logs/README.md).
AUTHORS = {
    1001: {"mean_loss": (5.4632, 0.0232, 15), "lin": (0.5004, 0.0293, 15), "perm": (0.4494, 0.0245, 15)},
    2001: {"mean_loss": (5.0723, 0.0311, 15), "lin": (0.5478, 0.0280, 15), "perm": (0.4622, 0.0306, 15)},
    3001: {"mean_loss": (4.7660, 0.0428, 15), "lin": (0.5945, 0.0274, 15), "perm": (0.4928, 0.0224, 15)},
    4001: {"mean_loss": (4.5101, 0.0448, 15), "lin": (0.6484, 0.0431, 15), "perm": (0.5237, 0.0394, 15)},
}


def parse_args(argv=None):
    parser = common.parser(PROG, __doc__)
    add = parser.add_argument
    add("--seeds", type=int, nargs="+", default=list(range(1, 11)), metavar="S", help="our seeds (default: 1..10)")
    add("--jobs", type=positive_int, default=2, help="runs at a time (default: %(default)s)")
    add("--out-dir", required=True, metavar="DIR", help="where the runs' logs go")
    add("--summarize-only", action="store_true", help="run nothing; read the logs in --out-dir")
    args = parser.parse_args(argv)
    # The runs' logs go there (read only with --summarize-only).
    if not args.summarize_only and (problem := sweep.out_dir_problem(args.out_dir)):
        parser.error(f"argument --out-dir: {problem}")
    return args


def our_values(out_dir):
    """{step: {metric: [values over seeds]}} of the runs in ``out_dir``, and how many runs."""
    runs = sweep_summary.find_runs(out_dir, [NAME])[NAME]
    values = {step: {key: [] for key, _ in METRICS} for step in STEPS}
    for _, path in runs:
        by_step = logparse.require_steps(logparse.parse_log(path), "unsupervised").by_step()
        for step in (step for step in STEPS if step in by_step):
            for key, _ in METRICS:
                values[step][key].append(by_step[step][key])
    return values, len(runs)


def table(values):
    """The comparison as Markdown lines, and whether Lin. is within the authors' sd at CHECKED_STEPS."""
    lines = ["| step | " + " | ".join(f"{label} authors | {label} ours | p" for _, label in METRICS) + " |",
             "|" + "---|" * (1 + 3 * len(METRICS))]
    within = True
    for step in STEPS:
        cells = [f"{step:,}"]
        for key, _ in METRICS:
            (mean_a, sd_a, n_a), ours = AUTHORS[step][key], values[step][key]
            cells.append(f"{mean_a:.3f} ± {sd_a:.3f}")
            if len(ours) < 2:
                cells += ["-", "-"]
                within = False
                continue
            mean_o, sd_o = statistics.mean(ours), statistics.stdev(ours)
            p = scipy.stats.ttest_ind_from_stats(mean_a, sd_a, n_a, mean_o, sd_o, len(ours), equal_var=False).pvalue
            cells += [f"{mean_o:.3f} ± {sd_o:.3f} ({len(ours)})", f"{p:.2f}"]
            within &= not (key == CHECKED and step in CHECKED_STEPS and abs(mean_o - mean_a) > sd_a)
        lines.append("| " + " | ".join(cells) + " |")
    return lines, within


def main(argv=None):
    args = parse_args(argv)
    if not args.summarize_only:
        rc = sweep.main(["--seeds", *map(str, args.seeds), "--jobs", str(args.jobs), "--out-dir", args.out_dir,
                         "--name", NAME, "--skip-done", "--", *TRAIN_ARGS])
        if rc != 0:
            return rc
    try:
        values, count = our_values(args.out_dir)
    except logparse.LogParseError as exc:
        return common.error(PROG, exc)
    lines, within = table(values)
    # One write after the verdict is known: a reader that stops early does not change the exit status.
    write_stdout(f"bimodal README setting, batch 256, {count} of our runs in {args.out_dir} against the authors' "
                 f"code (mean ± sd over runs; p: Welch's t-test)\n" + "\n".join(lines) + "\n"
                 + "Lin. at 2,001-4,001 " + ("within" if within else "NOT within")
                 + " one of the authors' run-to-run standard deviations\n")
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
