"""Read a training log in the reference format (ours or the authors' published ones; its lines and the rules
that make two readers agree: docs/log-format.md). Step records are dicts with the keys of the run's metrics file:
``step``, ``loss``, ``mean_loss``, ``lin``, ``perm``, ``r`` and ``lambda`` (a list of floats, or None when no
``learned lambda values`` line followed the step)."""

import dataclasses
import errno
import os
import re
import stat

# A number as Python or torch prints it: 7.6004, 25., 1.0000e+01, nan, -inf.
_NUM = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf)"
# The line types (docs/log-format.md), tried in this order: (kind, its line's start, its whole shape or None,
# its name in errors). In a shape, %(...)s are the separators and number formats: loose for any log,
# strict for exactly what main_mlp.py prints (what the tests hold our logs to).
LINE_TYPES = (
    ("arguments", r"Arguments:$", None, None),
    ("step", "Step:", r"Step: (\d+)%(tab)sLoss: (%(n4)s)%(tab)s<Loss>: (%(n4)s)%(tab)s"
                      r"Lin\. Disentanglement: (%(n4)s)%(tab)sPerm\. Disentanglement: (%(n4)s)", "Step"),
    ("learned_lambda", "learned lambda values:", r"learned lambda values: \[(.*)\]%(end)s", "learned lambda values"),
    ("final", "linear mean:|perm mean:", r"(linear|perm) mean: (%(float)s) std: (%(float)s)", "final score"),
    ("phase_header", "supervised test:", "supervised test: (True|False)", "supervised test"),
    ("repr_start", "f:|lambda init:|ground truth Lambda:", None, None),
    ("radius_header", "r: Parameter containing:$", None, None),
    ("id_score", r"Id\. ", r"Id\. (Lin|Perm)\. Disentanglement: (%(n4)s)", "identity score"),
    ("threshold", "condition number threshold:", r"condition number threshold: (%(n6)s)",
     "condition number threshold"),
    ("layer", "layer .*condition number", r"layer (\d+)/(\d+),%(gap)scondition number: (%(float)s)",
     "layer condition number"),
)
# A line of the encoder's repr: read inside its 'f:' block, so not a line type, but it has a shape.
_MODULE = ("module", r"  \(\d+\): ", r"  \(\d+\): \w+\(.*\)", None)
_LOOSE = {"tab": r"\s+", "end": "", "gap": r"\s+", "n4": _NUM, "n6": _NUM, "float": _NUM}
_STRICT = {"tab": r" \t ", "end": r" \t", "gap": "  ", "n4": r"-?\d+\.\d{4}", "n6": r"\d+\.\d{6}",
           "float": r"-?\d+(?:\.\d*)?(?:e[-+]?\d+)?"}
STARTS = {kind: re.compile(start) for kind, start, _, _ in (*LINE_TYPES, _MODULE)}


def shapes(strict=False):
    numbers = _STRICT if strict else _LOOSE
    return {kind: re.compile(f"^{shape % numbers}$") for kind, _, shape, _ in (*LINE_TYPES, _MODULE) if shape}


_SHAPES = shapes()
_ARGUMENT = re.compile(r"^\t([^\s:]+):(?: (.*))?$")
_RADIUS = re.compile(rf"^tensor\(\[({_NUM})\], requires_grad=True\)$")
# The list inside a 1-d tensor repr, then keyword arguments such as device='cuda:0' or dtype=torch.float64.
_TENSOR = re.compile(r"^tensor\(\[([^\[\]]*)\]((?:\s*,\s*\w+=[^,()]+)*)\s*\)$")
# The lines whose repr may wrap: prefix -> the phase's encoder, or the ParsedLog field of a tensor.
_REPR_KINDS = {"f:": "encoder", "lambda init:": "lambda_init", "ground truth Lambda:": "gt_lambda"}

# The most digits of an integer a reader converts (a step, a count): int() of thousands is slow, or refused.
MAX_INT_DIGITS = 20
# What a file that is not a regular file is, for the error that refuses it.
_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class NotRegularFile(OSError):
    """A path that names a FIFO, a device, a socket or a directory: not a file to read."""

    def __init__(self, path, mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "of an unknown kind")
        super().__init__(errno.EINVAL, f"not a regular file ({kind})", path)


def open_regular(path, write=False):
    """``path`` opened (to read: binary; ``write``: text, created or emptied) when it is a regular file or a link to
    one (or, to write, none); else OSError, NotRegularFile for a FIFO, device or directory. Opened with O_NONBLOCK,
    then checked, so a FIFO that no one opens at its other end is refused at once instead of blocking the open."""
    fd = os.open(path, (os.O_WRONLY | os.O_CREAT if write else os.O_RDONLY) | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, mode)
        if write:
            os.ftruncate(fd, 0)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "w", encoding="utf-8", newline="") if write else os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class LogParseError(ValueError):
    """A log that cannot be read: ``str()`` is ``FILE:LINE: message``."""

    def __init__(self, path, line, message):
        self.path, self.line, self.message = path, line, message
        super().__init__(f"{path}:{line}: {message}" if line is not None else f"{path}: {message}")


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

    def has_final(self):  # both final lines, ``linear mean`` and ``perm mean``
        return "lin_mean" in self.final and "perm_mean" in self.final

    def last_lambda(self):
        """The last logged Λ̂ as ``(step, list)``, or None when the phase logged none."""
        return next(((r["step"], r["lambda"]) for r in reversed(self.steps) if r["lambda"] is not None), None)

    def by_step(self):
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
        return next((phase for phase in self.phases if phase.name == name), None)

    def main_phase(self):
        """The contrastive phase when the log has one (the paper's result), else the last phase."""
        return self.phase("unsupervised") or (self.phases[-1] if self.phases else None)


