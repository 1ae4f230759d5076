"""The summary of a sweep: every run's final and logged scores, per configuration mean ± std over
seeds, the R² of each ground-truth λ group, and the runs beside a reference log.

``sweep.py`` calls ``summarize`` after its runs (and for ``--summarize-only``);
``learning_check.py`` uses ``find_runs``. A log's λ groups and per-dimension scores
are read with ``compare_logs.read_per_dimension``, logs with ``logparse``.
"""

import csv
import fnmatch
import math
import os
import re
import sys

import numpy as np

import logparse
import settings
from argparse_utils import EXIT_BAD_INPUT, same_file, write_stdout
from compare_logs import read_per_dimension

PROG = "sweep.py"
LOG_NAME = re.compile(r"^(?P<name>.+)_seed(?P<seed>\d+)\.log$")
GLOB_CHARACTERS = "*?[]"


def say(line):
    """One line on stdout in one write (the worker threads' lines must not interleave); a closed
    stdout (``| head``) does not stop the sweep or its runs."""
    write_stdout(line + "\n")


def metrics_path(log_path):
    """A run's metrics file, beside its log."""
    return log_path[:-len(".log")] + ".jsonl"


def find_runs(out_dir, patterns):
    """``{name: [(seed, log path), ...]}`` for the names in ``out_dir`` matching ``patterns``.

    Raises:
        LogParseError: ``out_dir`` cannot be listed, or a pattern matches no log.
    """
    try:
        files = sorted(os.listdir(out_dir))
    except OSError as exc:
        raise logparse.LogParseError(out_dir, None, f"cannot list the directory ({exc.strerror})") from None
    found = {}
    for file_name in files:
        match = LOG_NAME.match(file_name)
        if match is not None:
            found.setdefault(match.group("name"), []).append(
                (int(match.group("seed")), os.path.join(out_dir, file_name)))
    runs = {}
    for pattern in patterns:
        names = [name for name in found if fnmatch.fnmatchcase(name, pattern)]
        if not names:
            raise logparse.LogParseError(out_dir, None, f"no log {pattern}_seed<S>.log in the directory")
        for name in names:
            runs[name] = sorted(found[name])
    return runs


def loss_label(log_args):
    """What loss the run trained with, from its Arguments block."""
    try:
        # The published logs predate --loss: AnInfoNCE.
        derived = settings.derive(log_args.get("space_type", "box"), log_args.get("p", "2"),
                                  log_args.get("c_p", "2"), log_args.get("loss", settings.DEFAULT_LOSS))
    except ValueError:
        return "?"
    import losses  # the table of losses (torch): imported only when a summary names its runs' losses
    return losses.loss_label(derived.loss, log_args.get("p", "?"))


def lambda_label(log):
    """The ground-truth Λ of the run in words, from its Arguments block."""
    if log.gt_lambda is None:
        return "-"
    low, high = log.args.get("gt_lambda_1", "?"), log.args.get("gt_lambda_2", "?")
    if log.args.get("linearly_spaced_lambda") == "True":
        return f"linear {low}..{high}"
    return f"bimodal {high} / {low}"


def planned_steps(log, phase):
    """The steps the run was asked for, from its Arguments, or None when they are not there."""
    try:
        n_steps = int(log.args["n_steps"])
        more = int(log.args.get("more_unsupervised", "1"))
    except (KeyError, ValueError):
        return None
    return n_steps if phase.supervised else n_steps * more


def lambda_error_or_none(learned, truth):
    """``logparse.lambda_error``, or None when either side is missing or their lengths differ."""
    if learned is None or truth is None or len(learned) != len(truth):
        return None
    return logparse.lambda_error(learned, truth)


def summarize_run(name, seed, path, group_steps=()):
    """One run's row; None (with a warning on stderr) when its log has no logged step."""
    log = logparse.parse_log(path)
    phase = log.main_phase()
    if phase is None or not phase.steps:
        sys.stderr.write(f"{PROG}: warning: {path} has no logged step yet: left out of the summary\n")
        return None
    lin, perm, source = logparse.final_scores(phase)
    last_lambda = phase.last_lambda()
    error = lambda_error_or_none(last_lambda[1] if last_lambda is not None else None, log.gt_lambda)
    return {"name": name, "seed": seed, "path": path, "log": log, "loss": loss_label(log.args),
            "lambda": lambda_label(log), "steps": phase.steps[-1]["step"],
            "planned": planned_steps(log, phase), "finished": phase.has_final(),
            "lin": lin, "perm": perm, "source": source, "lambda_error": error,
            "groups": group_scores(metrics_path(path), group_steps)}


