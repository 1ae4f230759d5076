"""Say whether two training logs agree within noise, and show where they differ: one phase of two logs (ours or
the published ones) aligned by step, <Loss>, Lin. and Perm. side by side, the final scores, and each log's Λ̂
against the ground truth. When they agree, and the exit statuses (0 agree, 1 not, 2 unreadable input):
docs/tools.md, 'The verdict of tools.compare_logs'.

    python -m tools.compare_logs training_logs/bimodal_aninfonce_seed0.log logs_for_bimodal_lambda.log
"""

import io
import math
import sys
import traceback
import unicodedata
import warnings

import numpy as np

import command_line
import disentanglement_utils
import settings
from plumbing.argparse_utils import bounded, positive_int, write_stdout
from tools import common, logparse, metrics_io
from tools.common import number

PROG = "tools.compare_logs"
EXIT_AGREE, EXIT_DISAGREE = 0, 1  # 2, unreadable input: common.error
# <Loss> (a 250-step running mean) "learns like the reference" within 0.15 at the same step.
LOSS_COLUMN = ("mean_loss", "<Loss>", "loss_tol", 0.15)


def columns():
    """The step table's columns, (field, label, tolerance flag's dest, its default): <Loss>, then the scores
    disentanglement_utils.METRICS compares within a tolerance (what we accept as a reproduction)."""
    return [LOSS_COLUMN] + [(f.name, f.label, f"{f.name}_tol", f.tol)
                            for f in disentanglement_utils.fields(numbers=True) if f.tol is not None]


def parse_args(argv=None):
    parser = common.parser(PROG, __doc__)
    add, at_least_0 = parser.add_argument, bounded(float, at_least=0)
    add("log_a", metavar="LOG_A", help="first log (e.g. ours)")
    add("log_b", metavar="LOG_B", help="second log (e.g. the published one); Λ̂ differences are relative to this one")
    add("--min-step", type=int, default=15000, help="check the tolerances at the common steps >= this (early steps "
        "are dominated by the initialisation; default: %(default)s)")
    for key, name, dest, default in columns()[1:] + columns()[:1]:  # --lin-tol, --perm-tol, --loss-tol
        what = "running mean of the loss; " if key == "mean_loss" else ""
        add(f"--{dest.replace('_', '-')}", type=at_least_0, default=default,
            help=f"largest allowed |Δ{name}| ({what}default: %(default)s)")
    add("--lambda-rtol", type=at_least_0, default=0.10, help="largest allowed relative difference of sorted Λ̂ "
        "entries, |a - b| / |b| (default: %(default)s)")
    add("--lambda-at", choices=("last", "common"), default="common", help="Λ̂ to compare: both at the last common "
        "step where both logged Λ̂ (two runs of different length are compared at the same step), or each log's "
        "last one (default: %(default)s)")
    common.add_phase(parser, "align")
    add("--rows", type=positive_int, default=20, help="rows of the step table, spread evenly over the common steps "
        "(plus the last; default: %(default)s)")
    add("--all", action="store_true", help="print every common step in the table")
    add("--per-dimension", action="store_true", help="LOG_A and LOG_B are --metrics-file JSON lines: print the R² "
        "of each group of equal ground-truth λ (content / style, or each dimension by λ) side by side, no verdict")
    return parser.parse_args(argv)


def thin(steps, rows):
    """About ``rows`` of ``steps`` spread evenly, always with the first and the last."""
    if len(steps) <= rows + 1:
        return list(steps)
    chosen = [steps[i] for i in np.unique(np.round(np.linspace(0, len(steps) - 1, rows)).astype(int))]
    return chosen if chosen[-1] == steps[-1] else chosen + [steps[-1]]


def differing_args(log_a, log_b):
    """``[(name, value in A, value in B)]`` for the arguments both logs list with different values (a flag
    of command_line.UNPRINTED_AT_DEFAULT that a log does not name has its default there)."""
    unprinted = {k: str(command_line.DEFAULTS[k]) for k in command_line.UNPRINTED_AT_DEFAULT}
    args_a, args_b = {**unprinted, **log_a.args}, {**unprinted, **log_b.args}
    keys = [k for k in args_a if k in args_b and k not in settings.INCIDENTAL_FLAGS]  # where/how it ran
    return [(k, args_a[k], args_b[k]) for k in keys if args_a[k] != args_b[k]]


