"""Read a training log in the reference format (ours or the authors' published ones).

The format is docs/log-format.md ("The log, line by line"): an ``Arguments:`` block, the
initial θ and the ground-truth Λ as torch tensor reprs (which may wrap over
several lines), the condition numbers of the mixing, the identity scores, then
per phase (``supervised test: True|False``) the encoder repr, the logged steps
(a ``Step:`` line, followed in the contrastive phase by a ``learned lambda
values:`` line) and the final ``linear mean`` / ``perm mean`` lines.

Rules, so that two readers of a log agree on what it says:

- A line that starts like one of those line types must parse completely, or
  :class:`LogParseError` names the file and the line.
- A line of no known type (a progress line captured with ``2>&1``, a blank
  line) is skipped; its number is kept in ``ParsedLog.skipped``.
- A log cut off mid-write (a run killed, a partial copy) parses up to its last
  complete line: a last line without its newline is dropped, as is a tensor
  or encoder repr still open at the end of the file; ``ParsedLog.truncated``
  says so.
- A step logged twice in a phase keeps its last record; a phase header seen
  twice (stdout of a run and of its ``--resume-training`` appended to one
  file) continues the same phase.

Step records are dicts with the keys of the run's metrics file: ``step``,
``loss``, ``mean_loss``, ``lin``, ``perm`` and ``lambda`` (a list of floats,
or None when no ``learned lambda values`` line followed the step).
"""

import dataclasses
import io
import re

# A number as Python or torch prints it: 7.6004, 25., 1.0000e+01, nan, -inf.
_NUM = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf)"

_STEP = re.compile(
    rf"^Step: (\d+)\s+Loss: ({_NUM})\s+<Loss>: ({_NUM})\s+"
    rf"Lin\. Disentanglement: ({_NUM})\s+Perm\. Disentanglement: ({_NUM})$")
_LAMBDA = re.compile(r"^learned lambda values: \[(.*)\]$")
_FINAL = re.compile(rf"^(linear|perm) mean: ({_NUM}) std: ({_NUM})$")
_SUPERVISED = re.compile(r"^supervised test: (True|False)$")
_ID_SCORE = re.compile(rf"^Id\. (Lin|Perm)\. Disentanglement: ({_NUM})$")
_THRESHOLD = re.compile(rf"^condition number threshold: ({_NUM})$")
_LAYER = re.compile(rf"^layer (\d+)/(\d+),\s+condition number: ({_NUM})$")
_ARGUMENT = re.compile(r"^\t([^\s:]+):(?: (.*))?$")
_RADIUS = re.compile(rf"^tensor\(\[({_NUM})\], requires_grad=True\)$")
# The list inside a 1-d tensor repr, then keyword arguments such as
# device='cuda:0' or dtype=torch.float64.
_TENSOR = re.compile(r"^tensor\(\[([^\[\]]*)\]((?:\s*,\s*\w+=[^,()]+)*)\s*\)$")
# The line types whose repr may wrap over several lines: prefix -> kind (the
# phase's encoder, or the ParsedLog field of a tensor).
_REPR_KINDS = {"f:": "encoder", "lambda init:": "lambda_init", "ground truth Lambda:": "gt_lambda"}


class LogParseError(ValueError):
    """A log that cannot be read: ``str()`` is ``FILE:LINE: message``."""

    def __init__(self, path, line, message):
        self.path, self.line, self.message = path, line, message
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")


@dataclasses.dataclass
class Phase:
    """One training run of the log: supervised (MSE) or unsupervised (contrastive)."""

    supervised: bool
    line: int  # where its ``supervised test:`` line is
    steps: list = dataclasses.field(default_factory=list)  # step records, sorted by step
    final: dict = dataclasses.field(default_factory=dict)  # lin_mean, lin_std, perm_mean, perm_std
    encoder: str = None  # the ``f:`` module repr

    @property
    def name(self):
        return "supervised" if self.supervised else "unsupervised"

    def has_final(self):
        """True when both final lines (``linear mean``, ``perm mean``) were logged."""
        return "lin_mean" in self.final and "perm_mean" in self.final

    def last_lambda(self):
        """The last logged Λ̂ as ``(step, list)``, or None when the phase logged none."""
        for record in reversed(self.steps):
            if record["lambda"] is not None:
                return record["step"], record["lambda"]
        return None

    def by_step(self):
        """``{step: record}``."""
        return {record["step"]: record for record in self.steps}