def quote(text, limit=80):
    return repr(text if len(text) <= limit else text[:limit] + "...")


class _Parser:
    """A line-by-line reader; one instance per file."""
    def __init__(self, path):
        self.log = ParsedLog(path=path)
        self.in_arguments = False
        self.current = None  # the Phase being read
        self.steps = None  # {step: record} of the current phase
        self.last_record = None  # the Step record a ``learned lambda values`` line belongs to
        # A module or tensor repr being read, which may wrap over several lines until its parentheses
        # balance: (a value of _REPR_KINDS, its first line's number, its lines so far).
        self.block = None
        self.radius_next = False  # the line after ``r: Parameter containing:``

    def error(self, line_no, message):
        raise LogParseError(self.log.path, line_no, message)

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

    def feed(self, line_no, line):
        """Read line ``line_no`` (1-based), with its newline."""
        text = line[:-1].rstrip("\r")
        self.log.n_lines = line_no
        if self.block is not None:
            self.continue_block(line_no, text)
        elif self.radius_next:
            self.radius(line_no, text.rstrip())
        elif self.in_arguments and text.startswith("\t"):
            match = self.expect(_ARGUMENT, line_no, text, "argument")
            self.log.args[match.group(1)] = match.group(2) or ""
        else:
            self.in_arguments = False
            self.line_type(line_no, text.rstrip())

    def line_type(self, line_no, text):
        """Read a line with the handler (the method named by its kind) of the first of LINE_TYPES whose
        start it has; a line of none is skipped."""
        for kind, _, _, what in LINE_TYPES:
            match = STARTS[kind].match(text)
            if match is not None:
                if kind in _SHAPES:
                    match = self.expect(_SHAPES[kind], line_no, text, what)
                getattr(self, kind)(line_no, text, match)
                return
        self.log.skipped.append(line_no)

    def numbers(self, line_no, inner, text):
        """The floats of ``inner``, the comma-separated list inside the brackets of line ``text``."""
        items = [item.strip() for item in inner.split(",")]
        if any(re.fullmatch(_NUM, item) is None for item in items):
            self.error(line_no, f"not a list of numbers: {quote(text)}")
        return [float(item) for item in items]

    def radius(self, line_no, text):
        """The line after ``r: Parameter containing:`` (--sphere-norm): the radius, after a Step line."""
        self.radius_next = False
        if not text.startswith("tensor("):
            self.error(line_no, "the radius tensor does not follow 'r: Parameter containing:'")
        match = _RADIUS.match(text)
        if match is None or self.last_record is None:
            self.error(line_no, f"malformed radius line: {quote(text)}")
        self.last_record["r"] = float(match.group(1))

    def continue_block(self, line_no, text):
        kind, start, lines = self.block
        # After the first line, the lines of a tensor or module repr are indented,
        # or are the closing ')' of the module; anything else means the repr was cut.
        if lines and not (text[:1].isspace() or text.startswith(")")):
            self.error(start, f"{kind} repr not closed before line {line_no}")
        lines.append(text)
        body = "\n".join(lines)
        if body.count("(") > body.count(")"):
            return
        self.block = None
        body = body.partition(":")[2]  # after the prefix ("f:", "lambda init:", ...)
        if kind == "encoder":
            self.phase_for(start, "'f:' line").encoder = body.strip()
            return
        # A tensor such as tensor([25., 5.], device='cuda:0'): its continuation lines are indentation + numbers.
        text = " ".join(part.strip() for part in body.split("\n")).strip()
        match = _TENSOR.match(text)
        if match is None or "..." in match.group(1):
            self.error(start, f"not a 1-d tensor repr: {quote(text)}")
        setattr(self.log, kind, self.numbers(start, match.group(1), text))

    # -- the handlers of LINE_TYPES: (line_no, line, the match of its shape, or of its start)

    def arguments(self, line_no, text, match):  # the flags follow, a tab before each
        self.in_arguments = True

    def step(self, line_no, text, match):
        self.phase_for(line_no, "Step line")
        if len(match.group(1)) > MAX_INT_DIGITS:
            self.error(line_no, f"a step number of {len(match.group(1)):,} digits (at most {MAX_INT_DIGITS} are "
                                f"read): {quote(text)}")
        record = {"step": int(match.group(1)), "loss": float(match.group(2)), "mean_loss": float(match.group(3)),
                  "lin": float(match.group(4)), "perm": float(match.group(5)), "lambda": None, "r": None}
        self.steps[record["step"]] = record  # a repeated step keeps its last record
        self.last_record = record

    def learned_lambda(self, line_no, text, match):
        if self.last_record is None or self.last_record["lambda"] is not None:
            self.error(line_no, "learned lambda values line without a Step line before it")
        self.last_record["lambda"] = self.numbers(line_no, match.group(1), text)

    def final(self, line_no, text, match):
        phase = self.phase_for(line_no, "final score line")
        key = "lin" if match.group(1) == "linear" else "perm"
        phase.final[f"{key}_mean"] = float(match.group(2))
        phase.final[f"{key}_std"] = float(match.group(3))
        self.last_record = None

    def phase_header(self, line_no, text, match):
        self.finish_phase()
        supervised = match.group(1) == "True"
        self.current = self.log.phase("supervised" if supervised else "unsupervised")
        if self.current is None:  # else the same run continued (resumed): one phase
            self.current = Phase(supervised=supervised, line=line_no)
            self.log.phases.append(self.current)
        self.steps = self.current.by_step()
        self.last_record = None

    def repr_start(self, line_no, text, match):
        self.block = (_REPR_KINDS[match.group()], line_no, [])
        self.continue_block(line_no, text)  # the first line, which may close it too

    def radius_header(self, line_no, text, match):
        self.radius_next = True  # --sphere-norm: the radius tensor follows

    def id_score(self, line_no, text, match):
        setattr(self.log, "id_lin" if match.group(1) == "Lin" else "id_perm", float(match.group(2)))

    def threshold(self, line_no, text, match):
        self.log.cond_threshold = float(match.group(1))
        self.log.cond_numbers = []  # a repeated header (resumed run) restarts the list

    def layer(self, line_no, text, match):
        self.log.cond_numbers.append(float(match.group(3)))

    def finish_phase(self):
        if self.current is not None:
            self.current.steps = [self.steps[k] for k in sorted(self.steps)]

    def done(self, truncated):
        """The ParsedLog read; ``truncated``: the last line was cut (or a repr is still open: cut there)."""
        self.log.truncated = truncated or self.block is not None
        self.finish_phase()
        return self.log