def group_scores(metrics_path, steps=()):
    """From a run's metrics file: ``{where: {λ group: mean R² of its latents, ..., "Perm.": perm}}``,
    where is "end" (the last logged step: 4,096 samples, not the final evaluation's smaller
    batches) and each of ``steps`` the run logged; None when the file is missing, has no
    per-dimension scores (an older run) or is not main_mlp.py's."""
    if not os.path.exists(metrics_path):
        return None
    try:
        (_, records, groups), = read_per_dimension([metrics_path], "unsupervised")
    except logparse.LogParseError:
        return None

    def scores(record):
        out = {label: logparse.group_r2(record, group) for label, group in groups}
        out["Perm."] = record.get("perm", float("nan"))
        return out

    by_step = {r["step"]: r for r in records}
    result = {"end": scores(records[-1])}
    for step in steps:
        if step in by_step:
            result[f"step {step:,}"] = scores(by_step[step])
    return result


def mean_std(values):
    """(mean, sample std) of the non-None values; nan where undefined."""
    values = np.array([v for v in values if v is not None], dtype=float)
    if values.size == 0:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else math.nan


def aggregate(name, rows):
    """One configuration's row of the summary from its runs' rows."""
    steps = [r["steps"] for r in rows]
    result = {"name": name, "loss": rows[0]["loss"], "lambda": rows[0]["lambda"], "seeds": len(rows),
              "steps_min": min(steps), "steps_max": max(steps), "finished": sum(r["finished"] for r in rows)}
    # A failed or killed run stops early: its scores are not averaged with the finished ones. Only
    # when none finished (a sweep still running, or cut short on purpose) do the last logged ones count.
    used = [r for r in rows if r["finished"]] or rows
    for key in ("lin", "perm", "lambda_error"):
        result[key + "_mean"], result[key + "_std"] = mean_std([r[key] for r in used])
    result["groups"] = None
    # Only runs of the same latents (the same λ groups) are averaged group by group.
    if all(r["groups"] for r in used) and len({tuple(r["groups"]["end"]) for r in used}) == 1:
        # At each place every run has (the end, and the --group-steps all of them logged).
        wheres = [w for w in used[0]["groups"] if all(w in r["groups"] for r in used)]
        result["groups"] = {w: {label: mean_std([r["groups"][w][label] for r in used])
                                for label in used[0]["groups"][w]} for w in wheres}
    return result


def pm(mean, std, digits):
    """``mean ± std`` for the Markdown table."""
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if not math.isnan(std) else f"{mean:.{digits}f} ± -"


def steps_text(low, high):
    """A step count, or a range when the runs differ."""
    return f"{low:,}" if low == high else f"{low:,}-{high:,}"


REFERENCE_KEYS = (("mean_loss", "<Loss>", 4), ("lin", "Lin.", 4), ("perm", "Perm.", 4),
                  ("lambda_error", "Λ̂ error", 3))


def step_values(record, gt_lambda):
    """A logged step's figures for the reference table (Λ̂ error None when it cannot be computed)."""
    values = {key: record[key] for key in ("mean_loss", "lin", "perm")}
    values["lambda_error"] = lambda_error_or_none(record["lambda"], gt_lambda)
    return values


