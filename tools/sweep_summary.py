"""The summary of a sweep (``tools.sweep`` after its runs, and ``--summarize-only``), what it shows: docs/tools.md.
A run is found by its log (``NAME_seedS.log``) and read from the metrics file beside it, or from its log
where it has none (an older run; a published reference log)."""

import csv
import fnmatch
import math
import os
import re

import numpy as np

import disentanglement_utils
import settings
from plumbing.argparse_utils import same_file
from tools import common, logparse, metrics_io
from tools.common import number, say

PROG = "tools.sweep"
LOG_NAME = re.compile(r"^(?P<name>.+)_seed(?P<seed>\d+)\.log$")
GLOB_CHARACTERS = "*?[]"
# More λ groups than this (linearly spaced λ: one per latent) make the section unreadable: left out.
MAX_GROUPS_SHOWN = 5
CSV_FIELDS = ("name", "loss", "lambda", "seeds", "steps_min", "steps_max", "finished")  # then FIELD_mean, FIELD_std


def main_scores():
    """The main tables' figures, ``[(field, label, digits)]``: the reference's own scores (Lin., Perm.: a finished
    run's final ones, else its last logged), then Λ̂ error."""
    return ([(f.name, f.label, 4) for f in disentanglement_utils.fields(numbers=True, reference=True)]
            + [("lambda_error", "Λ̂ error", 3)])


def error(message):
    return common.error(PROG, message)


def metrics_path(log_path):
    return log_path[:-len(".log")] + ".jsonl"


def find_runs(out_dir, patterns):
    """``{name: [(seed, log path), ...]}`` for the names in ``out_dir`` matching ``patterns``
    (LogParseError: ``out_dir`` cannot be listed, or a pattern matches no log)."""
    try:
        files = sorted(os.listdir(out_dir))
    except OSError as exc:
        raise logparse.LogParseError(out_dir, None, f"cannot list the directory ({exc.strerror})") from None
    found = {}
    for match in filter(None, map(LOG_NAME.match, files)):
        found.setdefault(match["name"], []).append((int(match["seed"]), os.path.join(out_dir, match.string)))
    runs = {}
    for pattern in patterns:
        names = [name for name in found if fnmatch.fnmatchcase(name, pattern)]
        if not names:
            raise logparse.LogParseError(out_dir, None, f"no log {pattern}_seed<S>.log in the directory")
        runs.update((name, sorted(found[name])) for name in names)
    return runs


def read_run(log_path):
    """A run's records: its metrics file beside its log, else (an older run, or a metrics file that cannot be
    read, said on stderr) its log, which has no per-dimension scores."""
    path = metrics_path(log_path)
    if os.path.exists(path):
        try:
            records = metrics_io.read(path)
        except logparse.LogParseError as exc:
            common.warn(PROG, f"{exc}: the run's scores come from its log {log_path} instead (no R² by "
                              f"ground-truth λ)")
        else:
            if records.truncated:
                common.warn(PROG, f"{path}: its last line is cut off (a run killed while writing, or still "
                                  f"running): the summary has its records up to the line before")
            return records
    return metrics_io.from_log(logparse.parse_log(log_path))


def loss_label(args):
    """What loss the run trained with, from its arguments."""
    try:  # the published logs predate --loss: AnInfoNCE
        derived = settings.derive(args.get("space_type", "box"), args.get("p", "2"),
                                  args.get("c_p", "2"), args.get("loss", settings.DEFAULT_LOSS))
    except ValueError:
        return "?"
    return settings.loss_label(derived.loss, args.get("p", "?"))


def planned_steps(args, phase):
    """The steps the run was asked for, from its arguments, or None when they are not there."""
    try:
        n_steps, more = int(args["n_steps"]), int(args.get("more_unsupervised", "1"))
    except (KeyError, TypeError, ValueError):
        return None
    return n_steps if phase == "supervised" else n_steps * more


def summarize_run(name, seed, path, group_steps=()):
    """One run's row; None (with a warning on stderr) when it has no logged step."""
    records = read_run(path)
    steps = records.steps()
    if not steps:
        common.warn(PROG, f"{path} has no logged step yet: left out of the summary")
        return None
    last, final, args = steps[-1], records.final or {}, records.args
    finished = all(f"{key}_mean" in final for key, _, _ in main_scores()[:-1])  # numbers: metrics_io checked them
    last_lambda = next((r["lambda"] for r in reversed(steps) if isinstance(r.get("lambda"), list)), None)
    low, high = args.get("gt_lambda_1", "?"), args.get("gt_lambda_2", "?")  # the ground-truth Λ
    linear = args.get("linearly_spaced_lambda") in (True, "True")
    fields = {("last", key): value for key, value in last.items() if metrics_io.is_number(value) and key != "step"}
    fields.update({("final", key): value for key, value in final.items() if metrics_io.is_number(value)})
    return {"name": name, "seed": seed, "path": path, "records": records, "loss": loss_label(args),
            "lambda": "-" if records.gt_lambda is None else f"linear {low}..{high}" if linear else
            f"bimodal {high} / {low}", "steps": last["step"], "finished": finished,
            "planned": planned_steps(args, records.main_phase()),
            **{key: final[f"{key}_mean"] if finished else last.get(key) for key, _, _ in main_scores()[:-1]},
            "source": "final" if finished else f"step {last['step']}",
            "lambda_error": metrics_io.lambda_error(last_lambda, records.gt_lambda),
            "fields": fields, "groups": group_scores(records, group_steps)}


