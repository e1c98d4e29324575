"""Sealed site updates and signed global adapters.

A site's update travels through a relay that may be run by a third party, so it is sealed:

1. the tensors (and the site's metrics, as JSON in the safetensors metadata) are serialized
   with safetensors, never pickle;
2. the site signs, with Ed25519, a domain-separated statement of (format version, run id, round,
   site, sha256 of the payload);
3. header, signature and payload are encrypted to the coordinator's HPKE public key.

The envelope is ``prefix || HPKE ciphertext``; the clear prefix holds only a magic, the format
version and the kem name. The coordinator opens it with :func:`open_update`, which raises
:class:`EnvelopeRejected` with a stable :class:`RejectCode` on any problem.

The global adapter that the coordinator sends out is signed, not encrypted (every site gets
it): :func:`sign_global` and :func:`verify_global`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric import ed25519

from common.keys import Identity, PublicIdentity, kem_suite

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
UPDATE_MAGIC = b"FSLU"
HPKE_INFO_LABEL = b"fedsilo/update-envelope/v1"
UPDATE_SIGNATURE_DOMAIN = b"fedsilo/update-signature/v1"
GLOBAL_SIGNATURE_DOMAIN = b"fedsilo/global-signature/v1"
METRICS_KEY = "fedsilo.metrics"
RUN_ID_KEY = "fedsilo.run_id"
ROUND_KEY = "fedsilo.round"
SIGNATURE_BYTES = 64
_HEADER_LENGTH_BYTES = 4
_MAX_HEADER_BYTES = 4096
_MAX_SAFETENSORS_HEADER_BYTES = 16 * 1024 * 1024
_MAX_ROUND = 2**63 - 1
_HEADER_FIELDS = frozenset({"v", "run_id", "round", "site", "payload_sha256"})

Tensors = dict[str, np.ndarray]


class RejectCode(StrEnum):
    """Why an envelope or a global adapter was refused (stable strings for logs and audits)."""

    OVERSIZE = "oversize"
    UNSUPPORTED_ENVELOPE = "unsupported-envelope"
    DECRYPTION_FAILED = "decryption-failed"
    MALFORMED_PLAINTEXT = "malformed-plaintext"
    UNKNOWN_SITE = "unknown-site"
    BAD_SIGNATURE = "bad-signature"
    WRONG_RUN = "wrong-run"
    WRONG_ROUND = "wrong-round"
    DIGEST_MISMATCH = "digest-mismatch"
    UNDECODABLE_TENSORS = "undecodable-tensors"
    BAD_METRICS = "bad-metrics"


class EnvelopeRejected(ValueError):
    """An envelope or global adapter was refused.

    Attributes
    ----------
    code : RejectCode
        Stable reason code (a ``str``).
    detail : str
        Human-readable explanation.
    """

    def __init__(self, code: RejectCode, detail: str) -> None:
        self.code = RejectCode(code)
        self.detail = detail
        super().__init__(f"{self.code}: {detail}")


@dataclass(frozen=True)
class OpenedUpdate:
    """A verified update: who sent it, its tensors and metrics, sha256 hex of its payload."""

    site: str
    tensors: Tensors
    metrics: dict[str, float]
    payload_digest: str


@dataclass(frozen=True)
class UpdateHeader:
    """The signed header inside an update envelope."""

    version: int
    run_id: str
    round: int
    site: str
    payload_sha256: bytes


# ---------------------------------------------------------------------------------------------
# Tensors


def serialize_tensors(tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> bytes:
    """Safetensors bytes of ``tensors`` (C-contiguous copies where needed), with ``metadata``."""
    arrays = {}
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {type(name).__name__}")
        array = np.asarray(value)
        arrays[name] = array if array.flags.c_contiguous else array.copy(order="C")
    try:
        return safetensors.numpy.save(arrays, metadata=dict(metadata) if metadata else None)
    except (safetensors.SafetensorError, TypeError) as error:
        raise ValueError(f"cannot serialize tensors: {error}") from error


def deserialize_tensors(data: bytes) -> Tensors:
    """Tensors from safetensors bytes; ``EnvelopeRejected`` if they do not decode."""
    try:
        return safetensors.numpy.load(bytes(data))
    except (safetensors.SafetensorError, KeyError, ValueError, TypeError) as error:
        raise EnvelopeRejected(RejectCode.UNDECODABLE_TENSORS,
                               f"payload is not valid safetensors: {error}") from error


def read_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes, read without decoding the tensors."""
    if len(data) < 8:
        raise EnvelopeRejected(RejectCode.UNDECODABLE_TENSORS, "payload shorter than 8 bytes")
    length = int.from_bytes(data[:8], "little")
    if length > min(len(data) - 8, _MAX_SAFETENSORS_HEADER_BYTES):
        raise EnvelopeRejected(RejectCode.UNDECODABLE_TENSORS,
                               f"safetensors header length {length} exceeds the payload")
    try:
        header = json.loads(bytes(data[8:8 + length]))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EnvelopeRejected(RejectCode.UNDECODABLE_TENSORS,
                               f"safetensors header is not JSON: {error}") from error
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise EnvelopeRejected(RejectCode.UNDECODABLE_TENSORS,
                               "safetensors metadata is not a map of strings")
    return metadata