def compare_with_reference(name, rows, ref_path):
    """The runs of one configuration against a reference log at the last step all of them logged.

    Returns a dict for the summary's reference table.
    Raises:
        LogParseError: the reference cannot be read, or shares no logged step with every run.
    """
    ref = logparse.parse_log(ref_path)
    ref_phase = ref.main_phase()
    if ref_phase is None or not ref_phase.steps:
        raise logparse.LogParseError(ref_path, None, "no logged step in the reference log")
    logs = [r["log"] for r in rows]
    ref_steps = ref_phase.by_step()
    run_steps = [log.main_phase().by_step() for log in logs]
    common = logparse.common_steps(ref_phase, *(log.main_phase() for log in logs))
    if not common:
        raise logparse.LogParseError(ref_path, None, f"no step logged by the reference and every {name} run")
    step = common[-1]
    ours = [step_values(steps[step], log.gt_lambda) for steps, log in zip(run_steps, logs)]
    theirs = step_values(ref_steps[step], ref.gt_lambda)
    result = {"name": name, "reference": ref_path, "step": step, "seeds": len(rows)}
    for key, _, _ in REFERENCE_KEYS:
        values = [v[key] for v in ours if v[key] is not None]
        result[key] = (mean_std(values), (min(values), max(values)) if values else None, theirs[key])
    return result


def reference_lines(comparisons):
    """The summary's Markdown section for the ``--reference`` comparisons."""
    lines = ["", "## Against reference logs", "",
             "At the last step logged by the reference and by every run of the configuration: our mean ± "
             "std over seeds [min, max], and the reference's value. Λ̂ error as above, at that step.", "",
             "| configuration | reference | step | seeds | "
             + " | ".join(f"{label} ours | {label} reference" for _, label, _ in REFERENCE_KEYS) + " |",
             "|---|---|---:|---:|" + "---|---:|" * len(REFERENCE_KEYS)]
    for c in comparisons:
        cells = []
        for key, _, digits in REFERENCE_KEYS:
            (mean, std), bounds, ref = c[key]
            ours = pm(mean, std, digits)
            if bounds is not None:
                ours += f" [{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]"
            cells += [ours, f"{ref:.{digits}f}" if ref is not None else "-"]
        lines.append(f"| {c['name']} | {os.path.basename(c['reference'])} | {c['step']:,} | {c['seeds']} | "
                     + " | ".join(cells) + " |")
    return lines


def summary_paths(out_dir, base):
    """The summary's two files: Markdown and CSV."""
    return os.path.join(out_dir, base + ".md"), os.path.join(out_dir, base + ".csv")


