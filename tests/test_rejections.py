"""Every way an update can be refused at the coordinator: the round still completes.

Real keys, real envelopes, a real audit log; each test tampers with one site's reply among
three and checks the reason in the log and that the other two were aggregated.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from common.audit import AuditLog, verify_log
from common.channel import CoordinatorChannel, SiteChannel
from common.egress import EgressPolicy, tensor_spec
from common.keys import generate_identity
from server.coordinator import Coordinator, RoundRecord
from common.config import StrategyConfig
from strategies import create_strategy

RUN = "run-7"
SITES = ["a", "b", "c"]
GLOBAL = {"layer.lora_A": np.zeros((2, 4), np.float32), "head.weight": np.zeros((3, 4), np.float32)}
METRICS = {"num_examples": 10.0, "train_loss": 1.0}


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


@pytest.fixture
def federation(tmp_path):
    coordinator = generate_identity("coordinator")
    sites = {name: generate_identity(name) for name in SITES}
    audit = AuditLog(tmp_path / "coordinator.jsonl")
    channel = CoordinatorChannel(
        run_id=RUN, identity=coordinator, registry={n: i.public() for n, i in sites.items()},
        max_update_bytes=64 * 1024, audit=audit,
    )
    server = Coordinator(strategy=create_strategy(StrategyConfig(name="fedavg")), channel=channel, site_ids=SITES,
                         min_sites=1, max_update_norm=100.0)
    yield server, coordinator, sites, tmp_path / "coordinator.jsonl"
    audit.close()


def _site_channel(identity, coordinator, guarded=True):
    guard = EgressPolicy(tensors=tensor_spec(GLOBAL)) if guarded else None
    return SiteChannel(identity.name, identity, coordinator.public(), guard=guard)


def _reply(content: RecordDict, node: int) -> Message:
    request = Message(content=RecordDict(), message_type=MessageType.TRAIN, dst_node_id=node)
    return Message(content=content, reply_to=request)


def _update(value: float) -> dict[str, np.ndarray]:
    return {k: np.full(v.shape, value, np.float32) for k, v in GLOBAL.items()}


def _round(federation, round_number, tamper):
    """Sites a and c send honest updates (1.0 and 3.0); ``tamper`` builds site b's reply."""
    server, coordinator, sites, _ = federation
    server.rounds[round_number] = RoundRecord(round=round_number)
    server.global_state = GLOBAL
    honest = {
        name: _site_channel(sites[name], coordinator).pack_reply(
            _update(value), METRICS, RUN, round_number)
        for name, value in (("a", 1.0), ("c", 3.0))
    }
    replies = [_reply(honest["a"], 1), _reply(tamper(federation), 2), _reply(honest["c"], 3)]
    arrays, _ = server.aggregate_train(round_number, replies)
    return server.rounds[round_number], arrays


def _assert_b_rejected(federation, record, arrays, reason):
    assert sorted(record.train) == ["a", "c"]
    assert reason in record.excluded["b"]
    np.testing.assert_allclose(arrays["head.weight"].numpy(), np.full((3, 4), 2.0))
    log_path = federation[3]
    entries = [json.loads(line) for line in log_path.read_text().splitlines()]
    rejected = [e for e in entries if e["peer"] == "b" and e["decision"] == "rejected"]
    assert rejected and reason in rejected[0]["reason"]
    assert verify_log(log_path).ok


def _honest_b(federation, round_number=1, value=2.0, **kw):
    _, coordinator, sites, _ = federation
    return _site_channel(sites["b"], coordinator, **kw).pack_reply(
        _update(value), METRICS, RUN, round_number)


def _with_blob(content: RecordDict, blob: bytes) -> RecordDict:
    content["update"] = ArrayRecord(
        array_dict={"sealed": Array.from_numpy_ndarray(np.frombuffer(blob, np.uint8))})
    return content


def test_one_flipped_ciphertext_byte_is_rejected_and_the_round_completes(federation):
    def tamper(fed):
        content = _honest_b(fed)
        blob = bytearray(content["update"]["sealed"].numpy().tobytes())
        blob[-20] ^= 0x01
        return _with_blob(content, bytes(blob))

    record, arrays = _round(federation, 1, tamper)
    _assert_b_rejected(federation, record, arrays, "decryption-failed")


def test_round_one_update_replayed_in_round_two_is_rejected(federation):
    replayed = _honest_b(federation, round_number=1)
    record, arrays = _round(federation, 2, lambda fed: replayed)
    _assert_b_rejected(federation, record, arrays, "wrong-round")


def test_update_signed_by_an_unenrolled_key_is_rejected(federation):
    _, coordinator, _, _ = federation
    impostor = generate_identity("b")  # claims to be site b, key never enrolled

    def tamper(fed):
        return _site_channel(impostor, coordinator).pack_reply(_update(2.0), METRICS, RUN, 1)

    record, arrays = _round(federation, 1, tamper)
    _assert_b_rejected(federation, record, arrays, "bad-signature")


def test_nan_values_are_rejected(federation):
    record, arrays = _round(federation, 1, lambda fed: _honest_b(fed, value=float("nan")))
    _assert_b_rejected(federation, record, arrays, "NaN or Inf")


def test_wrong_shape_from_an_unguarded_site_is_rejected(federation):
    _, coordinator, sites, _ = federation

    def tamper(fed):
        bad = dict(_update(2.0), **{"head.weight": np.ones((3, 5), np.float32)})
        return _site_channel(sites["b"], coordinator, guarded=False).pack_reply(
            bad, METRICS, RUN, 1)

    record, arrays = _round(federation, 1, tamper)
    _assert_b_rejected(federation, record, arrays, "head.weight: got float32[3, 5]")


def test_oversize_payload_is_rejected(federation):
    _, coordinator, sites, _ = federation

    def tamper(fed):
        bad = dict(_update(2.0), padding=np.zeros(100_000, np.float32))
        return _site_channel(sites["b"], coordinator, guarded=False).pack_reply(
            bad, METRICS, RUN, 1)

    record, arrays = _round(federation, 1, tamper)
    _assert_b_rejected(federation, record, arrays, "oversize")


def test_update_above_the_norm_bound_is_rejected(federation):
    record, arrays = _round(federation, 1, lambda fed: _honest_b(fed, value=2000.0))
    _assert_b_rejected(federation, record, arrays, "exceeds security.max_update_norm")


def test_a_second_update_from_the_same_site_in_a_round_is_rejected(federation):
    server, coordinator, sites, log_path = federation
    server.rounds[1] = RoundRecord(round=1)
    server.global_state = GLOBAL
    first = _honest_b(federation)
    replies = [_reply(first, 2), _reply(_honest_b(federation, value=50.0), 2)]
    arrays, _ = server.aggregate_train(1, replies)
    assert "second update" in server.rounds[1].excluded["b"]
    np.testing.assert_allclose(arrays["head.weight"].numpy(), np.full((3, 4), 2.0))
