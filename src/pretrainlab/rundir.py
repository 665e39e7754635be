"""The run directory's files: one definition that the trainer writes through and every
reader (doctor, ledger, research loop, runners, api) reads through.

    RUN_DIR/recipe.json       fully resolved config                      read_recipe / write_json_atomic
    RUN_DIR/metrics.jsonl     one JSON object per train step or eval     iter_metrics / append_rows
    RUN_DIR/summary.json      final status and metrics                   read_summary / write_summary
    RUN_DIR/provenance.json   commit, environment, data, seed            read_provenance / write_json_atomic

    skipped = Skipped()
    for row in iter_metrics(run_dir, skipped):   # a run still being written is fine
        ...
    skipped.torn, skipped.lines                  # a cut last line; numbers of lines that are not JSON objects

Reading never raises on content: a live run's last line cut mid-write, a line of garbage,
or a missing file are skipped (and counted), not errors. The JSON files are written
atomically (a temporary file, then os.replace), so a reader sees the old or the new file,
never half of one; metrics.jsonl is append-only, so only its last line can be torn.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, NotRequired, TypedDict, cast

RECIPE = "recipe.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
PROVENANCE = "provenance.json"
SUPERSEDED = "metrics.superseded.jsonl"  # rows a resume recomputed, tagged superseded_by_resume_at (same format)


class TrainRow(TypedDict):
    """One optimizer step, as train/trainer.py writes it (step 6d)."""

    type: Literal["train"]
    step: int  # 1-based
    tokens: int  # cumulative training tokens after this step
    loss: float  # mean train loss, nats/token (NaN/Infinity on divergence: json writes and reads them)
    lr: float
    grad_norm: float  # global, before clipping
    max_layer_grad_norm: float
    max_grad_layer: str  # "embed", "block{i}" or "head"
    tokens_per_s: float
    mfu: float | None  # None when the device's peak FLOPs are unknown
    step_s: float
    data_wait_frac: float  # share of step_s spent building the batch
    peak_mem_mb: float
    train_seconds: float  # cumulative timed training seconds (warm-up steps excluded)
    domain_rows: dict[str, int]  # rows of the global batch per domain
    batch_hash: str  # of the global batch's first tokens: replay detection
    domain_loss: dict[str, float]  # mean loss of each domain's rows (domains with rows this step)
    cpu_s: float
    compiled: NotRequired[bool]  # the step ran through torch.compile (train/compiling.py)
    rank_step_s: NotRequired[list[float]]  # DDP only: per rank
    rank_presync_s: NotRequired[list[float]]
    rank_data_s: NotRequired[list[float]]
    gpu_util: NotRequired[float]  # CUDA with NVML: % of the last sample period a kernel ran (the ranks' mean under DDP)
    rank_gpu_util: NotRequired[list[float]]  # DDP on CUDA: per rank


class EvalRow(TypedDict):
    """One evaluation (in-run on the monitor slice, final on the decision split)."""

    type: Literal["eval"]
    step: int  # 0 = the untrained model (train.eval_at_start)
    tokens: int
    progress: float  # share of the binding budget used, in [0, 1]
    val_bpb: float
    val_bpb_domains: NotRequired[dict[str, float]]  # the trainer always writes the rest; a simulated run may not
    eval_tokens: NotRequired[int]
    eval_s: NotRequired[float]
    split: NotRequired[str]  # "monitor" or "val"


class Summary(TypedDict, total=False):
    """summary.json: written once when the run ends (any way it ends but a kill). `status` and
    `val_bpb` are always there; the runner adds the lab's own score (runners/job.py)."""

    status: str  # ok | timeout | diverged | preempted | crashed (| rejected, by the lab)
    val_bpb: float | None
    val_bpb_domains: dict[str, float] | None
    eval_split: str | None
    params: int
    tokens: int
    steps: int
    seconds: float  # timed training seconds
    wall_seconds: float
    tokens_per_s: float | None
    mfu: float | None
    flops_per_token: int
    peak_mem_mb: float
    world_size: int
    compiled: bool  # the training steps ran through torch.compile (train.compile=auto decides at run time)
    error: str | None  # the traceback's tail when crashed
    finished_at: str  # ISO 8601, UTC
    # added by the lab (runners/job.py) after scoring the run itself
    val_bpb_reported: float | None
    scored_by: str
    lab_score: dict
    rejected_reason: str