def write_summary(out_dir, base, configs, runs, note, comparisons=()):
    """Write ``base``.md and ``base``.csv in ``out_dir``; returns their paths."""
    all_steps = [r["steps"] for r in runs]
    low, high = min(all_steps), max(all_steps)
    unfinished = sum(not r["finished"] for r in runs)
    planned = sorted({r["planned"] for r in runs if r["planned"] is not None})
    if low == high:
        header = f"Steps per run: {low:,} (the last logged step of each run)"
    else:
        header = f"Steps per run: {low:,} to {high:,} (not all runs are equally long: see the steps column)"
    if planned:
        header += f"; asked for: {', '.join(f'{p:,}' for p in planned)}"
    header += "."
    if unfinished:
        header += (f" {unfinished} of {len(runs)} runs have no final scores (failed, killed or still "
                   f"running): they are left out of the mean ± std of a configuration with finished runs; "
                   f"a configuration with none uses their last logged Lin./Perm.")
    lines = [f"# Seed sweep: {', '.join(c['name'] for c in configs)}", "", header, ""]
    if note:
        lines += [note, ""]
    lines += ["Mean ± standard deviation over seeds (sample std, ddof = 1). Lin. and Perm.: the final "
              "`linear mean` / `perm mean` of a finished run, else its last logged Lin. / Perm. "
              "Λ̂ error: mean over entries of |Λ̂ − λ| / λ, both sorted (the encoder's outputs are a "
              "permutation of the latents), with the last logged Λ̂.", "",
              "| configuration | loss | Λ | seeds (finished) | steps | Lin. | Perm. | Λ̂ error |",
              "|---|---|---|---:|---:|---|---|---|"]
    for c in configs:
        lines.append(f"| {c['name']} | {c['loss']} | {c['lambda']} | {c['seeds']} ({c['finished']}) | "
                     f"{steps_text(c['steps_min'], c['steps_max'])} | {pm(c['lin_mean'], c['lin_std'], 4)} | "
                     f"{pm(c['perm_mean'], c['perm_std'], 4)} | "
                     f"{pm(c['lambda_error_mean'], c['lambda_error_std'], 3)} |")
    lines += ["", "## Runs", "", "| configuration | seed | steps | scores from | Lin. | Perm. | Λ̂ error | log |",
              "|---|---:|---:|---|---:|---:|---:|---|"]
    for r in runs:
        error = f"{r['lambda_error']:.3f}" if r["lambda_error"] is not None else "-"
        source = r["source"] if r["finished"] else f"unfinished: {r['source']}"
        lines.append(f"| {r['name']} | {r['seed']} | {r['steps']:,} | {source} | {r['lin']:.4f} | "
                     f"{r['perm']:.4f} | {error} | {os.path.basename(r['path'])} |")
    lines += group_lines(configs)
    if comparisons:
        lines += reference_lines(comparisons)
    md_path, csv_path = summary_paths(out_dir, base)
    with open(md_path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    fields = ["name", "loss", "lambda", "seeds", "steps_min", "steps_max", "finished", "lin_mean", "lin_std",
              "perm_mean", "perm_std", "lambda_error_mean", "lambda_error_std"]
    with open(csv_path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for c in configs:
            writer.writerow({k: c[k] for k in fields})
    return md_path, csv_path


def group_lines(configs):
    """The summary's Markdown section on the R² of each ground-truth λ group (when the metrics have it)."""
    lines = []
    grouped = [c for c in configs if c["groups"] and len(c["groups"]["end"]) <= 5]
    if grouped:
        lines += ["", "## R² by ground-truth λ", "",
                  "From the metrics files: the R² of each latent, averaged over each group of equal "
                  "ground-truth λ (content: the high λ, which changes little across a positive pair; style: "
                  "the low λ), and Perm.; mean ± std over seeds, at the end (the last logged step, 4,096 "
                  "samples) and at the --group-steps.", ""]
        for c in grouped:
            for where, values in c["groups"].items():
                lines.append(f"- {c['name']} ({c['loss']}), {where}: "
                             + "; ".join(f"{label} {pm(*ms, 4)}" for label, ms in values.items()))
    return lines


def summarize(args):
    """Summarise the logs of ``args.names`` (or ``args.name``) in ``args.out_dir``; returns an exit status."""
    patterns = args.names or [args.name]
    try:
        found = find_runs(args.out_dir, patterns)
    except logparse.LogParseError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return EXIT_BAD_INPUT
    runs = []
    for name, seeds in found.items():
        for seed, path in seeds:
            try:
                row = summarize_run(name, seed, path, args.group_steps)
            except logparse.LogParseError as exc:  # one bad log does not sink the others
                sys.stderr.write(f"{PROG}: warning: {exc}: left out of the summary\n")
                continue
            if row is not None:
                runs.append(row)
    if not runs:
        sys.stderr.write(f"{PROG}: error: {args.out_dir}: no log with a logged step for {' '.join(patterns)}\n")
        return EXIT_BAD_INPUT
    configs = [aggregate(name, [r for r in runs if r["name"] == name])
               for name in found if any(r["name"] == name for r in runs)]
    comparisons = []
    for name, ref_path in args.references.items():
        rows = [r for r in runs if r["name"] == name]
        if not rows:
            sys.stderr.write(f"{PROG}: error: argument --reference: no run of configuration {name!r} to compare\n")
            return EXIT_BAD_INPUT
        try:
            comparisons.append(compare_with_reference(name, rows, ref_path))
        except logparse.LogParseError as exc:
            sys.stderr.write(f"{PROG}: error: argument --reference: {exc}\n")
            return EXIT_BAD_INPUT
    single = len(patterns) == 1 and not any(ch in patterns[0] for ch in GLOB_CHARACTERS)
    base = args.summary_name or (f"{patterns[0]}_summary" if single else "sweep_summary")
    inputs = [r["path"] for r in runs] + [metrics_path(r["path"]) for r in runs] + list(args.references.values())
    for path in summary_paths(args.out_dir, base):
        for read in inputs:
            if same_file(path, read):
                sys.stderr.write(f"{PROG}: error: argument --summary-name: the summary {path} would write over "
                                 f"its input {read}; give another --summary-name\n")
                return EXIT_BAD_INPUT
    for path in write_summary(args.out_dir, base, configs, runs, args.note, comparisons):
        say(f"wrote {path}")
    return 0