def compare_steps(phase_a, phase_b, common_steps, args, out):
    """The step table and the tolerance checks at the common steps; returns the disagreements."""
    if not common_steps:
        out.write("\nno common logged steps: nothing to align\n")
        return ["the logs have no logged step in common"]
    by_a, by_b = phase_a.by_step(), phase_b.by_step()
    checked = [s for s in common_steps if s >= args.min_step] or common_steps[-1:]  # none: the last common step
    checked_set = set(checked)
    out.write(f"\n{len(common_steps)} common steps; tolerances checked at the {len(checked)} steps >= "
              f"{args.min_step}\n" if checked[0] >= args.min_step else f"\n{len(common_steps)} common steps, none "
              f">= {args.min_step}: tolerances checked at the last common step, {common_steps[-1]}, only\n")
    cols = [(key, name, getattr(args, dest), 9 if key == "mean_loss" else 7) for key, name, dest, _ in columns()]
    shown = common_steps if args.all else thin(common_steps, args.rows)
    out.write(f"{'step':>8} " + "  ".join(f"{name + ' A':>{w}} {name + ' B':>{w}} {'Δ' + name:>8}"
                                          for _, name, _, w in cols) + "\n")
    for step in shown:
        a, b = by_a[step], by_b[step]
        outside = step in checked_set and any(not abs(a[k] - b[k]) <= tol for k, _, tol, _ in cols)
        cells = [f"{number(a[k]):>{w}} {number(b[k]):>{w}} {number(a[k] - b[k], signed=True):>8}"
                 for k, _, _, w in cols]
        out.write(f"{step:>8} " + "  ".join(cells) + f"{'  *' if outside else ''}\n")
    out.write(f"({len(shown)} of {len(common_steps)} common steps shown"
              f"{'' if args.all else '; --all for every one'}; * marks a checked step outside a tolerance)\n")
    problems = []
    for key, name, tol, _ in cols:
        deltas = np.array([by_a[s][key] - by_b[s][key] for s in checked])
        i = int(np.argmax(np.where(np.isnan(deltas), np.inf, np.abs(deltas))))  # a nan (diverged) is the worst
        ok = abs(deltas[i]) <= tol
        out.write(f"largest |Δ{name}| at checked steps: {number(abs(deltas[i]))} at step {checked[i]} "
                  f"(tolerance {tol:g}): {'ok' if ok else 'OUTSIDE'}\n")
        problems += [] if ok else [f"|Δ{name}| = {number(abs(deltas[i]))} > {tol:g} at step {checked[i]}"]
    return problems


def compare_finals(phase_a, phase_b, args, out):
    """The final scores side by side; returns the disagreements."""
    if not (phase_a.has_final() or phase_b.has_final()):
        return []
    both, problems = phase_a.has_final() and phase_b.has_final(), []
    out.write("\nfinal scores (mean ± std over the final evaluation batches)\n")
    for key, label, dest, _ in columns()[1:]:
        cells = [f"{number(phase.final[key + '_mean'])} ± {number(phase.final[key + '_std'])}" if phase.has_final()
                 else "-" for phase in (phase_a, phase_b)]
        out.write(f"  {label + ' mean':<12} A {cells[0]:<18} B {cells[1]}\n")
        delta = phase_a.final[key + "_mean"] - phase_b.final[key + "_mean"] if both else 0
        if not abs(delta) <= getattr(args, dest):
            problems.append(f"final {label} mean differs by {number(abs(delta))} > {getattr(args, dest):g}")
    if not both:
        out.write("  (only one log has final scores: not compared)\n")
    return problems


