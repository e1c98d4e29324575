"""Sealed site updates and signed global adapters: what is accepted and what is refused."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from common import envelope
from common.envelope import (
    EnvelopeRejected,
    RejectCode,
    deserialize_tensors,
    open_update,
    seal_payload,
    seal_update,
    serialize_tensors,
    sign_global,
    verify_global,
)
from common.keys import generate_identity

RUN = "run-2026-12"
LIMIT = 1 << 20


@pytest.fixture(scope="module")
def coordinator():
    return generate_identity("coordinator")


@pytest.fixture(scope="module")
def site():
    return generate_identity("de")


@pytest.fixture(scope="module")
def registry(site):
    return {site.name: site.public(), "fr": generate_identity("fr").public()}


@pytest.fixture(scope="module")
def tensors():
    rng = np.random.default_rng(0)
    return {
        "layer.0.lora_A": rng.standard_normal((8, 32), dtype=np.float32),
        "layer.0.lora_B": rng.standard_normal((32, 8), dtype=np.float32),
    }


def _seal(tensors, site, coordinator, *, round=1, run_id=RUN, metrics=None):
    return seal_update(tensors, metrics=metrics or {"loss": 0.5, "examples": 120.0},
                       run_id=run_id, round=round, site=site.name, sender=site,
                       coordinator=coordinator.public())


def _open(blob, coordinator, registry, *, round=1, run_id=RUN, max_bytes=LIMIT):
    return open_update(blob, coordinator=coordinator, registry=registry, run_id=run_id,
                       round=round, max_bytes=max_bytes)


def _rejection(blob, coordinator, registry, **context) -> EnvelopeRejected:
    with pytest.raises(EnvelopeRejected) as caught:
        _open(blob, coordinator, registry, **context)
    return caught.value


def _assert_same_tensors(actual, expected):
    assert sorted(actual) == sorted(expected)
    for name, value in expected.items():
        assert actual[name].dtype == value.dtype
        np.testing.assert_array_equal(actual[name], value)


def test_sealed_update_opens_to_the_same_tensors_and_metrics(tensors, site, coordinator,
                                                            registry):
    blob = _seal(tensors, site, coordinator)
    opened = _open(blob, coordinator, registry)
    assert opened.site == "de"
    assert opened.metrics == {"loss": 0.5, "examples": 120.0}
    _assert_same_tensors(opened.tensors, tensors)
    assert len(opened.payload_digest) == 64


def test_mlkem_hybrid_suite_round_trips(tensors, site, registry):
    coordinator = generate_identity("coordinator", "mlkem768-x25519")
    blob = _seal(tensors, site, coordinator)
    opened = _open(blob, coordinator, registry)
    _assert_same_tensors(opened.tensors, tensors)
    assert b"mlkem768-x25519" in blob[:32]


def test_envelope_reveals_neither_tensors_nor_metrics_nor_site(tensors, site, coordinator):
    blob = _seal(tensors, site, coordinator, metrics={"secret_metric": 1.0})
    for needle in (tensors["layer.0.lora_A"].tobytes()[:16], b"secret_metric", b"lora_A",
                   b'"de"', RUN.encode()):
        assert needle not in blob


def test_sealing_twice_gives_different_ciphertexts(tensors, site, coordinator):
    assert _seal(tensors, site, coordinator) != _seal(tensors, site, coordinator)


@pytest.mark.parametrize("where", [0.5, -1, 40])
def test_one_flipped_ciphertext_byte_is_rejected(tensors, site, coordinator, registry, where):
    blob = bytearray(_seal(tensors, site, coordinator))
    index = int(len(blob) * where) if isinstance(where, float) else where
    blob[index] ^= 0x01
    assert _rejection(bytes(blob), coordinator, registry).code == RejectCode.DECRYPTION_FAILED


def test_truncated_envelope_is_rejected(tensors, site, coordinator, registry):
    blob = _seal(tensors, site, coordinator)
    assert _rejection(blob[:-1], coordinator, registry).code == "decryption-failed"


def test_envelope_sealed_to_another_coordinator_is_rejected(tensors, site, coordinator,
                                                           registry):
    blob = _seal(tensors, site, generate_identity("coordinator"))
    assert _rejection(blob, coordinator, registry).code == "decryption-failed"


def test_envelope_for_another_kem_is_rejected_as_unsupported(tensors, site, coordinator,
                                                            registry):
    blob = _seal(tensors, site, generate_identity("coordinator", "mlkem768-x25519"))
    rejected = _rejection(blob, coordinator, registry)
    assert rejected.code == "unsupported-envelope"
    assert "mlkem768-x25519" in str(rejected)


def test_bytes_that_are_not_an_envelope_are_rejected(coordinator, registry):
    assert _rejection(b"PK\x03\x04 zip", coordinator, registry).code == "unsupported-envelope"


def test_oversize_payload_is_rejected_before_decryption(tensors, site, coordinator, registry,
                                                        monkeypatch):
    blob = _seal(tensors, site, coordinator)

    def must_not_decrypt(*_args):
        raise AssertionError("decrypted an oversize envelope")

    monkeypatch.setattr(envelope, "_hpke_decrypt", must_not_decrypt)
    rejected = _rejection(blob, coordinator, registry, max_bytes=len(blob) - 1)
    assert rejected.code == RejectCode.OVERSIZE
    assert str(len(blob)) in str(rejected)


def test_malformed_plaintext_is_rejected(coordinator, registry):
    blob = envelope._clear_prefix("x25519") + envelope._hpke_encrypt(
        b"\x00\x00\x00\x05hello", coordinator.public())
    assert _rejection(blob, coordinator, registry).code == "malformed-plaintext"


def test_header_with_extra_fields_is_rejected_as_malformed(coordinator, registry):
    header = b'{"v":1,"run_id":"r","round":1,"site":"de","payload_sha256":"00","x":1}'
    plaintext = len(header).to_bytes(4, "big") + header + bytes(64)
    blob = envelope._clear_prefix("x25519") + envelope._hpke_encrypt(plaintext,
                                                                     coordinator.public())
    assert _rejection(blob, coordinator, registry).code == "malformed-plaintext"


def test_update_from_an_unenrolled_site_is_rejected(tensors, coordinator, registry):
    stranger = generate_identity("xx")
    rejected = _rejection(_seal(tensors, stranger, coordinator), coordinator, registry)
    assert rejected.code == RejectCode.UNKNOWN_SITE
    assert "'xx'" in str(rejected)


def test_update_signed_by_unenrolled_key_is_rejected(tensors, coordinator, registry):
    impostor = generate_identity("de")
    rejected = _rejection(_seal(tensors, impostor, coordinator), coordinator, registry)
    assert rejected.code == RejectCode.BAD_SIGNATURE


def test_update_for_another_run_is_rejected(tensors, site, coordinator, registry):
    blob = _seal(tensors, site, coordinator, run_id="old-run")
    assert _rejection(blob, coordinator, registry).code == RejectCode.WRONG_RUN


def test_round_one_update_replayed_in_round_two_is_rejected(tensors, site, coordinator,
                                                            registry):
    blob = _seal(tensors, site, coordinator, round=1)
    _open(blob, coordinator, registry, round=1)
    rejected = _rejection(blob, coordinator, registry, round=2)
    assert rejected.code == RejectCode.WRONG_ROUND
    assert "round 1" in str(rejected)


def test_payload_not_matching_its_signed_digest_is_rejected(tensors, site, coordinator,
                                                            registry):
    signed_payload = serialize_tensors(tensors)
    header = envelope.UpdateHeader(1, RUN, 1, "de", hashlib.sha256(signed_payload).digest())
    signature = site.sign_private.sign(envelope._update_statement(header))
    plaintext = envelope._pack_plaintext(header, signature, signed_payload + b"extra")
    blob = envelope._clear_prefix("x25519") + envelope._hpke_encrypt(plaintext,
                                                                     coordinator.public())
    assert _rejection(blob, coordinator, registry).code == RejectCode.DIGEST_MISMATCH


def test_signed_payload_that_is_not_safetensors_is_rejected(site, coordinator, registry):
    blob = seal_payload(b"\x00" * 64, run_id=RUN, round=1, site="de", sender=site,
                        coordinator=coordinator.public())
    assert _rejection(blob, coordinator, registry).code == RejectCode.UNDECODABLE_TENSORS


def test_signed_payload_without_metrics_is_rejected(tensors, site, coordinator, registry):
    blob = seal_payload(serialize_tensors(tensors), run_id=RUN, round=1, site="de",
                        sender=site, coordinator=coordinator.public())
    assert _rejection(blob, coordinator, registry).code == RejectCode.BAD_METRICS


def test_reject_codes_are_stable_strings():
    assert {code.value for code in RejectCode} == {
        "oversize", "unsupported-envelope", "decryption-failed", "malformed-plaintext",
        "unknown-site", "bad-signature", "wrong-run", "wrong-round", "digest-mismatch",
        "undecodable-tensors", "bad-metrics",
    }


def test_site_cannot_seal_under_another_sites_name(tensors, site, coordinator):
    with pytest.raises(ValueError, match="does not match the sender"):
        seal_update(tensors, metrics={}, run_id=RUN, round=1, site="fr", sender=site,
                    coordinator=coordinator.public())


def test_serialization_keeps_strided_and_scalar_tensors_intact():
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    tensors = {"strided": base[:, ::2], "reversed": base[::-1], "scalar": np.asarray(2.5,
                                                                                       np.float32)}
    _assert_same_tensors(deserialize_tensors(serialize_tensors(tensors)), tensors)


def test_serialization_refuses_object_arrays():
    with pytest.raises(ValueError, match="cannot serialize"):
        serialize_tensors({"x": np.array([object()])})


def test_deserializing_garbage_is_rejected():
    with pytest.raises(EnvelopeRejected) as caught:
        deserialize_tensors(b"not safetensors at all")
    assert caught.value.code == "undecodable-tensors"


def test_signed_global_adapter_verifies(tensors, coordinator):
    payload, signature = sign_global(tensors, run_id=RUN, round=3, coordinator=coordinator)
    loaded = verify_global(payload, signature, run_id=RUN, round=3,
                           coordinator=coordinator.public())
    _assert_same_tensors(loaded, tensors)


def test_global_adapter_signed_by_another_key_is_rejected(tensors, coordinator):
    payload, signature = sign_global(tensors, run_id=RUN, round=3,
                                     coordinator=generate_identity("coordinator"))
    with pytest.raises(EnvelopeRejected) as caught:
        verify_global(payload, signature, run_id=RUN, round=3, coordinator=coordinator.public())
    assert caught.value.code == "bad-signature"


def test_tampered_global_adapter_is_rejected(tensors, coordinator):
    payload, signature = sign_global(tensors, run_id=RUN, round=3, coordinator=coordinator)
    tampered = bytearray(payload)
    tampered[-1] ^= 0x01
    with pytest.raises(EnvelopeRejected) as caught:
        verify_global(bytes(tampered), signature, run_id=RUN, round=3,
                      coordinator=coordinator.public())
    assert caught.value.code == "bad-signature"


@pytest.mark.parametrize(("run_id", "round", "code"), [("other", 3, "wrong-run"),
                                                       (RUN, 4, "wrong-round")])
def test_global_adapter_for_another_run_or_round_is_rejected(tensors, coordinator, run_id,
                                                             round, code):
    payload, signature = sign_global(tensors, run_id=RUN, round=3, coordinator=coordinator)
    with pytest.raises(EnvelopeRejected) as caught:
        verify_global(payload, signature, run_id=run_id, round=round,
                      coordinator=coordinator.public())
    assert caught.value.code == code


def test_site_update_signature_does_not_verify_as_a_global_signature(tensors, site):
    payload = serialize_tensors(tensors, {envelope.RUN_ID_KEY: RUN, envelope.ROUND_KEY: "1"})
    header = envelope.UpdateHeader(1, RUN, 1, "de", hashlib.sha256(payload).digest())
    signature = site.sign_private.sign(envelope._update_statement(header))
    with pytest.raises(EnvelopeRejected) as caught:
        verify_global(payload, signature, run_id=RUN, round=1, coordinator=site.public())
    assert caught.value.code == "bad-signature"
