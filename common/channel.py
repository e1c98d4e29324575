"""How adapters cross between coordinator and sites: sealed (default) or plain.

Sealed: the coordinator signs the global adapter it sends out; a site's update and metrics
are serialized with safetensors, signed by the site and encrypted to the coordinator with
HPKE, so the relay (Flower's SuperLink) sees only ciphertext. Both ends write every message
to their audit log. Plain: Flower arrays and metrics in the clear, for benchmarking only.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from common.audit import AuditLog
from common.egress import EgressPolicy
from common.envelope import EnvelopeRejected, open_update, seal_update, sign_global, verify_global
from common.keys import Identity, PublicIdentity
from common.wire import STATUS_OK, AdapterState, record_to_state, state_to_record

log = logging.getLogger(__name__)

SEALED_KEY = "sealed"


class ChannelRejected(ValueError):
    """A message that failed decryption, authentication or decoding, with the reason."""


def _bytes_record(**blobs: bytes) -> ArrayRecord:
    return ArrayRecord(
        array_dict={k: Array.from_numpy_ndarray(np.frombuffer(v, np.uint8)) for k, v in
                    blobs.items()}
    )


def _record_bytes(record: ArrayRecord, key: str) -> bytes:
    if key not in record:
        raise ChannelRejected(f"message lacks the {key!r} blob")
    return record[key].numpy().tobytes()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _audit(audit: AuditLog | None, **fields) -> None:
    if audit is not None:
        audit.append("message", **fields)


@dataclass
class CoordinatorChannel:
    """The coordinator's end: signs what goes out, opens and authenticates what comes in."""

    run_id: str
    identity: Identity | None  # None: plain channel
    registry: Mapping[str, PublicIdentity]
    max_update_bytes: int
    audit: AuditLog | None = None

    @property
    def sealed(self) -> bool:
        return self.identity is not None

    def pack_global(self, state: AdapterState, round_number: int) -> ArrayRecord:
        if not self.sealed:
            return state_to_record(state)
        payload, signature = sign_global(
            state, run_id=self.run_id, round=round_number, coordinator=self.identity
        )
        _audit(self.audit, round=round_number, peer="all sites", direction="sent",
               size_bytes=len(payload), payload_digest=_digest(payload), decision="signed")
        return _bytes_record(payload=payload, signature=signature)

    def open_reply(
        self, site: str, content: RecordDict, round_number: int
    ) -> tuple[AdapterState, dict[str, float]]:
        """The tensors and metrics of a site's reply; raises ChannelRejected with the reason."""
        if not self.sealed:
            state = record_to_state(content["arrays"]) if "arrays" in content else {}
            metrics = dict(content["metrics"]) if "metrics" in content else {}
            return state, metrics
        blob = b""
        try:
            if "update" not in content:
                raise ChannelRejected("reply carries no sealed update")
            blob = _record_bytes(content["update"], SEALED_KEY)
            opened = open_update(
                blob, coordinator=self.identity, registry=self.registry, run_id=self.run_id,
                round=round_number, max_bytes=self.max_update_bytes,
            )
            if opened.site != site:
                raise ChannelRejected(f"update signed by site {opened.site!r}, sent as {site!r}")
        except (EnvelopeRejected, ChannelRejected) as exc:
            _audit(self.audit, round=round_number, peer=site, direction="received",
                   size_bytes=len(blob), payload_digest=_digest(blob), decision="rejected",
                   reason=str(exc))
            raise ChannelRejected(str(exc)) from None
        _audit(self.audit, round=round_number, peer=site, direction="received",
               size_bytes=len(blob), payload_digest=opened.payload_digest, decision="accepted")
        return dict(opened.tensors), dict(opened.metrics)

    def note_rejection(self, site: str, round_number: int, reason: str) -> None:
        """Record a reply that passed the channel but failed validation later."""
        _audit(self.audit, round=round_number, peer=site, direction="received", size_bytes=0,
               payload_digest="", decision="rejected", reason=reason)


@dataclass
class SiteChannel:
    """A site's end: verifies the coordinator's adapter, guards and seals what leaves."""

    site: str
    identity: Identity | None  # None: plain channel
    coordinator: PublicIdentity | None
    guard: EgressPolicy | None = None
    audit: AuditLog | None = None

    @property
    def sealed(self) -> bool:
        return self.identity is not None

    def open_global(self, record: ArrayRecord, run_id: str, round_number: int) -> AdapterState:
        if not self.sealed:
            return record_to_state(record)
        payload = _record_bytes(record, "payload")
        try:
            state = verify_global(
                payload, _record_bytes(record, "signature"), run_id=run_id,
                round=round_number, coordinator=self.coordinator,
            )
        except EnvelopeRejected as exc:
            _audit(self.audit, round=round_number, peer="coordinator", direction="received",
                   size_bytes=len(payload), payload_digest=_digest(payload),
                   decision="rejected", reason=str(exc))
            raise ChannelRejected(f"global adapter refused: {exc}") from None
        _audit(self.audit, round=round_number, peer="coordinator", direction="received",
               size_bytes=len(payload), payload_digest=_digest(payload), decision="accepted")
        return dict(state)

    def pack_reply(
        self,
        state: AdapterState | None,
        metrics: Mapping[str, float],
        run_id: str,
        round_number: int,
    ) -> RecordDict:
        """The reply content, after the egress guard; sealed to the coordinator by default."""
        if self.guard is not None:
            try:
                self.guard.check_update(state, metrics)
            except ValueError as exc:
                _audit(self.audit, round=round_number, peer="coordinator", direction="sent",
                       size_bytes=0, payload_digest="", decision="blocked", reason=str(exc))
                log.error("site %s round %s: egress guard blocked the reply: %s", self.site,
                          round_number, exc)
                raise
        content = RecordDict({"site": ConfigRecord({"site": self.site, "status": STATUS_OK})})
        if not self.sealed:
            if state is not None:
                content["arrays"] = state_to_record(state)
            content["metrics"] = MetricRecord(dict(metrics))
        else:
            blob = seal_update(
                state or {}, metrics=metrics, run_id=run_id, round=round_number, site=self.site,
                sender=self.identity, coordinator=self.coordinator,
            )
            content["update"] = _bytes_record(**{SEALED_KEY: blob})
            _audit(self.audit, round=round_number, peer="coordinator", direction="sent",
                   size_bytes=len(blob), payload_digest=_digest(blob), decision="sealed")
        if self.guard is not None:
            self.guard.check_content(content)
        return content