def group_scores(records, steps=()):
    """The list fields of a run's records per λ group (R2_PER_LATENT: the R² of each group's latents), and Perm.:
    ``{"labels": [group labels], "at": {where: {field: [value per group]}}}``; where is "end" (the last logged
    step), each of ``steps`` the run logged, and "final"; None without per-dimension scores."""
    with_dims = [r for r in records.steps() if disentanglement_utils.R2_PER_LATENT in r]
    if not with_dims:
        return None
    groups = metrics_io.lambda_groups(records.gt_lambda, records.n)
    by_step = {r["step"]: r for r in with_dims}
    places = [("end", with_dims[-1])] + [(f"step {step:,}", by_step[step]) for step in steps if step in by_step]
    if records.final is not None and disentanglement_utils.R2_PER_LATENT in records.final:
        places.append(("final", records.final))
    at = {}
    for where, record in places:
        # Not Λ̂: it is per encoder output, which no record matches to a latent.
        values = {key: metrics_io.per_group(value, groups) for key, value in record.items()
                  if metrics_io.is_number_list(value) and key != "lambda"}
        at[where] = {key: value for key, value in values.items() if value is not None}
        if metrics_io.is_number(record.get("perm")):
            at[where]["Perm."] = [record["perm"]]
    return {"labels": [label for label, _ in groups], "at": at}


def mean_std(values):
    """(mean, sample std) of the non-None values; nan where undefined."""
    values = np.array([v for v in values if v is not None], dtype=float)
    if values.size == 0:
        return math.nan, math.nan
    with np.errstate(all="ignore"):  # an infinite or huge value: inf or nan, no warning
        return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else math.nan


def common_keys(dicts):
    """The keys every one of ``dicts`` has, in the first one's order."""
    return [key for key in dicts[0] if all(key in d for d in dicts[1:])]


def aggregate(name, rows):
    """One configuration's row of the summary from its runs' rows."""
    steps = [r["steps"] for r in rows]
    result = {"name": name, "loss": rows[0]["loss"], "lambda": rows[0]["lambda"], "seeds": len(rows),
              "steps_min": min(steps), "steps_max": max(steps), "finished": sum(r["finished"] for r in rows)}
    # A failed or killed run stops early: its scores are not averaged with the finished ones. Only
    # when none finished (a sweep still running, or cut short on purpose) do the last logged ones count.
    used = [r for r in rows if r["finished"]] or rows
    for key, _, _ in main_scores():
        result[key + "_mean"], result[key + "_std"] = mean_std([r[key] for r in used])
    fields = dict.fromkeys(key for r in used for key in r["fields"])
    result["fields"] = {key: (mean_std([r["fields"].get(key) for r in used]), sum(key in r["fields"] for r in used))
                        for key in fields}
    result["groups"] = None
    # Only runs of the same latents (the same λ groups) are averaged group by group, at each place
    # every run has (the end, the --group-steps all of them logged, the final evaluation).
    if all(r["groups"] for r in used) and len({tuple(r["groups"]["labels"]) for r in used}) == 1:
        ats = [r["groups"]["at"] for r in used]
        result["groups"] = {"labels": used[0]["groups"]["labels"],
                            "at": {where: {key: [mean_std(values) for values in zip(*(at[where][key] for at in ats))]
                                           for key in common_keys([at[where] for at in ats])}
                                   for where in common_keys(ats)}}
    return result


