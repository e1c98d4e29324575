"""Append-only, hash-chained audit log (JSON lines).

Each line is one entry, a canonical JSON object (sorted keys, no spaces)::

    {"seq": n, "time": ..., "event": ..., <fields>, "prev": <sha256 of line n-1>,
     "digest": <sha256 of this entry's canonical JSON without "digest">}

``prev`` is the sha256 hex of the previous line's bytes (without its newline), or 64 zeros for
the first entry; ``seq`` counts from 1 and equals the line number. :func:`verify_log` walks the
chain and names the first bad line.

Callers record, per message: round, peer, direction (sent/received), size_bytes,
payload_digest, decision (accepted/rejected/blocked) and reason. The names seq, time, event,
prev and digest are reserved.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
RESERVED_FIELDS = frozenset({"seq", "time", "event", "prev", "digest"})
_REQUIRED_TYPES: dict[str, type] = {"seq": int, "time": str, "event": str, "prev": str,
                                    "digest": str}
_TAIL_CHUNK_BYTES = 64 * 1024


class AuditLogError(ValueError):
    """The log cannot be continued or written (broken tail, bad fields, another writer)."""


@dataclass(frozen=True)
class AuditVerdict:
    """Outcome of :func:`verify_log`.

    Attributes
    ----------
    ok : bool
        True when every line verifies (and the recorded head, if given, is present).
    entries : int
        Number of entries that verified before the first bad line.
    first_bad_line : int or None
        1-based number of the first bad line, None when ok or when no single line is at fault.
    reason : str
        What is wrong, or ``"ok"``.
    """

    ok: bool
    entries: int
    first_bad_line: int | None
    reason: str


class AuditLog:
    """Append entries to the hash-chained log at ``path``, continuing an existing chain.

    One writer per file: the file is locked (``flock``) while this object is open, and a
    second ``AuditLog`` on the same file raises :class:`AuditLogError` until :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._file = open(self.path, "ab")  # noqa: SIM115 - held until close()
        try:
            _lock_exclusively(self._file, self.path)
            self._seq, self._head = _chain_tail(self.path)
        except BaseException:
            self._file.close()
            raise

    @property
    def head(self) -> str:
        """sha256 hex of the last line (what the next entry's ``prev`` will be)."""
        return self._head

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one entry, flushed and fsynced; returns it (with seq, time, prev, digest)."""
        _check_fields(event, fields)
        with self._lock:
            entry = {"seq": self._seq + 1, "time": _now(), "event": event, **fields,
                     "prev": self._head}
            entry["digest"] = _entry_digest(entry)
            line = _canonical(entry)
            self._file.write(line + b"\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._seq, self._head = entry["seq"], _sha256_hex(line)
        return entry

    def close(self) -> None:
        """Release the file (and its lock)."""
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def verify_log(path: str | os.PathLike, *, expected_head: str | None = None) -> AuditVerdict:
    """Walk the chain of the log at ``path`` and report the first bad line.

    Detects an edited entry (its digest fails, or, if the digest was recomputed, the next
    line's ``prev`` fails), a removed, inserted or reordered entry (``seq`` and ``prev``), and
    a malformed or incomplete line.

    Removing entries from the *end* of the log leaves a valid, shorter chain: truncation is
    only detectable against a head digest recorded elsewhere (see :func:`head_digest`). Pass
    that record as ``expected_head``; the log must contain a line with that hash (it may have
    grown since).
    """
    path = Path(path)
    if not path.is_file():
        return AuditVerdict(False, 0, None, f"{path} does not exist or is not a file")
    previous, entries = GENESIS, 0
    head_found = expected_head in (None, GENESIS)
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            problem = _line_problem(raw, number, previous)
            if problem is not None:
                return AuditVerdict(False, entries, number, problem)
            previous, entries = _sha256_hex(raw[:-1]), entries + 1
            head_found = head_found or previous == expected_head
    if not head_found:
        return AuditVerdict(False, entries, None, f"recorded head {expected_head} is not in the "
                                                  "log: it was truncated or replaced")
    return AuditVerdict(True, entries, None, "ok")


def head_digest(path: str | os.PathLike) -> str:
    """sha256 hex of the log's last line (64 zeros when empty): record it elsewhere.

    A copy kept outside the log (e.g. in the run summary, or sent to the sites) is what makes
    truncation of the tail detectable by ``verify_log(path, expected_head=...)``.
    """
    line = _last_line(Path(path))
    return GENESIS if line is None else _sha256_hex(line)


# ---------------------------------------------------------------------------------------------
# Steps


def _canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def _entry_digest(entry: dict[str, Any]) -> str:
    return _sha256_hex(_canonical({k: v for k, v in entry.items() if k != "digest"}))


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _check_fields(event: str, fields: dict[str, Any]) -> None:
    if not isinstance(event, str) or not event:
        raise AuditLogError(f"event must be a non-empty string, got {event!r}")
    clashes = RESERVED_FIELDS & set(fields)
    if clashes:
        raise AuditLogError(f"fields {sorted(clashes)} are reserved by the audit log "
                            "(record a message digest as payload_digest)")
    try:
        _canonical(fields)
    except (TypeError, ValueError) as error:
        raise AuditLogError(f"audit fields must be plain JSON values: {error}") from error


def _lock_exclusively(file: Any, path: Path) -> None:
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as error:
        raise AuditLogError(f"{path} is already open for writing by another AuditLog") from error


def _chain_tail(path: Path) -> tuple[int, str]:
    """The seq and line hash of the last entry, after checking that entry is intact."""
    line = _last_line(path)
    if line is None:
        return 0, GENESIS
    problem = _parse_problem(line)
    if problem is not None:
        raise AuditLogError(f"{path}: cannot continue the chain, last line is bad: {problem}")
    return json.loads(line)["seq"], _sha256_hex(line)


def _last_line(path: Path) -> bytes | None:
    """The last line of ``path`` without its newline; None if the file is empty or missing."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    with path.open("rb") as file:
        size = file.seek(0, os.SEEK_END)
        tail = b""
        for _ in range(size // _TAIL_CHUNK_BYTES + 1):
            start = max(0, size - len(tail) - _TAIL_CHUNK_BYTES)
            file.seek(start)
            tail = file.read(size - len(tail) - start) + tail
            if start == 0 or tail.rfind(b"\n", 0, len(tail) - 1) >= 0:
                break
    if not tail.endswith(b"\n"):
        raise AuditLogError(f"{path}: last line is incomplete (torn write or truncation)")
    return tail[:-1].rsplit(b"\n", 1)[-1]


def _line_problem(raw: bytes, number: int, previous: str) -> str | None:
    if not raw.endswith(b"\n"):
        return "line is incomplete (no newline): torn write or truncation"
    line = raw[:-1]
    problem = _parse_problem(line)
    if problem is not None:
        return problem
    entry = json.loads(line)
    for check in _CHAIN_CHECKS:
        problem = check(entry, number, previous)
        if problem is not None:
            return problem
    return None


def _parse_problem(line: bytes) -> str | None:
    """What makes ``line`` not a well-formed entry with a valid digest, or None."""
    try:
        entry = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"malformed line, not JSON: {error}"
    if not isinstance(entry, dict):
        return "malformed line, not a JSON object"
    wrong = [name for name, kind in _REQUIRED_TYPES.items()
             if type(entry.get(name)) is not kind]
    if wrong:
        return f"malformed entry, missing or mistyped fields: {', '.join(wrong)}"
    try:
        expected = _entry_digest(entry)
    except ValueError:
        return "malformed entry, holds a non-finite number"
    if entry["digest"] != expected:
        return f"entry seq {entry['seq']} does not match its digest: it was edited"
    return None


def _seq_problem(entry: dict[str, Any], number: int, previous: str) -> str | None:
    if entry["seq"] == number:
        return None
    if entry["seq"] > number:
        return (f"seq {entry['seq']} where {number} was expected: entries were removed or "
                "reordered before it")
    return f"seq {entry['seq']} where {number} was expected: entries were inserted or reordered"


def _prev_problem(entry: dict[str, Any], number: int, previous: str) -> str | None:
    if entry["prev"] == previous:
        return None
    if number == 1:
        return "first entry does not start the chain (prev is not 64 zeros)"
    return (f"prev does not match the hash of line {number - 1}: that line was edited, "
            "or an entry was inserted, removed or reordered")


_CHAIN_CHECKS: tuple[Callable[[dict[str, Any], int, str], str | None], ...] = (
    _seq_problem,
    _prev_problem,
)