def lambda_to_compare(phase_a, phase_b, common_steps, args, out):
    """``(Λ̂_a, Λ̂_b, problems)``: the Λ̂ of each log to compare, ``(step, values)``, at the last common step where
    both logged one (``--lambda-at last``: each log's last), or Nones and the disagreement of a log without one."""
    lam_a, lam_b = phase_a.last_lambda(), phase_b.last_lambda()
    if args.lambda_at == "common" and (lam_a or lam_b):
        a, b = phase_a.by_step(), phase_b.by_step()
        steps = [s for s in common_steps if a[s]["lambda"] is not None and b[s]["lambda"] is not None]
        if not steps:
            out.write("\nlearned Λ̂: no common step where both logs have one: not compared\n")
            return None, None, ["no common step where both logs have a learned Λ̂"]
        lam_a, lam_b = (steps[-1], a[steps[-1]]["lambda"]), (steps[-1], b[steps[-1]]["lambda"])
    elif lam_a is None and lam_b is None:
        out.write("\nno learned Λ̂ in either log: not compared\n")
        return None, None, []
    elif lam_a is None or lam_b is None:
        out.write(f"\nlearned Λ̂: log {'A' if lam_a is None else 'B'} has none\n")
        return None, None, ["only one log has a learned Λ̂ to compare"]
    return lam_a, lam_b, []


def compare_lambda(log_a, log_b, phase_a, phase_b, common_steps, args, out):
    """Print the Λ̂ section; returns its disagreements."""
    lam_a, lam_b, problems = lambda_to_compare(phase_a, phase_b, common_steps, args, out)
    if lam_a is None:
        return problems
    (step_a, values_a), (step_b, values_b) = lam_a, lam_b
    gt_a, gt_b = log_a.gt_lambda, log_b.gt_lambda
    truth = gt_a if gt_a is not None else gt_b
    if gt_a is not None and gt_b is not None and (len(gt_a) != len(gt_b) or not np.allclose(gt_a, gt_b, rtol=1e-4)):
        problems.append("the logs have different ground-truth Λ")
        out.write(f"\nground truth differs: A {gt_a}, B {gt_b}; A's is shown\n")
    if len(values_a) != len(values_b):
        out.write(f"\nlearned Λ̂: A has {len(values_a)} entries, B {len(values_b)}\n")
        return problems + ["Λ̂ has a different number of entries"]
    if truth is not None and len(truth) != len(values_a):
        out.write(f"\nthe ground truth has {len(truth)} entries, Λ̂ {len(values_a)}: shown without it\n")
        truth = None
    sorted_a, sorted_b, rel_ab = metrics_io.match_sorted(values_a, values_b)
    out.write(f"\nlearned Λ̂ of A at step {step_a}, of B at step {step_b}, sorted: the encoder's outputs are the "
              f"latents up to an unrecorded permutation, so Λ̂ is matched to λ by sorting\n")
    cols = [("Λ̂ A", sorted_a, ".2f"), ("Λ̂ B", sorted_b, ".2f"), ("A vs B", rel_ab, ".3f")]
    if truth is not None:
        _, truth_sorted, err_a = metrics_io.match_sorted(values_a, truth)
        err_b = metrics_io.match_sorted(values_b, truth)[2]
        cols[:2] = [("λ true", truth_sorted, ".2f"), cols[0], ("rel.err", err_a, ".3f"), cols[1],
                    ("rel.err", err_b, ".3f")]
    # Each header right-aligned by its displayed width: the hat of Λ̂ is a combining character.
    out.write(" ".join(f"{header:>{width + sum(1 for ch in header if unicodedata.combining(ch))}}"
                       for header, width in [("rank", 5)] + [(header, 8) for header, _, _ in cols]) + "\n")
    for i in range(len(sorted_a)):
        out.write(f"{i + 1:>5}" + "".join(f" {values[i]:>8{spec}}" for _, values, spec in cols) + "\n")
    if truth is not None:
        rank_lines(sorted_a, sorted_b, truth_sorted, err_a, err_b, out)
    worst = int(np.argmax(np.where(np.isfinite(rel_ab), rel_ab, np.inf)))
    ok = bool(np.all(rel_ab <= args.lambda_rtol))
    out.write(f"largest relative difference of sorted Λ̂ (A vs B): {rel_ab[worst]:.3f} at rank {worst + 1} "
              f"(tolerance {args.lambda_rtol:g}): {'ok' if ok else 'OUTSIDE'}\n")
    return problems + ([] if ok else [f"sorted Λ̂ differ by {rel_ab[worst]:.3f} (relative) at rank {worst + 1} "
                                      f"> {args.lambda_rtol:g}"])