def reference_row(name, rows, ref_path):
    """The reference table's row of one configuration's runs against a reference log, at the last step all of
    them logged (LogParseError: the reference cannot be read, or shares no step with every run)."""
    ref = metrics_io.from_log(logparse.parse_log(ref_path))
    if not ref.steps():
        raise logparse.LogParseError(ref_path, None, "no logged step in the reference log")
    by_step = [{r["step"]: r for r in records.steps()} for records in [ref] + [row["records"] for row in rows]]
    common_steps = sorted(set.intersection(*map(set, by_step)))
    if not common_steps:
        raise logparse.LogParseError(ref_path, None, f"no step logged by the reference and every {name} run")
    step = common_steps[-1]
    cells = [name, os.path.basename(ref_path), f"{step:,}", str(len(rows))]
    truths = [ref.gt_lambda] + [row["records"].gt_lambda for row in rows]
    for key, _, digits in [("mean_loss", "<Loss>", 4)] + main_scores():
        # The reference's figure, then each run's (Λ̂ error None when it cannot be computed).
        values = [metrics_io.lambda_error(s[step].get("lambda"), gt) if key == "lambda_error" else s[step].get(key)
                  for s, gt in zip(by_step, truths)]
        ours = [v for v in values[1:] if v is not None]
        bounds = f" [{min(ours):.{digits}f}, {max(ours):.{digits}f}]" if ours else ""
        cells += [pm(*mean_std(ours), digits) + bounds, number(values[0], digits)]
    return "| " + " | ".join(cells) + " |"


def pm(mean, std, digits):
    """``mean ± std`` for the Markdown tables."""
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f} ± " + ("-" if math.isnan(std) else f"{std:.{digits}f}")


def header_lines(configs, runs, note):
    """The summary's title, what its runs are, and its main table of configurations."""
    low, high = min(r["steps"] for r in runs), max(r["steps"] for r in runs)
    unfinished = sum(not r["finished"] for r in runs)
    planned = sorted({r["planned"] for r in runs if r["planned"] is not None})
    header = (f"Steps per run: {low:,} (the last logged step of each run)" if low == high else
              f"Steps per run: {low:,} to {high:,} (not all runs are equally long: see the steps column)")
    header += (f"; asked for: {', '.join(f'{p:,}' for p in planned)}" if planned else "") + "."
    if unfinished:
        header += (f" {unfinished} of {len(runs)} runs have no final scores (failed, killed or still running): not "
                   f"averaged where their configuration has finished runs.")
    lines = [f"# Seed sweep: {', '.join(c['name'] for c in configs)}", "", header, ""] + ([note, ""] if note else [])
    lines += ["Mean ± sample std over seeds. Lin., Perm.: final (else last logged); Λ̂ error: mean relative error of "
              "the last Λ̂ to λ, both sorted (see docs/tools.md).", "",
              "| configuration | loss | Λ | seeds (finished) | steps | "
              + " | ".join(label for _, label, _ in main_scores()) + " |",
              "|---|---|---|---:|---:|" + "---|" * len(main_scores())]
    for c in configs:
        steps = f"{c['steps_min']:,}" + ("" if c["steps_min"] == c["steps_max"] else f"-{c['steps_max']:,}")
        lines.append(f"| {c['name']} | {c['loss']} | {c['lambda']} | {c['seeds']} ({c['finished']}) | {steps} | "
                     + " | ".join(pm(c[key + "_mean"], c[key + "_std"], digits) for key, _, digits in main_scores())
                     + " |")
    return lines


def run_lines(runs):
    """The summary's table of every run."""
    lines = ["", "## Runs", "", "| configuration | seed | steps | scores from | "
             + "".join(f"{label} | " for _, label, _ in main_scores()) + "log |",
             "|---|---:|---:|---|" + "---:|" * len(main_scores()) + "---|"]
    for r in runs:
        source = (r["source"] if r["finished"] else f"unfinished: {r['source']}") + (
            " (metrics file cut off)" if r["records"].truncated else "")
        lines.append(f"| {r['name']} | {r['seed']} | {r['steps']:,} | {source} | "
                     + "".join(f"{number(r[key], digits)} | " for key, _, digits in main_scores())
                     + f"{os.path.basename(r['path'])} |")
    return lines


def group_lines(configs):
    """The summary's Markdown section on each ground-truth λ group (when the metrics files have it)."""
    grouped = [c for c in configs if c["groups"] and len(c["groups"]["labels"]) <= MAX_GROUPS_SHOWN]
    if not grouped:
        return []
    lines = ["", "## R² by ground-truth λ", "",
             "R² (then every other per-latent field) averaged per group of equal ground-truth λ (content: high λ, "
             "style: low λ), Perm., each per-group field; mean ± std over seeds; end: the last logged step.", ""]
    r2 = disentanglement_utils.R2_PER_LATENT
    for c in grouped:
        labels = c["groups"]["labels"]
        for where, fields in c["groups"]["at"].items():
            parts = [f"{label} {pm(*ms, 4)}" for label, ms in zip(labels, fields.get(r2, []))]
            parts += [f"Perm. {pm(*fields['Perm.'][0], 4)}"] if "Perm." in fields else []
            parts += [f"{key}: " + ", ".join(f"{label} {pm(*ms, 4)}" for label, ms in zip(labels, values))
                      for key, values in fields.items() if key not in (r2, "Perm.")]
            lines.append(f"- {c['name']} ({c['loss']}), {where}: " + "; ".join(parts))
    return lines