# ---------------------------------------------------------------------------------------------
# Site update: seal and open


def seal_update(
    tensors: Mapping[str, np.ndarray],
    *,
    metrics: Mapping[str, float],
    run_id: str,
    round: int,
    site: str,
    sender: Identity,
    coordinator: PublicIdentity,
) -> bytes:
    """Serialize, sign and encrypt ``site``'s update for ``coordinator``.

    Returns
    -------
    bytes
        The opaque envelope: clear prefix (magic, version, kem name) then HPKE ciphertext.
    """
    if site != sender.name:
        raise ValueError(f"site {site!r} does not match the sender identity {sender.name!r}")
    payload = serialize_tensors(tensors, {METRICS_KEY: _encode_metrics(metrics)})
    return seal_payload(payload, run_id=run_id, round=round, site=site, sender=sender,
                        coordinator=coordinator)


def seal_payload(payload: bytes, *, run_id: str, round: int, site: str, sender: Identity,
                 coordinator: PublicIdentity) -> bytes:
    """Sign and encrypt an already serialized ``payload`` (the steps after serialization)."""
    header = UpdateHeader(FORMAT_VERSION, _check_run_id(run_id), _check_round(round), site,
                          _sha256(payload))
    signature = _sign(sender.sign_private, _update_statement(header))
    plaintext = _pack_plaintext(header, signature, payload)
    return _clear_prefix(coordinator.kem) + _hpke_encrypt(plaintext, coordinator)


def open_update(
    blob: bytes,
    *,
    coordinator: Identity,
    registry: Mapping[str, PublicIdentity],
    run_id: str,
    round: int,
    max_bytes: int,
) -> OpenedUpdate:
    """Decrypt, authenticate and decode an update envelope.

    The size is checked before anything else; then decryption, header, enrolment, signature,
    run and round, payload digest and finally the tensors and metrics.

    Raises
    ------
    EnvelopeRejected
        With the :class:`RejectCode` of the first check that failed.
    """
    _check_size(blob, max_bytes)
    ciphertext = _strip_prefix(blob, coordinator.kem)
    plaintext = _hpke_decrypt(ciphertext, coordinator)
    header, signature, payload = _unpack_plaintext(plaintext)
    sender = _enrolled_site(header.site, registry)
    _verify(sender.sign_public, signature, _update_statement(header), f"site {header.site!r}")
    _check_context(header.run_id, header.round, run_id, round)
    _check_digest(payload, header.payload_sha256)
    tensors = deserialize_tensors(payload)
    metrics = _decode_metrics(read_metadata(payload))
    logger.debug("opened update from %s for run %s round %s", header.site, run_id, round)
    return OpenedUpdate(header.site, tensors, metrics, header.payload_sha256.hex())