# ---- metrics.jsonl ------------------------------------------------------------------------------


@dataclass
class Skipped:
    """What iter_metrics passed over, filled in as it reads: pass one in to report it."""

    lines: list[int] = field(default_factory=list)  # 1-based numbers of lines that are not JSON objects
    torn: bool = False  # the last line is cut short (the run is writing it, or was killed mid-write)

    @property
    def num_lines(self) -> int:
        return len(self.lines)


# ---- opening a run's files ------------------------------------------------------------------------
# A run directory is written by experiment code, and the lab reads and writes it from outside the
# sandbox. A file planted there as a symlink would make the lab read a host file into the ledger
# (summary.json -> a credentials file), read forever (metrics.jsonl -> /dev/zero), or write through
# it (scorer.log -> a file in the lab user's home); a FIFO would block it. The lab opens run files
# only through these two functions.


class NotARegularFile(OSError):
    """A symlink, FIFO, device, socket or directory where the lab expects a regular file."""


def open_regular(path: str | Path) -> BinaryIO:
    """Open a file for reading if it is a regular file and not a symlink; raises
    FileNotFoundError as open() does, NotARegularFile otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO opens without waiting
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotARegularFile(errno.ELOOP, "a symbolic link, not a file", str(path)) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotARegularFile(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def create_new(path: str | Path, append: bool = False) -> BinaryIO:
    """Open a file for writing that is this process's own: whatever is at `path` (a file, or a
    symlink planted there) is unlinked first, never written through, and the new file is created
    exclusively. append=True keeps an existing regular file and appends to it instead (a symlink
    or anything else there is still replaced)."""
    path = Path(path)
    if append:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.set_blocking(fd, True)
                return os.fdopen(fd, "ab")
            os.close(fd)
        except OSError:
            pass  # missing, a symlink (ELOOP) or something else: replaced below
    try:
        if not path.is_dir() or path.is_symlink():
            path.unlink()
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    return os.fdopen(fd, "ab" if append else "wb")


def metrics_path(path: str | Path) -> Path:
    """A run directory's metrics.jsonl; a path that is not a directory is the file itself."""
    path = Path(path)
    return path / METRICS if path.is_dir() else path