@dataclasses.dataclass
class ParsedLog:
    """Everything a log says. Fields are None (or empty) when the log lacks the line."""

    path: str
    args: dict = dataclasses.field(default_factory=dict)  # name -> value as printed (str)
    lambda_init: list = None
    gt_lambda: list = None
    cond_threshold: float = None
    cond_numbers: list = dataclasses.field(default_factory=list)  # per mixing layer
    id_lin: float = None
    id_perm: float = None
    phases: list = dataclasses.field(default_factory=list)
    truncated: bool = False
    n_lines: int = 0  # complete lines read
    skipped: list = dataclasses.field(default_factory=list)  # line numbers of unknown lines

    def phase(self, name):
        """The phase called ``name`` ('supervised' or 'unsupervised'), or None."""
        for phase in self.phases:
            if phase.name == name:
                return phase
        return None

    def main_phase(self):
        """The contrastive phase when the log has one (the paper's result), else the last phase."""
        return self.phase("unsupervised") or (self.phases[-1] if self.phases else None)


def quote(text, limit=80):
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _float(text):
    return float(text)  # the regexes only let through what float() reads


def _tensor_values(path, line_no, text):
    """The floats of a 1-d tensor repr such as ``tensor([25., 5.], device='cuda:0')``."""
    match = _TENSOR.match(text)
    if match is None or "..." in match.group(1):
        raise LogParseError(path, line_no, f"not a 1-d tensor repr: {quote(text)}")
    return _number_list(path, line_no, match.group(1), text)


def _number_list(path, line_no, inner, text):
    items = [item.strip() for item in inner.split(",")]
    if not items or any(re.fullmatch(_NUM, item) is None for item in items):
        raise LogParseError(path, line_no, f"not a list of numbers: {quote(text)}")
    return [_float(item) for item in items]


@dataclasses.dataclass
class _Repr:
    """A module or tensor repr, which may wrap over several lines: read until its parentheses balance."""

    kind: str  # a value of _REPR_KINDS
    start: int  # the line number of its first line
    lines: list = dataclasses.field(default_factory=list)
    depth: int = 0  # parentheses opened and not yet closed

    def add(self, text):
        """Add a line; returns True once the repr is closed."""
        self.lines.append(text)
        self.depth += text.count("(") - text.count(")")
        return self.depth <= 0

    def text(self):
        """The repr, after its line type's prefix ("f:", "lambda init:", ...), which ends at the first ':'."""
        return "\n".join(self.lines).partition(":")[2]