# ---------------------------------------------------------------------------------------------
# Global adapter: sign and verify


def sign_global(tensors: Mapping[str, np.ndarray], *, run_id: str, round: int,
                coordinator: Identity) -> tuple[bytes, bytes]:
    """Serialize the global adapter (run and round in its metadata) and sign it.

    Returns
    -------
    tuple of bytes
        ``(payload, signature)``.
    """
    metadata = {RUN_ID_KEY: _check_run_id(run_id), ROUND_KEY: str(_check_round(round))}
    payload = serialize_tensors(tensors, metadata)
    statement = _global_statement(run_id, round, _sha256(payload))
    return payload, _sign(coordinator.sign_private, statement)


def verify_global(payload: bytes, signature: bytes, *, run_id: str, round: int,
                  coordinator: PublicIdentity, max_bytes: int | None = None) -> Tensors:
    """Check the coordinator's signature and the run and round, then decode the tensors.

    Raises
    ------
    EnvelopeRejected
        ``oversize``, ``undecodable-tensors``, ``bad-signature``, ``wrong-run`` or
        ``wrong-round``.
    """
    if max_bytes is not None:
        _check_size(payload, max_bytes)
    claimed_run, claimed_round = _global_context(read_metadata(payload))
    statement = _global_statement(claimed_run, claimed_round, _sha256(payload))
    _verify(coordinator.sign_public, signature, statement, f"coordinator {coordinator.name!r}")
    _check_context(claimed_run, claimed_round, run_id, round)
    return deserialize_tensors(payload)


# ---------------------------------------------------------------------------------------------
# Steps: signatures


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _statement(domain: bytes, *fields: bytes) -> bytes:
    """Domain label, then each field prefixed by its 4-byte length: one encoding per tuple."""
    parts = [domain, b"\x00"]
    for field in fields:
        parts += [len(field).to_bytes(4, "big"), field]
    return b"".join(parts)


def _update_statement(header: UpdateHeader) -> bytes:
    return _statement(
        UPDATE_SIGNATURE_DOMAIN,
        header.version.to_bytes(2, "big"),
        header.run_id.encode("utf-8"),
        header.round.to_bytes(8, "big"),
        header.site.encode("utf-8"),
        header.payload_sha256,
    )


def _global_statement(run_id: str, round: int, payload_sha256: bytes) -> bytes:
    return _statement(
        GLOBAL_SIGNATURE_DOMAIN,
        FORMAT_VERSION.to_bytes(2, "big"),
        run_id.encode("utf-8"),
        round.to_bytes(8, "big"),
        payload_sha256,
    )


def _sign(key: ed25519.Ed25519PrivateKey, statement: bytes) -> bytes:
    return key.sign(statement)


def _verify(key: ed25519.Ed25519PublicKey, signature: bytes, statement: bytes,
            signer: str) -> None:
    try:
        key.verify(bytes(signature), statement)
    except InvalidSignature as error:
        raise EnvelopeRejected(RejectCode.BAD_SIGNATURE,
                               f"signature does not verify under the key of {signer}") from error


# ---------------------------------------------------------------------------------------------
# Steps: HPKE and framing


def _hpke_info(kem: str) -> bytes:
    return HPKE_INFO_LABEL + b"\x00" + kem.encode("ascii")


def _hpke_encrypt(plaintext: bytes, coordinator: PublicIdentity) -> bytes:
    suite = kem_suite(coordinator.kem)
    return suite.hpke_suite().encrypt(plaintext, suite.hpke_public(coordinator.hpke_public),
                                      _hpke_info(suite.name))