def iter_numbered_metrics(path: str | Path, skipped: Skipped | None = None, only: str | None = None,
                          ) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) for every JSON object in a run's metrics.jsonl (or any .jsonl path),
    in file order. Blank lines are passed over; a last line with no newline that does not
    parse is a torn write (skipped.torn), any other line that is not a JSON object is counted
    in skipped.lines. A missing file has no rows. Rows are TrainRow, EvalRow, or anything
    else an older or newer trainer wrote: check the fields you use.

    only="eval" yields only rows of that type, and parses only the lines whose bytes hold
    '"eval"' (a poll of a long run's few evals then costs a substring scan, not a JSON parse
    per step; skipped then counts only among the lines parsed)."""
    skipped = skipped if skipped is not None else Skipped()
    needle = json.dumps(only).encode() if only is not None else None
    try:
        f = open_regular(metrics_path(path))
    except (FileNotFoundError, NotADirectoryError, NotARegularFile):
        return
    with f:
        for number, (_, raw, complete) in enumerate(_raw_lines(f), 1):
            if raw is not None and (not raw.strip() or (needle is not None and needle not in raw)):
                continue
            row = _parse_line(raw) if raw is not None else None  # NaN/Infinity too: a diverged loss
            if isinstance(row, dict):
                if only is None or row.get("type") == only:
                    yield number, row
            elif not complete and row is None:
                skipped.torn = True  # only the last line can lack its newline
            else:
                skipped.lines.append(number)


MAX_LINE = 1 << 24  # 16 MiB: a row is a few hundred bytes; a longer "line" is not a row, and is never held in memory


def _raw_lines(f: BinaryIO) -> Iterator[tuple[int, bytes | None, bool]]:
    """(bytes it took, the line or None when longer than MAX_LINE, whether it ends in a newline)
    for each line of a file opened in binary mode. Lines end at b"\n" only (a "\r" inside a row
    is not a line break). An over-long line is read through in chunks and dropped: experiment
    code writes these files, and a 20 GB line must cost a reader time, not memory."""
    while True:
        raw = f.readline(MAX_LINE + 1)
        if not raw:
            return
        if len(raw) <= MAX_LINE or raw.endswith(b"\n"):
            yield len(raw), raw, raw.endswith(b"\n")
            continue
        size = len(raw)
        while True:
            chunk = f.readline(1 << 20)
            size += len(chunk)
            if not chunk or chunk.endswith(b"\n"):
                yield size, None, chunk.endswith(b"\n")
                break


class MetricsTail:
    """A run's metrics.jsonl read as it grows: each read parses only the lines appended since
    the one before (a page polling a live run, a long run's curves asked for again).

        tail = MetricsTail(run_dir)
        if tail.sync():                  # the file was replaced or rewritten: drop what was built from it
            ...
        for number, row in tail.read():  # every row the first time, then only the new ones
            ...
        tail.pending                     # the last line, complete JSON without its newline yet, or None

    Only lines ending in a newline are consumed; a last line without one is either `pending`
    (it parses: iter_numbered_metrics yields it too) or torn (skipped.torn), and is read again
    next time. A file replaced (another inode), cut shorter, or changed before the point read
    is read again from its start. Lines that are not JSON objects are counted in `skipped`, as
    by iter_numbered_metrics."""

    CHECK_BYTES = 256  # the bytes before the point read, compared on each sync: a rewrite in place shows there

    def __init__(self, path: str | Path):
        self.path = metrics_path(path)
        self._start()

    def _start(self) -> None:
        self.offset, self.lines, self.ident, self.check = 0, 0, None, b""
        self.skipped, self.pending = Skipped(), None

    def sync(self) -> bool:
        """Start over if the file is no longer the one read so far; True if it started over."""
        try:
            with open_regular(self.path) as f:
                st = os.fstat(f.fileno())
                same = self.ident in (None, (st.st_dev, st.st_ino)) and st.st_size >= self.offset and not self._changed(f)
        except (FileNotFoundError, NotADirectoryError, NotARegularFile):
            same = self.ident is None and not self.offset
        if not same:
            self._start()
        return not same

    def read(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(line number, row) of each complete line appended since the last read."""
        try:
            f = open_regular(self.path)
        except (FileNotFoundError, NotADirectoryError, NotARegularFile):
            return
        with f:
            st = os.fstat(f.fileno())
            if self.ident not in (None, (st.st_dev, st.st_ino)):
                return  # replaced since sync(): the next sync starts over
            self.ident = (st.st_dev, st.st_ino)
            f.seek(self.offset)
            rest = b""
            for size, raw, complete in _raw_lines(f):  # lines as iter_numbered_metrics reads them
                if not complete:
                    rest = raw if raw is not None else b"\0"  # the last line, still being written (or too long to be a row)
                    break
                self.offset += size
                self.lines += 1
                if raw is not None and not raw.strip():
                    continue
                row = _parse_line(raw) if raw is not None else None
                if isinstance(row, dict):
                    yield self.lines, row
                else:
                    self.skipped.lines.append(self.lines)
            if self.offset:
                f.seek(max(0, self.offset - self.CHECK_BYTES))
                self.check = f.read(self.offset - f.tell())
        self.pending = None
        self.skipped.torn = False
        if rest.strip():
            row = _parse_line(rest)
            if isinstance(row, dict):
                self.pending = (self.lines + 1, row)
            else:
                self.skipped.torn = True

    def _changed(self, f) -> bool:
        if not self.check:
            return False
        f.seek(self.offset - len(self.check))
        return f.read(len(self.check)) != self.check


def _parse_line(raw: bytes) -> Any:
    try:
        return _loads(raw)
    except ValueError:
        return None


MAX_DEPTH = 64  # nesting of a run's JSON: the lab's files nest a few levels; its recursive writers stop near 1,000
# what no run-written string keeps: C0/C1 control characters but tab and newline (terminal escapes: a window's
# title, a cleared screen) and lone surrogates (JSON's "\ud800" parses; printing or encoding it as UTF-8 fails)
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def _loads(raw: bytes) -> Any:
    """json.loads of bytes from a run directory: invalid UTF-8 replaced, control characters and lone surrogates in
    its strings (keys too) replaced by U+FFFD, and nesting deeper than MAX_DEPTH (or too deep for the parser: a
    line of 100,000 "[") a ValueError like any other text that is not JSON."""
    try:
        value = json.loads(raw.decode("utf-8", errors="replace"))
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    # the walk only where it can find something: JSON's strings hold a control character or surrogate only as a \u
    # escape, DEL or a C1 character (UTF-8 \xc2\x80-\x9f) raw; nesting past MAX_DEPTH needs that many brackets
    if b"\\u" in raw or b"\x7f" in raw or b"\xc2" in raw or raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:
        return _safe(value)
    return value


def _safe(value: Any) -> Any:
    """`value` with its strings made safe to print (_UNSAFE -> U+FFFD); ValueError past MAX_DEPTH. Iterative: a
    value nested to the parser's limit is walked without recursion."""
    def clean(v: Any) -> Any:
        return _UNSAFE.sub("\ufffd", v) if isinstance(v, str) and _UNSAFE.search(v) else v

    if not isinstance(value, (dict, list)):
        return clean(value)
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, list):
            for i, v in enumerate(node):
                if isinstance(v, (dict, list)):
                    stack.append((v, depth + 1))
                elif isinstance(v, str):
                    node[i] = clean(v)
        else:
            if any(_UNSAFE.search(k) for k in node):
                items = [(clean(k), v) for k, v in node.items()]
                node.clear()
                node.update(items)
            for k, v in node.items():
                if isinstance(v, (dict, list)):
                    stack.append((v, depth + 1))
                elif isinstance(v, str):
                    node[k] = clean(v)
    return value


