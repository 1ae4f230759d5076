"""A run's records, as the tools read them: its ``--metrics-file`` (JSON lines: a ``config`` record, a
``step`` record per logged step, a ``final`` record), checked, or the text log of a run that has none
(a published one). The tools take every field they find; what the reader refuses: docs/tools.md."""

import dataclasses
import itertools
import json
import math
import re

import numpy as np

import disentanglement_utils
from tools import logparse
import settings

RECORD_TYPES = ("config", "step", "final")
# The arguments the λ groups are made of: a config without them is not main_mlp.py's.
GROUP_ARGS = ("n", "space_type", "c_p", "gt_lambda_1", "gt_lambda_2")
# The config's arguments the tools read, and what each must be where the config has it.
ARG_KINDS = {"n": "an integer", "n_steps": "an integer", "more_unsupervised": "an integer", "space_type": "text",
             "loss": "text", "p": "a finite number", "c_p": "a finite number", "gt_lambda_1": "a finite number",
             "gt_lambda_2": "a finite number", "linearly_spaced_lambda": "true or false"}
# A record nests an object of lists (the config: of its arguments) two deep; this is far beyond, and
# is refused before the JSON decoder recurses into it.
MAX_DEPTH = 16
# A JSON string, or the rest of a line after an unclosed quote: what the bracket count skips, in one pass.
_STRING = re.compile(r'"(?:[^"\\]|\\.?)*+(?:"|\Z)', re.DOTALL)


def is_number(value):
    """A JSON number (a bool is not one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_number_list(value):
    return isinstance(value, list) and bool(value) and all(is_number(v) for v in value)


# Whether a value is of a kind of ARG_KINDS (a bool is no integer).
KIND_TESTS = {"an integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "a finite number": lambda v: is_number(v) and math.isfinite(v),
              "text": lambda v: isinstance(v, str), "true or false": lambda v: isinstance(v, bool)}


def score_fields(record_type):
    """The number fields of the scores that a record of ``record_type`` ("step" or "final") may have."""
    numbers = disentanglement_utils.fields(numbers=True)
    if record_type == "step":
        return ["loss", "mean_loss"] + [f.name for f in numbers]
    return [f"{f.name}_mean" for f in numbers] + [f"{f.name}_std" for f in numbers if f.spread]


class OutOfBounds(ValueError):
    """A JSON line that nests too deep or holds a number too large to read."""


def _integer(text):
    digits = len(text.lstrip("-"))
    if digits > logparse.MAX_INT_DIGITS:
        raise OutOfBounds(f"an integer of {digits:,} digits (at most {logparse.MAX_INT_DIGITS} are read)")
    return int(text)


def _float(text):
    value = float(text)
    if math.isinf(value):
        raise OutOfBounds(f"a number too large for a float: {logparse.quote(text)}")
    return value


def nesting(text):
    """How deep the arrays and objects of the JSON ``text`` nest, brackets inside its strings aside; MAX_DEPTH,
    uncounted, when it has no more opening brackets than that."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return MAX_DEPTH
    brackets = re.findall(r"[\[\]{}]", _STRING.sub("", text))
    return max(itertools.accumulate(1 if b in "[{" else -1 for b in brackets), default=0)


def decode(text):
    """The JSON value of ``text``; OutOfBounds when it nests deeper than MAX_DEPTH, has an integer of more
    than logparse.MAX_INT_DIGITS digits or a number beyond a float's range; ValueError when not JSON."""
    depth = nesting(text)
    if depth > MAX_DEPTH:
        raise OutOfBounds(f"arrays or objects nested {depth:,} deep (at most {MAX_DEPTH})")
    return json.loads(text, parse_int=_integer, parse_float=_float)


@dataclasses.dataclass
class Records:
    """What one run recorded. Step records are dicts with (at least) the keys of logparse's."""

    path: str
    args: dict = dataclasses.field(default_factory=dict)  # values as JSON has them (a text log's: str)
    phases: dict = dataclasses.field(default_factory=dict)  # phase name -> step records sorted by step
    final: dict = None  # the final record (a text log's: lin_mean, lin_std, perm_mean, perm_std)
    gt_lambda: list = None  # the ground-truth Λ's diagonal, or None
    n: int = None  # latents with per-dimension scores (None: no record has them)
    truncated: bool = False  # the last line had no end (a run killed mid-write): dropped

    def main_phase(self):
        """The contrastive phase when there is one (the paper's result), else the last phase."""
        return "unsupervised" if self.phases.get("unsupervised") else next(reversed(self.phases), None)

    def steps(self, phase=None):
        """The step records of ``phase`` (default: the main phase)."""
        return self.phases.get(phase or self.main_phase(), [])