def _hpke_decrypt(ciphertext: bytes, coordinator: Identity) -> bytes:
    suite = kem_suite(coordinator.kem)
    try:
        return suite.hpke_suite().decrypt(ciphertext, suite.hpke_private(coordinator.hpke_private),
                                          _hpke_info(suite.name))
    except (InvalidTag, ValueError) as error:
        raise EnvelopeRejected(RejectCode.DECRYPTION_FAILED,
                               "HPKE decryption failed: corrupted, truncated or not sealed to "
                               "this coordinator's key") from error


def _clear_prefix(kem: str) -> bytes:
    name = kem.encode("ascii")
    return UPDATE_MAGIC + bytes([FORMAT_VERSION, len(name)]) + name


def _strip_prefix(blob: bytes, kem: str) -> bytes:
    head = len(UPDATE_MAGIC)
    if bytes(blob[:head]) != UPDATE_MAGIC or len(blob) < head + 2:
        raise EnvelopeRejected(RejectCode.UNSUPPORTED_ENVELOPE, "not a fedsilo update envelope")
    version, name_length = blob[head], blob[head + 1]
    if version != FORMAT_VERSION:
        raise EnvelopeRejected(RejectCode.UNSUPPORTED_ENVELOPE,
                               f"envelope format {version}, this coordinator reads "
                               f"{FORMAT_VERSION}")
    start = head + 2 + name_length
    sealed_for = bytes(blob[head + 2:start]).decode("ascii", errors="replace")
    if sealed_for != kem:
        raise EnvelopeRejected(RejectCode.UNSUPPORTED_ENVELOPE,
                               f"envelope sealed with kem {sealed_for!r}, coordinator uses {kem!r}")
    return bytes(blob[start:])


def _pack_plaintext(header: UpdateHeader, signature: bytes, payload: bytes) -> bytes:
    encoded = json.dumps(
        {"v": header.version, "run_id": header.run_id, "round": header.round,
         "site": header.site, "payload_sha256": header.payload_sha256.hex()},
        sort_keys=True, separators=(",", ":"),
    ).encode("utf-8")
    return b"".join([len(encoded).to_bytes(_HEADER_LENGTH_BYTES, "big"), encoded, signature,
                     payload])


def _unpack_plaintext(plaintext: bytes) -> tuple[UpdateHeader, bytes, bytes]:
    length = int.from_bytes(plaintext[:_HEADER_LENGTH_BYTES], "big")
    header_end = _HEADER_LENGTH_BYTES + length
    if len(plaintext) < header_end + SIGNATURE_BYTES or length > _MAX_HEADER_BYTES:
        raise EnvelopeRejected(RejectCode.MALFORMED_PLAINTEXT,
                               f"plaintext of {len(plaintext)} bytes cannot hold a "
                               f"{length}-byte header and a signature")
    header = _parse_header(plaintext[_HEADER_LENGTH_BYTES:header_end])
    signature = plaintext[header_end:header_end + SIGNATURE_BYTES]
    return header, signature, plaintext[header_end + SIGNATURE_BYTES:]


def _parse_header(encoded: bytes) -> UpdateHeader:
    try:
        fields = json.loads(encoded)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EnvelopeRejected(RejectCode.MALFORMED_PLAINTEXT,
                               f"header is not JSON: {error}") from error
    if not isinstance(fields, dict) or set(fields) != _HEADER_FIELDS:
        raise EnvelopeRejected(RejectCode.MALFORMED_PLAINTEXT,
                               f"header must have exactly the fields {sorted(_HEADER_FIELDS)}")
    if type(fields["v"]) is not int or fields["v"] != FORMAT_VERSION:
        raise EnvelopeRejected(RejectCode.MALFORMED_PLAINTEXT,
                               f"header version {fields['v']!r}, expected {FORMAT_VERSION}")
    return UpdateHeader(
        version=FORMAT_VERSION,
        run_id=_header_str(fields, "run_id"),
        round=_header_round(fields["round"]),
        site=_header_str(fields, "site"),
        payload_sha256=_header_digest(fields["payload_sha256"]),
    )