def last_row(path: str | Path, only: str | None = None, window: int = 1 << 16, max_bytes: int = 1 << 22) -> dict[str, Any] | None:
    """The last complete row of a run's metrics.jsonl (of type `only`), read from the file's end:
    a live campaign's page asks each in-flight run how far it is without parsing its whole log.
    Reads back `window` bytes, then wider, up to `max_bytes` (4 MiB: hundreds of rows; a log that
    experiment code filled with something else costs a poll no more than that); None when no
    such row is there."""
    needle = json.dumps(only).encode() if only is not None else None
    try:
        f = open_regular(metrics_path(path))
    except (FileNotFoundError, NotADirectoryError, NotARegularFile):
        return None
    with f:
        end = os.fstat(f.fileno()).st_size
        start, floor = end, max(0, end - max_bytes)
        while start > floor:
            start = max(floor, start - window)
            f.seek(start)
            data = f.read(end - start)
            lines = data.split(b"\n")
            complete = lines[1:-1] if start > 0 else lines[:-1]  # the first may be cut by the window; the last lacks its newline
            for raw in reversed(complete):
                if needle is not None and needle not in raw:
                    continue
                row = _parse_line(raw)
                if isinstance(row, dict) and (only is None or row.get("type") == only):
                    return row
            window *= 4  # none in this window: look further back, wider
    return None