class _Parser:
    """A line-by-line reader; one instance per file.

    Outside the ``Arguments:`` block and any open multi-line repr, a line is
    read by the first entry of ``LINE_TYPES`` (below the handlers) whose
    start it has; a line of no type is skipped.
    """

    def __init__(self, path):
        self.log = ParsedLog(path=path)
        self.path = path
        self.in_arguments = False
        self.current = None  # the Phase being read
        self.steps = None  # {step: record} of the current phase
        self.last_record = None  # the Step record a ``learned lambda values`` line belongs to
        self.block = None  # the _Repr being read, while it is open
        self.radius_next = False  # the line after ``r: Parameter containing:``

    def error(self, line_no, message):
        raise LogParseError(self.path, line_no, message)

    def expect(self, pattern, line_no, text, what):
        """``pattern``'s match of ``text``, a line that starts like a ``what`` line: it must parse."""
        match = pattern.match(text)
        if match is None:
            self.error(line_no, f"malformed {what} line: {quote(text)}")
        return match

    def phase_for(self, line_no, what):
        """The phase a ``what`` at ``line_no`` belongs to: there must be one."""
        if self.current is None:
            self.error(line_no, f"{what} before any 'supervised test:' line")
        return self.current

    # -- one line -------------------------------------------------------------

    def feed(self, line_no, text):
        """Read line ``line_no`` (1-based), without its newline."""
        if self.block is not None:
            self.continue_block(line_no, text)
        elif self.radius_next:
            self.radius(line_no, text)
        elif self.in_arguments and text.startswith("\t"):
            match = self.expect(_ARGUMENT, line_no, text, "argument")
            self.log.args[match.group(1)] = match.group(2) if match.group(2) is not None else ""
        else:
            self.in_arguments = False
            stripped = text.rstrip()
            for start, pattern, what, handler in self.LINE_TYPES:
                match = start.match(stripped)
                if match is not None:
                    if pattern is not None:
                        match = self.expect(pattern, line_no, stripped, what)
                    handler(self, line_no, stripped, match)
                    return
            self.log.skipped.append(line_no)

    def radius(self, line_no, text):
        """The line after ``r: Parameter containing:`` (--sphere-norm): the radius, after a Step line."""
        self.radius_next = False
        if not text.startswith("tensor("):
            self.error(line_no, "the radius tensor does not follow 'r: Parameter containing:'")
        text = text.rstrip()
        match = _RADIUS.match(text)
        if match is None or self.last_record is None:
            self.error(line_no, f"malformed radius line: {quote(text)}")
        self.last_record["r"] = _float(match.group(1))

    # -- multi-line reprs ---------------------------------------------------

    def continue_block(self, line_no, text):
        block = self.block
        # After the first line, the lines of a tensor or module repr are indented,
        # or are the closing ')' of the module; anything else means the repr was cut.
        if block.lines and not (text[:1].isspace() or text.startswith(")")):
            self.error(block.start, f"{block.kind} repr not closed before line {line_no}")
        if block.add(text):
            self.block = None
            self.close_block(block)

    def close_block(self, block):
        if block.kind == "encoder":
            self.phase_for(block.start, "'f:' line").encoder = block.text().strip()
        else:  # a wrapped tensor: the continuation lines are indentation + numbers
            text = " ".join(part.strip() for part in block.text().split("\n")).strip()
            setattr(self.log, block.kind, _tensor_values(self.path, block.start, text))

    # -- the line types: handler(line_no, line, match), the match of the type's
    # full pattern, or of its start where it has none

    def arguments_header(self, line_no, text, match):
        self.in_arguments = True

    def step(self, line_no, text, match):
        self.phase_for(line_no, "Step line")
        record = {"step": int(match.group(1)), "loss": _float(match.group(2)),
                  "mean_loss": _float(match.group(3)), "lin": _float(match.group(4)),
                  "perm": _float(match.group(5)), "lambda": None, "r": None}
        self.steps[record["step"]] = record  # a repeated step keeps its last record
        self.last_record = record

    def learned_lambda(self, line_no, text, match):
        if self.last_record is None or self.last_record["lambda"] is not None:
            self.error(line_no, "learned lambda values line without a Step line before it")
        self.last_record["lambda"] = _number_list(self.path, line_no, match.group(1), text)

    def final(self, line_no, text, match):
        phase = self.phase_for(line_no, "final score line")
        key = "lin" if match.group(1) == "linear" else "perm"
        phase.final[f"{key}_mean"] = _float(match.group(2))
        phase.final[f"{key}_std"] = _float(match.group(3))
        self.last_record = None

    def phase_header(self, line_no, text, match):
        self.finish_phase()
        name = "supervised" if match.group(1) == "True" else "unsupervised"
        existing = self.log.phase(name)
        if existing is not None:  # the same run continued (resumed): one phase
            self.current = existing
        else:
            self.current = Phase(supervised=name == "supervised", line=line_no)
            self.log.phases.append(self.current)
        self.steps = {record["step"]: record for record in self.current.steps}
        self.last_record = None

    def repr_start(self, line_no, text, match):
        self.block = _Repr(_REPR_KINDS[match.group()], line_no)
        self.continue_block(line_no, text)  # the first line, which may close it too

    def radius_header(self, line_no, text, match):
        self.radius_next = True  # --sphere-norm: the radius tensor follows

    def id_score(self, line_no, text, match):
        setattr(self.log, "id_lin" if match.group(1) == "Lin" else "id_perm", _float(match.group(2)))

    def threshold(self, line_no, text, match):
        self.log.cond_threshold = _float(match.group(1))
        self.log.cond_numbers = []  # a repeated header (resumed run) restarts the list

    def layer(self, line_no, text, match):
        self.log.cond_numbers.append(_float(match.group(3)))

    # (what a line of the type starts with, its full pattern or None, its name
    # in errors, its handler), tried in this order. A line that starts like a
    # type must match its full pattern: see the module docstring.
    LINE_TYPES = (
        (re.compile(r"Arguments:\Z"), None, None, arguments_header),
        (re.compile(r"Step:"), _STEP, "Step", step),
        (re.compile(r"learned lambda values:"), _LAMBDA, "learned lambda values", learned_lambda),
        (re.compile(r"linear mean:|perm mean:"), _FINAL, "final score", final),
        (re.compile(r"supervised test:"), _SUPERVISED, "supervised test", phase_header),
        (re.compile("|".join(map(re.escape, _REPR_KINDS))), None, None, repr_start),
        (re.compile(r"r: Parameter containing:\Z"), None, None, radius_header),
        (re.compile(r"Id\. "), _ID_SCORE, "identity score", id_score),
        (re.compile(r"condition number threshold:"), _THRESHOLD, "condition number threshold", threshold),
        (re.compile(r"layer .*condition number", re.DOTALL), _LAYER, "layer condition number", layer),
    )

    def finish_phase(self):
        if self.current is not None:
            self.current.steps = [self.steps[k] for k in sorted(self.steps)]

    def finish(self):
        """The ParsedLog, once every line is read."""
        if self.block is not None:  # a repr still open at the end: the log was cut there
            self.log.truncated = True
            self.block = None
        self.finish_phase()
        return self.log