# A log of a full-length run logged at every step is ~100 MB; anything far beyond, or a
# "line" of megabytes (/dev/zero, a binary file), is not a log: refuse it rather than read it all.
MAX_LOG_BYTES = 1 << 30
MAX_LINE_BYTES = 1 << 20


def parse_text(text, path="<log>"):
    """Parse the text of a log; ``path`` only names it in errors. Returns a :class:`ParsedLog`."""
    parser = _Parser(path)
    *lines, cut = text.split("\n")  # cut: what follows the last "\n", a line its writer was stopped in, dropped
    for line_no, line in enumerate(lines, start=1):
        parser.feed(line_no, line + "\n")
    return parser.done(cut != "")


def read_lines(path, reader):
    """Feed ``reader.feed(line_no, line)`` each complete line of the text file at ``path`` (a log or a
    metrics file); returns whether its last line was cut. LogParseError when the file, or a line of it, is
    refused (by ``reader`` or by the rules of docs/tools.md, 'Reading a run')."""
    line_no = total = 0
    try:
        with open_regular(path) as handle:
            while raw := handle.readline(MAX_LINE_BYTES + 1):
                line_no += 1
                total += len(raw)
                too_big = (f"a line longer than {MAX_LINE_BYTES >> 20} MiB" if len(raw) > MAX_LINE_BYTES
                           else f"larger than {MAX_LOG_BYTES >> 30} GiB" if total > MAX_LOG_BYTES else None)
                if too_big:
                    raise LogParseError(path, line_no, f"{too_big}: not a log or metrics file")
                if not raw.endswith(b"\n"):  # cut mid-line, maybe mid-character: dropped
                    return True
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise LogParseError(path, line_no, "not UTF-8 text") from None
                reader.feed(line_no, text)
    except NotRegularFile as exc:
        raise LogParseError(path, None, f"{exc.strerror}: not a log or metrics file") from None
    except OSError as exc:
        raise LogParseError(path, None, f"cannot read the file ({exc.strerror or exc})") from None
    return False


def parse_log(path):
    """The :class:`ParsedLog` of the log file at ``path`` (LogParseError: see :func:`read_lines`)."""
    parser = _Parser(path)
    return parser.done(read_lines(path, parser))


def require_steps(log, phase_name):
    """The phase ``phase_name`` of ``log``; a LogParseError when it has no such phase or no Step line."""
    phase = log.phase(phase_name)
    if phase is None:
        if log.n_lines > 0 and len(log.skipped) == log.n_lines:  # not one line of the format: say so at line 1
            raise LogParseError(log.path, 1, f"not a log in the reference format (none of its {log.n_lines} "
                                             f"lines is a line type of it)")
        raise LogParseError(log.path, None, f"no {phase_name} phase "
                            f"('supervised test: {phase_name == 'supervised'}' line) in the log")
    if not phase.steps:
        raise LogParseError(log.path, None, f"the {phase_name} phase (line {phase.line}) has no Step line")
    return phase