class _Reader:
    """Checks each record of one file as it is read."""

    def __init__(self, path):
        self.records = Records(path=path)
        self.config_line = None
        self.seen = {}  # (phase, step) -> line

    def error(self, line_no, message):
        raise logparse.LogParseError(self.records.path, line_no, message)

    def feed(self, line_no, text):
        if not text.strip():
            return
        try:
            record = decode(text)
        except OutOfBounds as exc:
            self.error(line_no, str(exc))
        except ValueError:
            self.error(line_no, "not a JSON record")
        if not isinstance(record, dict):
            self.error(line_no, f"a record that is not a JSON object: {logparse.quote(text)}")
        kind = record.get("type")
        if kind not in RECORD_TYPES:
            self.error(line_no, f"a record of no known type ({kind!r}; known: {', '.join(RECORD_TYPES)})")
        if kind == "config":
            args = record.get("args")
            if not isinstance(args, dict) or any(key not in args for key in GROUP_ARGS):
                self.error(line_no, f"its config record lacks main_mlp.py's arguments ({', '.join(GROUP_ARGS)})")
            for key, kind in ARG_KINDS.items():
                if key in args and not KIND_TESTS[kind](args[key]):
                    self.error(line_no, f"its config's {key} is not {kind}: {logparse.quote(json.dumps(args[key]))}")
            self.records.args, self.config_line = args, line_no  # a resumed run writes it again: the last holds
            return
        if self.config_line is None:
            self.error(line_no, f"a {kind} record before the config record")
        if kind == "final":
            self.check_scores(line_no, record)
            self.records.final = record
            return
        step, phase = record.get("step"), record.get("phase")
        if not (KIND_TESTS["an integer"](step) and isinstance(phase, str)):
            self.error(line_no, "a step record without an integer step and a phase")
        if (phase, step) in self.seen:
            self.error(line_no, f"step {step} of the {phase} phase again (first at line {self.seen[phase, step]})")
        self.seen[phase, step] = line_no
        self.check_scores(line_no, record)
        self.records.phases.setdefault(phase, []).append(record)

    def check_scores(self, line_no, record):
        """The scores (disentanglement_utils.METRICS) are numbers; per latent, n of them in every record,
        finite R²."""
        for key in score_fields(record["type"]):
            if key in record and not is_number(record[key]):
                self.error(line_no, f"{key} is not a number: {logparse.quote(json.dumps(record[key]))}")
        lam = record.get("lambda", [])  # the learned Λ̂: any length (the run's n, or Λ̂'s own)
        if not (isinstance(lam, list) and all(is_number(v) for v in lam)):
            self.error(line_no, "lambda is not a list of numbers")
        per_latent = [f.name for f in disentanglement_utils.fields(numbers=False) if f.per == "latent"]
        for key in (key for key in per_latent if key in record):
            values = record[key]
            if not is_number_list(values):
                self.error(line_no, f"{key} is not a list of numbers")
            if self.records.n is None:
                self.records.n = len(values)
            if len(values) != self.records.n:
                self.error(line_no, f"{key} has {len(values)} values, earlier records {self.records.n}")
            if key == disentanglement_utils.R2_PER_LATENT and not all(math.isfinite(v) for v in values):
                self.error(line_no, f"{key} has a value that is not a finite number: "
                                    f"{logparse.quote(json.dumps(values))}")

    def finish(self):
        records = self.records
        if self.config_line is None:
            self.error(None, "no config record: not a metrics file of main_mlp.py")
        claimed = records.args["n"]
        if records.n is not None and not (is_number(claimed) and claimed == records.n):
            self.error(self.config_line, f"its config says n = {claimed!r}, its records hold {records.n} "
                                         f"per-dimension scores")
        for phase in records.phases.values():
            phase.sort(key=lambda r: r["step"])
        n = records.n
        if n is None:  # no per-dimension scores: the length of a learned Λ̂, if one was logged
            n = next((len(r["lambda"]) for s in records.phases.values() for r in s
                      if isinstance(r.get("lambda"), list)), None)
        records.gt_lambda = ground_truth_lambda(records.args, n) if n else None
        return records


def read(path):
    """The records of the metrics file at ``path``, checked (LogParseError: unreadable, or breaks a rule)."""
    reader = _Reader(path)
    reader.records.truncated = logparse.read_lines(path, reader)
    return reader.finish()


def from_log(log):
    """The records of a parsed text log (logparse.ParsedLog): no per-dimension scores, args as str."""
    main = log.main_phase()
    final = dict(main.final, type="final") if main is not None and main.has_final() else None
    return Records(path=log.path, args=log.args, phases={phase.name: phase.steps for phase in log.phases},
                   final=final, gt_lambda=log.gt_lambda, truncated=log.truncated)