# A log of a full-length run logged at every step is ~100 MB; anything far beyond, or a
# "line" of megabytes (/dev/zero, a binary file), is not a log: refuse it rather than read it all.
MAX_LOG_BYTES = 1 << 30
MAX_LINE_BYTES = 1 << 20


def _parse_lines(path, lines):
    """Feed ``lines`` (str, each with its newline) to a :class:`_Parser`; returns its ParsedLog.

    A line without its newline (the last one, whose writer was stopped
    mid-line) is dropped and marks the log truncated.
    """
    parser = _Parser(path)
    for line_no, line in enumerate(lines, start=1):
        if not line.endswith("\n"):
            parser.log.truncated = True
            break
        parser.feed(line_no, line[:-1].rstrip("\r"))
        parser.log.n_lines = line_no
    return parser.finish()


def parse_text(text, path="<log>"):
    """Parse the text of a log; ``path`` only names it in errors. Returns a :class:`ParsedLog`."""
    return _parse_lines(path, io.StringIO(text, newline="\n"))  # lines end at "\n" only, as in a file


def text_lines(path, handle):
    """The lines of the binary file ``handle`` as str, each checked to be a line of a text file of a
    run (its log or its metrics file); a last line without its newline is yielded as it is."""
    line_no = total = 0
    while raw := handle.readline(MAX_LINE_BYTES + 1):
        line_no += 1
        total += len(raw)
        if len(raw) > MAX_LINE_BYTES:
            raise LogParseError(path, line_no,
                                f"a line longer than {MAX_LINE_BYTES >> 20} MiB: not a log or metrics file")
        if total > MAX_LOG_BYTES:
            raise LogParseError(path, line_no, f"larger than {MAX_LOG_BYTES >> 30} GiB: not a log or metrics file")
        if not raw.endswith(b"\n"):  # cut mid-line, maybe mid-character: the reader drops it
            yield raw.decode("utf-8", errors="replace")
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise LogParseError(path, line_no, "not UTF-8 text") from None
        yield text


def unreadable(path, exc):
    """The LogParseError for a file that cannot be read: ``exc`` is the OSError (or UnicodeDecodeError)."""
    return LogParseError(path, None, f"cannot read the file ({getattr(exc, 'strerror', None) or exc})")


def parse_log(path):
    """Parse the log file at ``path``, line by line.

    Returns:
        A :class:`ParsedLog`.
    Raises:
        LogParseError: the file is missing or unreadable, is not UTF-8 text, is
            larger than MAX_LOG_BYTES or has a line longer than MAX_LINE_BYTES,
            or has a line that starts like a known line type but does not parse.
    """
    try:
        with open(path, "rb") as handle:
            return _parse_lines(path, text_lines(path, handle))
    except OSError as exc:
        raise unreadable(path, exc) from None


def require_steps(log, phase_name):
    """The phase ``phase_name`` of ``log``, with at least one Step line.

    Raises:
        LogParseError: the log has no such phase, or it logged no step.
    """
    phase = log.phase(phase_name)
    if phase is None and log.n_lines > 0 and len(log.skipped) == log.n_lines:
        # Not one line of the format: say where reading found none, line 1.
        raise LogParseError(log.path, 1, f"not a log in the reference format (none of its {log.n_lines} "
                                         f"lines is a line type of it)")
    if phase is None:
        raise LogParseError(log.path, None, f"no {phase_name} phase "
                            f"('supervised test: {phase_name == 'supervised'}' line) in the log")
    if not phase.steps:
        raise LogParseError(log.path, None, f"the {phase_name} phase (line {phase.line}) has no Step line")
    return phase