def iter_metrics(path: str | Path, skipped: Skipped | None = None, only: str | None = None) -> Iterator[dict[str, Any]]:
    """Every row of a run's metrics.jsonl (of type `only`, if given), tolerantly: see
    iter_numbered_metrics."""
    for _, row in iter_numbered_metrics(path, skipped, only):
        yield row


def append_rows(path: str | Path, rows: Iterable[TrainRow | EvalRow | dict]) -> None:
    """Append rows to a run's metrics.jsonl (or a .jsonl path) in one write, one line each."""
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if text:
        with create_new(metrics_path(path), append=True) as f:
            f.write(text.encode())


def write_rows(path: str | Path, rows: Iterable[TrainRow | EvalRow | dict]) -> None:
    """Replace a run's metrics.jsonl (or a .jsonl path) with these rows, atomically."""
    path = metrics_path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with create_new(tmp) as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows).encode())
    os.replace(tmp, path)


# ---- the JSON files -----------------------------------------------------------------------------


FLOAT_MAX = 1.7976931348623157e308
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def finite_float(v: Any) -> float | None:
    """A JSON number from a run directory as a finite float; anything else -> None: NaN,
    Infinity, a bool, text, and an integer beyond the range of floats (experiment code writes
    these files: 10**400 parses as an int that float() and math.isfinite() refuse)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, float):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, int) and -FLOAT_MAX <= v <= FLOAT_MAX:  # compared exactly: no conversion can overflow
        return float(v)
    return None


def int64(v: Any) -> int | None:
    """A JSON integer (or an integral float) that a BIGINT column holds; anything else -> None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, float):
        return int(v) if math.isfinite(v) and v.is_integer() and INT64_MIN <= v < 2.0**63 else None
    if isinstance(v, int):
        return int(v) if INT64_MIN <= v <= INT64_MAX else None
    return None


class NotAnObject(ValueError):
    """The file holds valid JSON that is not an object (a list, a number, a string)."""


MAX_JSON_BYTES = 1 << 26  # 64 MiB: recipe, summary and provenance (with a dirty tree's diff) are far smaller


def load_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from a file. Raises OSError (missing, unreadable), NotAnObject, or
    another ValueError (not JSON); read_json is the tolerant form."""
    with open_regular(path) as f:
        raw = f.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise ValueError(f"larger than {MAX_JSON_BYTES >> 20} MiB: not a run's JSON file")
    value = _loads(raw)
    if not isinstance(value, dict):
        raise NotAnObject(f"holds a {type(value).__name__}, not an object")
    return value


def read_json(path: str | Path) -> dict[str, Any] | None:
    """A JSON object from a file, or None when it is missing, unreadable, not JSON or not an
    object: run directories hold whatever experiment code wrote."""
    try:
        return load_json(path)
    except (OSError, ValueError):
        return None


def read_recipe(run_dir: str | Path) -> dict[str, Any] | None:
    return read_json(Path(run_dir) / RECIPE)


def read_summary(run_dir: str | Path) -> Summary | None:
    """summary.json, or None when there is none yet (a live or killed run) or it is unreadable.
    It holds whatever the run wrote: check the types of the fields you use."""
    return cast(Summary | None, read_json(Path(run_dir) / SUMMARY))


def read_provenance(run_dir: str | Path) -> dict[str, Any] | None:
    return read_json(Path(run_dir) / PROVENANCE)


def is_run_dir(path: str | Path) -> bool:
    """A directory `pretrainlab train` wrote: it holds recipe.json (written first, before any row)."""
    return (Path(path) / RECIPE).is_file()


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON to a temporary file beside `path`, then rename it over `path`: a reader sees
    the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with create_new(tmp) as f:
        f.write((json.dumps(obj, indent=2, default=float) + "\n").encode())
    os.replace(tmp, path)


def write_summary(run_dir: str | Path, summary: Summary | dict) -> None:
    write_json_atomic(Path(run_dir) / SUMMARY, summary)