def read_any(path, phase):
    """A metrics file (``.jsonl``) or a text log, as :class:`Records` with a step record in ``phase``
    (LogParseError: the file breaks a rule of its format, or has none)."""
    if not str(path).endswith(".jsonl"):
        log = logparse.parse_log(path)
        logparse.require_steps(log, phase)
        return from_log(log)
    records = read(path)
    if not records.steps(phase):
        raise logparse.LogParseError(path, None, f"no {phase} step record")
    return records


def ground_truth_lambda(args, n):
    """The ground-truth Λ's diagonal of a run of ``n`` latents (latent_spaces.ground_truth_lambda's
    values), or None when the run has none (not the anisotropic experiment)."""
    try:
        if not settings.derive(args.get("space_type", "box"), args.get("p", 2), args.get("c_p", 2)).anisotropic:
            return None
        low, high = float(args["gt_lambda_1"]), float(args["gt_lambda_2"])
    except (KeyError, TypeError, ValueError):
        return None
    if args.get("linearly_spaced_lambda") in (True, "True"):
        return np.linspace(low, high, n).tolist()
    return [high] * (n // 2) + [low] * (n - n // 2)  # bimodal: the first floor(n/2) have --gt-lambda-2


def lambda_groups(gt_lambda, n):
    """The latents grouped by their ground-truth λ, ``[(label, [dims])]``: bimodal, the high-λ "content"
    latents (they change little across a positive pair), then the low-λ "style" ones; linearly spaced,
    one group per value, by increasing λ; otherwise one group of all ``n``."""
    values = sorted(set(gt_lambda)) if gt_lambda is not None else []
    if len(values) < 2:
        return [("all dimensions", list(range(n)))]
    dims = {value: [i for i, v in enumerate(gt_lambda) if v == value] for value in values}
    if len(values) == 2:
        style, content = values
        return [(f"content (λ = {content:g})", dims[content]), (f"style (λ = {style:g})", dims[style])]
    return [(f"λ = {value:.1f}", dims[value]) for value in values]


def per_group(values, groups):
    """A list field of a record per λ group: per latent (n values), the mean over each group's latents;
    per group (as ``block_linear_groups``), in the run's order of groups (by their first latent); else None."""
    if len(values) == sum(len(dims) for _, dims in groups):
        return [float(np.mean([values[d] for d in dims])) for _, dims in groups]
    if len(values) == len(groups):
        order = sorted(range(len(groups)), key=lambda g: min(groups[g][1]))
        return [float(values[order.index(g)]) for g in range(len(groups))]
    return None


def read_per_dimension(paths, phase):
    """The metrics files at ``paths`` as ``[(records, λ groups)]``; LogParseError when one breaks a rule,
    has no per-dimension scores in ``phase``, or has other latents than the first (n or ground-truth λ)."""
    runs = []
    for path in paths:
        records = read(path)
        if not any(disentanglement_utils.R2_PER_LATENT in r for r in records.steps(phase)):
            raise logparse.LogParseError(path, None, f"no {phase} step with per-dimension scores")
        groups = lambda_groups(records.gt_lambda, records.n)
        if runs and groups != runs[0][1]:
            # the latents of each run, as its λ groups say: n 10 (content (λ = 25), style (λ = 5))
            a, b = (f"n {sum(len(dims) for _, dims in g)} ({', '.join(label for label, _ in g)})"
                    for g in (groups, runs[0][1]))
            raise logparse.LogParseError(path, None, f"its latents are not those of {paths[0]}: {a} against {b}")
        runs.append((records, groups))
    return runs


def match_sorted(learned, truth):
    """(sorted Λ̂, sorted λ, relative error |Λ̂ - λ| / λ per entry), numpy arrays; ValueError when their
    lengths differ. The encoder's outputs are the latents up to a permutation that no record keeps; for
    the one-dimensional cost |Λ̂_i - λ_j| the best matching pairs the sorted values."""
    learned = np.sort(np.asarray(learned, dtype=float))
    truth = np.sort(np.asarray(truth, dtype=float))
    if learned.shape != truth.shape:
        raise ValueError(f"Λ̂ has {learned.size} entries, the ground truth {truth.size}")
    with np.errstate(all="ignore"):  # a λ of 0 (or an infinite Λ̂): inf or nan, no warning
        return learned, truth, np.abs(learned - truth) / np.abs(truth)


def lambda_error(learned, truth):
    """Mean relative error of sorted Λ̂ against sorted λ (see :func:`match_sorted`); None when either
    is missing or their lengths differ."""
    if learned is None or truth is None or len(learned) != len(truth):
        return None
    return float(np.mean(match_sorted(learned, truth)[2]))