def field_lines(configs):
    """The summary's table of every scalar a run recorded, at its last logged step and in its final record: a
    metric added to the records is here with no change to this code."""
    if not any(c["fields"] for c in configs):
        return []
    lines = ["", "## Every recorded score", "",
             "Each number field of the runs' last logged step record (last) and final record (final); mean ± std "
             "over the runs averaged above.", "", "| configuration | record | field | mean ± std | runs |",
             "|---|---|---|---|---:|"]
    return lines + [f"| {c['name']} | {record} | {field} | {pm(mean, std, 4)} | {count} |"
                    for c in configs for (record, field), ((mean, std), count) in c["fields"].items()]


def reference_lines(rows):
    """The summary's Markdown section for the ``--reference`` comparisons: a table of ``rows``."""
    return ["", "## Against reference logs", "",
            "At the last step logged by the reference and by every run of the configuration: our mean ± "
            "std over seeds [min, max], and the reference's value. Λ̂ error as above, at that step.", "",
            "| configuration | reference | step | seeds | "
            + " | ".join(f"{label} ours | {label} reference" for _, label, _ in [(0, "<Loss>", 0)] + main_scores())
            + " |",
            "|---|---|---:|---:|" + "---|---:|" * (1 + len(main_scores()))] + rows


def write_summary(md_path, csv_path, configs, runs, note, comparisons):
    """Write the summary's Markdown and CSV files (OSError: one cannot be written)."""
    lines = header_lines(configs, runs, note) + run_lines(runs) + group_lines(configs) + field_lines(configs)
    with logparse.open_regular(md_path, write=True) as handle:
        handle.write("\n".join(lines + (reference_lines(comparisons) if comparisons else [])) + "\n")
    # The recorded fields' columns: last.FIELD_mean, last.FIELD_std, final.FIELD_mean, ...
    extras = [{f"{record}.{field}_{stat}": value for (record, field), (ms, _) in c["fields"].items()
               for stat, value in zip(("mean", "std"), ms)} for c in configs]
    with logparse.open_regular(csv_path, write=True) as handle:
        main = CSV_FIELDS + tuple(f"{key}_{stat}" for key, _, _ in main_scores() for stat in ("mean", "std"))
        writer = csv.DictWriter(handle, fieldnames=list(main) + list(dict.fromkeys(k for e in extras for k in e)))
        writer.writeheader()
        writer.writerows({**{k: c[k] for k in main}, **extra} for c, extra in zip(configs, extras))


def summary_rows(args, found):
    """``(runs' rows, {name: its rows})`` of the runs ``found`` (a log that cannot be read is left out)."""
    runs = []
    for name, seeds in found.items():
        for seed, path in seeds:
            try:
                runs.append(summarize_run(name, seed, path, args.group_steps))
            except logparse.LogParseError as exc:  # one bad log does not sink the others
                common.warn(PROG, f"{exc}: left out of the summary")
    runs = [r for r in runs if r is not None]
    return runs, {name: [r for r in runs if r["name"] == name] for name in found}


def summarize(args):
    """Summarise the logs of ``args.names`` (or ``args.name``) in ``args.out_dir``; returns an exit status."""
    patterns = args.names or [args.name]
    try:
        runs, by_name = summary_rows(args, find_runs(args.out_dir, patterns))
    except logparse.LogParseError as exc:
        return error(exc)
    if not runs:
        return error(f"{args.out_dir}: no log with a logged step for {' '.join(patterns)}")
    comparisons = []
    for name, ref_path in args.references.items():
        if not by_name.get(name):
            return error(f"argument --reference: no run of configuration {name!r} to compare")
        try:
            comparisons.append(reference_row(name, by_name[name], ref_path))
        except logparse.LogParseError as exc:
            return error(f"argument --reference: {exc}")
    single = len(patterns) == 1 and not any(ch in patterns[0] for ch in GLOB_CHARACTERS)
    base = os.path.join(args.out_dir, args.summary_name or (f"{patterns[0]}_summary" if single else "sweep_summary"))
    inputs = [r["path"] for r in runs] + [metrics_path(r["path"]) for r in runs] + list(args.references.values())
    for path, read in ((path, read) for path in (base + ".md", base + ".csv") for read in inputs):
        if same_file(path, read):
            return error(f"argument --summary-name: the summary {path} would write over its input {read}; give "
                         f"another --summary-name")
    try:
        write_summary(base + ".md", base + ".csv", [aggregate(n, rows) for n, rows in by_name.items() if rows],
                      runs, args.note, comparisons)
    except OSError as exc:
        return error(f"cannot write the summary {exc.filename} ({exc.strerror or exc})")
    say(f"wrote {base}.md")
    say(f"wrote {base}.csv")
    return 0