def rank_lines(sorted_a, sorted_b, truth_sorted, err_a, err_b, out):
    """Each log's mean relative error of sorted Λ̂ to sorted λ, and their rank agreement (Spearman ρ; the log
    does not record which output is which latent): 1 exactly when Λ̂ separates every pair of distinct λ; nan
    when Λ̂ is constant."""
    out.write(f"mean relative error to λ: A {np.mean(err_a):.3f}, B {np.mean(err_b):.3f}\n")
    if len(set(truth_sorted)) < len(truth_sorted):
        out.write("rank agreement: not applicable (the ground-truth λ are not distinct)\n")
        return
    import scipy.stats  # here: it takes longer to import than the rest of the tool, and few logs need it

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = [float(scipy.stats.spearmanr(learned, truth_sorted).statistic) if np.ptp(learned) else math.nan
               for learned in (sorted_a, sorted_b)]
    out.write(f"rank agreement with λ (Spearman ρ after sorting; 1 when every distinct λ is separated): "
              f"A {number(rho[0], 3)}, B {number(rho[1], 3)}\n")


def compare_per_dimension(run_a, run_b, args, out):
    """The R² of each λ group of the latents, A beside B, at their common steps."""
    groups, r2 = run_a[1], disentanglement_utils.R2_PER_LATENT
    by_a, by_b = ({r["step"]: r for r in run[0].steps(args.phase) if r2 in r} for run in (run_a, run_b))
    common_steps = sorted(set(by_a) & set(by_b))
    out.write(f"A: {args.log_a}\nB: {args.log_b}\nR² of the latents, mean over each group of equal "
              f"ground-truth λ ({len(common_steps)} common steps)\n")
    out.write(f"{'step':>8}  " + "  ".join(f"{name + ' A':>16} {name + ' B':>16}" for name, _ in groups) + "\n")
    for step in (common_steps if args.all else thin(common_steps, args.rows)):
        r2_a, r2_b = (metrics_io.per_group(by[step][r2], groups) for by in (by_a, by_b))
        out.write(f"{step:>8}  " + "  ".join(f"{a:>16.4f} {b:>16.4f}" for a, b in zip(r2_a, r2_b)) + "\n")


def main(argv=None):
    """Compare the two logs; returns the exit status. The whole report is made before any of it is
    written, so the status is the verdict whatever becomes of stdout."""
    args, out = parse_args(argv), io.StringIO()
    try:
        if args.per_dimension:
            compare_per_dimension(*metrics_io.read_per_dimension((args.log_a, args.log_b), args.phase), args, out)
            write_stdout(out.getvalue())
            return EXIT_AGREE
        logs = logparse.parse_log(args.log_a), logparse.parse_log(args.log_b)
        # Both phases checked before anything is printed: an unusable input is one line on stderr, no stdout.
        phases = [logparse.require_steps(log, args.phase) for log in logs]
    except logparse.LogParseError as exc:
        return common.error(PROG, exc)
    for label, log, phase in zip("AB", logs, phases):
        out.write(f"{label}: {log.path}\n   {args.phase} phase: {len(phase.steps)} logged steps, last "
                  f"{phase.steps[-1]['step']}{'; final scores' if phase.has_final() else ''}"
                  f"{'; cut off (last line incomplete)' if log.truncated else ''}\n")
    if diffs := differing_args(*logs):
        out.write("arguments that differ (A | B): " + "; ".join(f"{k}: {a!r} | {b!r}" for k, a, b in diffs) + "\n")
    common_steps = sorted(set(phases[0].by_step()) & set(phases[1].by_step()))
    problems = (compare_steps(*phases, common_steps, args, out) + compare_finals(*phases, args, out)
                + compare_lambda(*logs, *phases, common_steps, args, out))
    tolerances = ", ".join(f"|Δ{name}| <= {getattr(args, dest):g}" for _, name, dest, _ in columns())
    out.write(f"\nverdict: DISAGREE ({'; '.join(problems)})\n" if problems else
              f"\nverdict: AGREE ({tolerances}, sorted Λ̂ within {args.lambda_rtol:g})\n")
    write_stdout(out.getvalue())
    return EXIT_DISAGREE if problems else EXIT_AGREE


if __name__ == "__main__":
    try:
        status = main()
    except Exception:  # a bug, not a verdict: Python's own exit status 1 would read as "the logs disagree"
        traceback.print_exc()
        status = common.error(PROG, "the comparison failed (above): no verdict")
    sys.exit(status)
