"""Hash-chained audit log: appending, continuing, and detecting tampering."""

from __future__ import annotations

import hashlib
import json

import pytest

from common.audit import GENESIS, AuditLog, AuditLogError, head_digest, verify_log


def _write_log(path, count=5):
    with AuditLog(path) as log:
        for round in range(1, count + 1):
            log.append("update", round=round, peer="de", direction="received",
                       size_bytes=1000 + round, payload_digest=f"{round:064x}", decision="accepted",
                       reason="")
    return path


def _lines(path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _rewrite(path, lines):
    path.write_bytes(b"".join(lines))


def _reseal(entry: dict) -> bytes:
    """An entry re-digested by someone who knows the format (as an attacker would)."""
    body = {k: v for k, v in entry.items() if k != "digest"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    body["digest"] = hashlib.sha256(canonical).hexdigest()
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def test_untouched_log_verifies(tmp_path):
    verdict = verify_log(_write_log(tmp_path / "audit.jsonl"))
    assert (verdict.ok, verdict.entries, verdict.first_bad_line) == (True, 5, None)


def test_empty_log_verifies_and_missing_log_does_not(tmp_path):
    (tmp_path / "empty.jsonl").touch()
    assert verify_log(tmp_path / "empty.jsonl").ok
    assert not verify_log(tmp_path / "missing.jsonl").ok


def test_entry_holds_caller_fields_and_chains_to_the_previous_line(tmp_path):
    path = _write_log(tmp_path / "audit.jsonl", count=2)
    first, second = (json.loads(line) for line in _lines(path))
    assert first["prev"] == GENESIS
    assert second["prev"] == hashlib.sha256(_lines(path)[0].rstrip(b"\n")).hexdigest()
    assert (second["seq"], second["event"], second["round"], second["peer"]) == (
        2, "update", 2, "de")
    expected = {"direction", "size_bytes", "payload_digest", "decision", "reason", "time"}
    assert expected <= set(second)


def test_reopened_log_continues_the_chain(tmp_path):
    path = _write_log(tmp_path / "audit.jsonl", count=2)
    with AuditLog(path) as log:
        assert log.head == head_digest(path)
        entry = log.append("round_end", round=2)
    assert entry["seq"] == 3
    assert verify_log(path).ok


def test_edited_entry_is_detected_at_its_line(tmp_path):
    path = _write_log(tmp_path / "audit.jsonl")
    lines = _lines(path)
    lines[2] = lines[2].replace(b'"decision":"accepted"', b'"decision":"rejected"')
    _rewrite(path, lines)
    verdict = verify_log(path)
    assert (verdict.ok, verdict.first_bad_line, verdict.entries) == (False, 3, 2)
    assert "edited" in verdict.reason


def test_edited_entry_with_recomputed_digest_is_detected_at_the_next_line(tmp_path):
    path = _write_log(tmp_path / "audit.jsonl")
    lines = _lines(path)
    entry = json.loads(lines[2])
    entry["size_bytes"] = 1
    lines[2] = _reseal(entry)
    _rewrite(path, lines)
    verdict = verify_log(path)
    assert (verdict.ok, verdict.first_bad_line) == (False, 4)
    assert "line 3" in verdict.reason


def test_removed_entry_is_detected(tmp_path):
    path = _write_log(tmp_path / "audit.jsonl")
    lines = _lines(path)
    del lines[2]
    _rewrite(path, lines)
    verdict = verify_log(path)
    assert (verdict.ok, verdict.first_bad_line) == (False, 3)
    assert "removed" in verdict.reason


def test_inserted_entry_is_detected(tmp_path):
    path = _write_log(tmp_path / "audit.jsonl")
    lines = _lines(path)
    forged = json.loads(lines[1])
    forged.update(seq=3, peer="fr", prev=hashlib.sha256(lines[1].rstrip(b"\n")).hexdigest())
    lines.insert(2, _reseal(forged))
    _rewrite(path, lines)
    verdict = verify_log(path)
    assert (verdict.ok, verdict.first_bad_line) == (False, 4)


def test_duplicated_entry_is_detected(tmp_path):
    path = _write_log(tmp_path / "audit.jsonl")
    lines = _lines(path)
    lines.insert(2, lines[1])
    _rewrite(path, lines)
    verdict = verify_log(path)
    assert (verdict.ok, verdict.first_bad_line) == (False, 3)
    assert "inserted or reordered" in verdict.reason


def test_reordered_entries_are_detected(tmp_path):
    path = _write_log(tmp_path / "audit.jsonl")
    lines = _lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    _rewrite(path, lines)
    verdict = verify_log(path)
    assert (verdict.ok, verdict.first_bad_line) == (False, 2)


@pytest.mark.parametrize("garbage", [b"not json\n", b"[1, 2]\n", b'{"seq": 3}\n', b"\n"])
def test_malformed_line_is_detected(tmp_path, garbage):
    path = _write_log(tmp_path / "audit.jsonl")
    lines = _lines(path)
    lines[2] = garbage
    _rewrite(path, lines)
    verdict = verify_log(path)
    assert (verdict.ok, verdict.first_bad_line) == (False, 3)
    assert "malformed" in verdict.reason


def test_torn_last_line_is_detected_and_blocks_appending(tmp_path):
    path = _write_log(tmp_path / "audit.jsonl")
    path.write_bytes(path.read_bytes()[:-10])
    verdict = verify_log(path)
    assert (verdict.ok, verdict.first_bad_line) == (False, 5)
    with pytest.raises(AuditLogError, match="incomplete"):
        AuditLog(path)


def test_truncated_tail_is_detected_only_against_a_recorded_head(tmp_path):
    path = _write_log(tmp_path / "audit.jsonl")
    recorded = head_digest(path)
    _rewrite(path, _lines(path)[:3])
    assert verify_log(path).ok
    verdict = verify_log(path, expected_head=recorded)
    assert not verdict.ok
    assert "truncated" in verdict.reason


def test_recorded_head_still_verifies_after_the_log_grows(tmp_path):
    path = _write_log(tmp_path / "audit.jsonl", count=2)
    recorded = head_digest(path)
    with AuditLog(path) as log:
        log.append("round_end", round=2)
    assert verify_log(path, expected_head=recorded).ok


def test_reserved_or_non_json_fields_are_refused(tmp_path):
    with AuditLog(tmp_path / "audit.jsonl") as log:
        with pytest.raises(AuditLogError, match="reserved"):
            log.append("update", seq=7)
        with pytest.raises(AuditLogError, match="plain JSON"):
            log.append("update", payload=b"bytes")
    assert verify_log(tmp_path / "audit.jsonl").entries == 0


def test_second_writer_on_the_same_log_is_refused(tmp_path):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path), pytest.raises(AuditLogError, match="already open"):
        AuditLog(path)
