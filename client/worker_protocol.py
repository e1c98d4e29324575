"""The wire between a thin per-message ClientApp and the site's long-lived worker.

One request per connection over a Unix socket (owner-only): the message type, the node's
Flower ``Context`` and the message content, each as a length-prefixed frame; the reply is the
updated node state and the reply content. Contents travel as Flower's own protobuf
serialization, never pickle. Kept free of torch so the thin ClientApp starts fast.
"""

from __future__ import annotations

import json
import socket
import struct

from flwr.app import Context, RecordDict
from flwr.common.serde import (
    context_from_proto,
    context_to_proto,
    recorddict_from_proto,
    recorddict_to_proto,
)
from flwr.proto.message_pb2 import Context as ProtoContext
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

PROTOCOL = "fedsilo-site-worker/1"
MAX_FRAME_BYTES = 1 << 30  # an update is tens of MB at most; this bounds a hostile frame
_LENGTH = struct.Struct(">Q")


class WorkerProtocolError(RuntimeError):
    """The other end sent something that is not this protocol, or went away mid-message."""


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = conn.recv(min(left, 1 << 20))
        if not chunk:
            raise WorkerProtocolError(f"connection closed with {left} of {size} bytes unread")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def send_frames(conn: socket.socket, frames: list[bytes]) -> None:
    for frame in frames:
        conn.sendall(_LENGTH.pack(len(frame)) + frame)


def recv_frames(conn: socket.socket, count: int) -> list[bytes]:
    frames = []
    for _ in range(count):
        (size,) = _LENGTH.unpack(_recv_exact(conn, _LENGTH.size))
        if size > MAX_FRAME_BYTES:
            raise WorkerProtocolError(f"frame of {size} bytes exceeds {MAX_FRAME_BYTES}")
        frames.append(_recv_exact(conn, size))
    return frames


def encode_request(message_type: str, context: Context, content: RecordDict) -> list[bytes]:
    header = json.dumps({"protocol": PROTOCOL, "message_type": message_type}).encode()
    return [header, context_to_proto(context).SerializeToString(),
            recorddict_to_proto(content).SerializeToString()]


def decode_request(frames: list[bytes]) -> tuple[str, Context, RecordDict]:
    header = _header(frames[0])
    context = context_from_proto(ProtoContext.FromString(frames[1]))
    content = recorddict_from_proto(ProtoRecordDict.FromString(frames[2]))
    return str(header["message_type"]), context, content


def encode_reply(state: RecordDict, content: RecordDict) -> list[bytes]:
    header = json.dumps({"protocol": PROTOCOL}).encode()
    return [header, recorddict_to_proto(state).SerializeToString(),
            recorddict_to_proto(content).SerializeToString()]


def decode_reply(frames: list[bytes]) -> tuple[RecordDict, RecordDict]:
    _header(frames[0])
    return (recorddict_from_proto(ProtoRecordDict.FromString(frames[1])),
            recorddict_from_proto(ProtoRecordDict.FromString(frames[2])))


def _header(frame: bytes) -> dict:
    try:
        header = json.loads(frame)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WorkerProtocolError("not a fedsilo site-worker header") from None
    if not isinstance(header, dict) or header.get("protocol") != PROTOCOL:
        raise WorkerProtocolError(f"expected protocol {PROTOCOL}, got {header!r:.80}")
    return header