def _header_str(fields: dict[str, Any], name: str) -> str:
    value = fields[name]
    if not isinstance(value, str) or not value:
        raise EnvelopeRejected(RejectCode.MALFORMED_PLAINTEXT,
                               f"header {name} must be a non-empty string")
    return value


def _header_round(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= _MAX_ROUND:
        raise EnvelopeRejected(RejectCode.MALFORMED_PLAINTEXT,
                               f"header round {value!r} is not a non-negative integer")
    return value


def _header_digest(value: Any) -> bytes:
    try:
        digest = bytes.fromhex(value)
    except (TypeError, ValueError) as error:
        raise EnvelopeRejected(RejectCode.MALFORMED_PLAINTEXT,
                               "header payload_sha256 is not hex") from error
    if len(digest) != hashlib.sha256().digest_size:
        raise EnvelopeRejected(RejectCode.MALFORMED_PLAINTEXT,
                               "header payload_sha256 is not 32 bytes")
    return digest


# ---------------------------------------------------------------------------------------------
# Steps: checks


def _check_size(blob: bytes, max_bytes: int) -> None:
    if len(blob) > max_bytes:
        raise EnvelopeRejected(RejectCode.OVERSIZE,
                               f"{len(blob)} bytes exceeds the limit of {max_bytes} bytes")


def _enrolled_site(site: str, registry: Mapping[str, PublicIdentity]) -> PublicIdentity:
    public = registry.get(site)
    if public is None:
        raise EnvelopeRejected(RejectCode.UNKNOWN_SITE, f"site {site!r} is not enrolled")
    return public


def _check_context(claimed_run: str, claimed_round: int, run_id: str, round: int) -> None:
    if claimed_run != run_id:
        raise EnvelopeRejected(RejectCode.WRONG_RUN,
                               f"signed for run {claimed_run!r}, expected run {run_id!r}")
    if claimed_round != round:
        raise EnvelopeRejected(RejectCode.WRONG_ROUND,
                               f"signed for round {claimed_round}, expected round {round}")


def _check_digest(payload: bytes, signed_digest: bytes) -> None:
    if not hmac.compare_digest(_sha256(payload), signed_digest):
        raise EnvelopeRejected(RejectCode.DIGEST_MISMATCH,
                               "payload sha256 differs from the signed digest")


def _check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not run_id:
        raise ValueError(f"run_id must be a non-empty string, got {run_id!r}")
    return run_id


def _check_round(round: int) -> int:
    if type(round) is not int or not 0 <= round <= _MAX_ROUND:
        raise ValueError(f"round must be a non-negative integer, got {round!r}")
    return round


def _global_context(metadata: dict[str, str]) -> tuple[str, int]:
    run_id, round_text = metadata.get(RUN_ID_KEY), metadata.get(ROUND_KEY, "")
    if not run_id or not round_text.isdigit() or int(round_text) > _MAX_ROUND:
        raise EnvelopeRejected(RejectCode.UNDECODABLE_TENSORS,
                               "global payload metadata lacks a valid run id and round")
    return run_id, int(round_text)


# ---------------------------------------------------------------------------------------------
# Steps: metrics


def _encode_metrics(metrics: Mapping[str, float]) -> str:
    encoded = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or isinstance(value, bool):
            raise TypeError(f"metric {name!r}: names must be str and values numbers")
        encoded[name] = float(value)
    return json.dumps(encoded, sort_keys=True)


def _decode_metrics(metadata: dict[str, str]) -> dict[str, float]:
    try:
        metrics = json.loads(metadata[METRICS_KEY])
    except (KeyError, json.JSONDecodeError) as error:
        raise EnvelopeRejected(RejectCode.BAD_METRICS,
                               f"payload metadata has no readable {METRICS_KEY}") from error
    if not isinstance(metrics, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()
    ):
        raise EnvelopeRejected(RejectCode.BAD_METRICS, "metrics must map names to numbers")
    return {name: float(value) for name, value in metrics.items()}
