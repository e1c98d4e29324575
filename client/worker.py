"""The site's long-lived worker: the base model, the LoRA adapter and the tokenized silo stay
loaded for the whole federation; each per-message ClientApp hands its message over a Unix
socket (see ``client.thin_app``).

The socket lives in an owner-only directory and is itself owner-only: only the site
operator's account can talk to the worker. One message is served at a time.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from client.app import runtime_for, site_reply
from client.worker_protocol import (
    WorkerProtocolError,
    decode_request,
    encode_reply,
    recv_frames,
    send_frames,
)
from common.config import FedsiloConfig

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 300.0  # to read one request; replies are bounded by the training itself


class SiteWorker:
    """Serve ``site`` of ``cfg`` on a Unix socket at ``socket_path`` until stopped."""

    def __init__(self, cfg: FedsiloConfig, site: str, socket_path: Path) -> None:
        if site not in cfg.site_ids():
            raise ValueError(f"site {site!r} is not in the federation "
                             f"({', '.join(cfg.site_ids())})")
        self.cfg = cfg
        self.site = site
        self.socket_path = Path(socket_path)
        self.served = 0
        self._stop = threading.Event()
        self._listener: socket.socket | None = None

    def warm_up(self) -> float:
        """Load the model and tokenize the silo now, not in the first round; seconds taken."""
        started = time.perf_counter()
        runtime = runtime_for(self.cfg)
        runtime.use_site(self.site)
        for split in ("train", "test"):
            runtime.split(self.site, split)
        runtime.egress_policy()
        return time.perf_counter() - started

    def bind(self) -> None:
        folder = self.socket_path.parent
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
        if self.socket_path.exists():
            if _answers(self.socket_path):
                raise RuntimeError(f"{self.socket_path}: another site worker is running")
            self.socket_path.unlink()  # left over from a worker that died
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            listener.bind(str(self.socket_path))
        finally:
            os.umask(old_umask)
        listener.listen(4)
        listener.settimeout(0.5)
        self._listener = listener

    def serve(self, max_messages: int | None = None,
              keep_going: Callable[[], bool] | None = None) -> None:
        """Answer messages until :meth:`stop` (or SIGTERM/SIGINT in the main thread), or until
        ``keep_going`` (checked twice a second) says no."""
        if self._listener is None:
            self.bind()
        log.info("site %s: worker ready on %s", self.site, self.socket_path)
        try:
            while not self._stop.is_set():
                if max_messages is not None and self.served >= max_messages:
                    break
                if keep_going is not None and not keep_going():
                    break
                try:
                    conn, _ = self._listener.accept()
                except TimeoutError:
                    continue
                with conn:
                    self._serve_one(conn)
        finally:
            self._listener.close()
            self.socket_path.unlink(missing_ok=True)
            log.info("site %s: worker stopped after %d messages", self.site, self.served)

    def stop(self, *_args) -> None:
        self._stop.set()

    @property
    def stopped_by_signal(self) -> bool:
        """True when :meth:`stop` ended serving (an operator's Ctrl-C or SIGTERM)."""
        return self._stop.is_set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def _serve_one(self, conn: socket.socket) -> None:
        conn.settimeout(REQUEST_TIMEOUT_S)
        try:
            message_type, context, content = decode_request(recv_frames(conn, 3))
        except (WorkerProtocolError, OSError, ValueError) as exc:
            log.warning("site %s: dropped a malformed request: %s", self.site, exc)
            return
        claimed = str(context.node_config.get("site", self.site))
        if claimed != self.site:
            log.warning("site %s: refused a message for site %s", self.site, claimed)
            return
        context.node_config = {**context.node_config, "site": self.site}
        started = time.perf_counter()
        reply = site_reply(self.cfg, message_type, content, context)
        self.served += 1
        log.info("site %s: %s message served in %.1f s", self.site, message_type,
                 time.perf_counter() - started)
        try:
            send_frames(conn, encode_reply(context.state, reply))
        except OSError as exc:
            log.warning("site %s: the ClientApp went away before the reply: %s", self.site, exc)


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True
