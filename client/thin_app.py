"""The ClientApp a deployed SuperNode starts for every message: it only hands the message to
the site's warm worker (``fedsilo site worker``) and returns the worker's reply.

Flower 1.42 starts a fresh ClientApp process per message; importing torch and reloading the
model there cost seconds every round. This module imports neither: the worker keeps the model
and the tokenized silo loaded for the whole federation. Node config ``worker-socket`` names
the worker's Unix socket.
"""

from __future__ import annotations

import logging
import socket

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.worker_protocol import decode_reply, encode_request, recv_frames, send_frames
from common.wire import site_error

log = logging.getLogger(__name__)

WORKER_TIMEOUT_S = 6 * 3600.0  # a round's local training; the coordinator's timeout governs

# LIMITATION: each message still costs a fresh flwr-clientapp process (about 1.1-1.4 s of CPU)
# and up to 3 s of the SuperNode's fixed poll, twice a round (train, evaluate): about 12 s a
# round with three sites on 2 cores. Folding evaluation into the next train reply would halve
# it; the rest needs Flower (a long-lived ClientApp process, a shorter SuperNode poll).
app = ClientApp()


def forward(msg: Message, context: Context) -> Message:
    """Send the message to the worker; an unreachable worker becomes the site's error reply."""
    node_config = context.node_config
    site = str(node_config.get("site", "unknown"))
    path = str(node_config.get("worker-socket", ""))
    try:
        if not path:
            raise ConnectionError("node config has no worker-socket; start the SuperNode with "
                                  "`fedsilo site join`")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(WORKER_TIMEOUT_S)
            conn.connect(path)
            send_frames(conn, encode_request(msg.metadata.message_type, context, msg.content))
            state, content = decode_reply(recv_frames(conn, 3))
        context.state = state
    except (OSError, ConnectionError, RuntimeError) as exc:
        log.warning("site %s: site worker unreachable: %s", site, exc)
        content = site_error(site, f"site worker unreachable ({type(exc).__name__}); "
                                   "the site operator restarts `fedsilo site join`")
    return Message(content=content, reply_to=msg)


app.train()(forward)
app.evaluate()(forward)
app.query()(forward)
