"""What a partner site's operator runs: keys, a silo check, and joining the federation.

A site home holds::

    keys/   <site>.key, <site>.pub.json (give to the coordinator), <site>.node-key,
            <site>.node-key.pub (give to the coordinator), coordinator.pub.json (received)
    run/    worker.sock (owner-only)     audit/  <site>.jsonl     logs/  supernode.log

``fedsilo site join`` keeps the model warm in its own process (the site worker) and starts a
``flower-supernode`` that connects to the coordinator's SuperLink over TLS, authenticated
with the site's SuperNode key. Stopping join (Ctrl-C, SIGTERM) stops both.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from pathlib import Path

from client.node_auth import generate_node_key, node_key_paths
from client.worker import SiteWorker
from common.config import FedsiloConfig
from common.federation import silo_dir
from common.keys import generate_identity, load_public, save_identity
from common.processes import die_with_parent, flower_env, stop_pid, tail
from server.enrollment import COORDINATOR

log = logging.getLogger(__name__)


class SiteSetupError(RuntimeError):
    """A site step cannot go on; the message says what to do."""

SUPERNODE_PORT = 39511  # the SuperNode's local runtime API (loopback only)


def init_site(root: Path, site: str, kem: str = "x25519") -> dict[str, Path]:
    """The site's identity (update encryption and signatures) and its SuperNode key."""
    keys = Path(root) / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    keys.chmod(0o700)
    identity_files = save_identity(generate_identity(site, kem), keys)
    _, node_public = generate_node_key(site, keys)
    return {"identity": Path(identity_files[1]), "node_key": node_public}


def site_config(cfg: FedsiloConfig, site: str, root: Path, silo: Path | None) -> FedsiloConfig:
    """The federation's config as this site runs it: its silo, its keys, its audit log."""
    sites = []
    for spec in cfg.federation.sites:
        if spec.id == site and silo is not None:
            spec = spec.model_copy(update={"silo": Path(silo).resolve()})
        sites.append(spec)
    if site not in [spec.id for spec in sites]:
        raise SiteSetupError(f"site {site!r} is not in the federation config "
                              f"({', '.join(cfg.site_ids())})")
    security = cfg.security.model_copy(update={"keys_dir": Path(root).resolve() / "keys",
                                               "audit_dir": Path(root).resolve() / "audit"})
    federation = cfg.federation.model_copy(update={"sites": sites})
    return cfg.model_copy(update={"federation": federation, "security": security})


# What a SuperNode's log says when it ends early, and what the operator should do.
SUPERNODE_FAILURES = (
    ("address already in use",
     "port {port} is already in use (another site on this machine?); pass another --port"),
    ("certificate_verify_failed",
     "TLS: the SuperLink's certificate does not verify against {ca}; is it the coordinator's "
     "ca.pem, and does --superlink use a name the certificate is valid for?"),
    ("failed to activate supernode",
     "the SuperLink refused this site's SuperNode key: not enrolled yet, or revoked; ask the "
     "coordinator to enroll {node_key}.pub"),
)
CONNECT_WARN_S = 30.0


def diagnose(log_text: str, **details) -> str:
    """The operator-facing reason a SuperNode ended, from its log."""
    lowered = log_text.lower()
    for needle, message in SUPERNODE_FAILURES:
        if needle in lowered:
            return message.format(**details)
    return ("the SuperNode ended (revoked by the coordinator, or the SuperLink is gone); see "
            "{log}").format(**details)


class SuperNodeWatch:
    """Tells the worker to keep serving while the SuperNode lives; says when it has not
    connected yet (a wrong --superlink address retries silently otherwise)."""

    def __init__(self, process: subprocess.Popen, log_file: Path, superlink: str) -> None:
        self.process, self.log_file, self.superlink = process, log_file, superlink
        self.started = time.monotonic()
        self.connected = False
        self._next_check = self.started + 5.0
        self._next_warning = self.started + CONNECT_WARN_S

    def __call__(self) -> bool:
        if self.process.poll() is not None:
            return False
        now = time.monotonic()
        if not self.connected and now >= self._next_check:
            self._next_check = now + 5.0
            if "SuperNode ID" in tail(self.log_file, 200):
                self.connected = True
                log.info("connected to the SuperLink at %s", self.superlink)
            elif now >= self._next_warning:
                self._next_warning = now + 60.0
                log.warning("not connected to %s after %.0f s; retrying. Is the address right "
                            "and the coordinator's SuperLink running?", self.superlink,
                            now - self.started)
        return True


def _check_home(root: Path, site: str) -> Path:
    keys = root / "keys"
    node_key, _ = node_key_paths(site, keys)
    if not node_key.is_file():
        owners = sorted(p.name.split(".")[0] for p in keys.glob("*.node-key"))
        if owners:
            raise SiteSetupError(f"{root} is the home of site {', '.join(owners)}, not of "
                                 f"{site}; use that site's own home folder")
        raise SiteSetupError(f"{node_key}: no SuperNode key; run `fedsilo site init {root} "
                             f"--site {site}` first")
    return node_key


def _check_silo_country(cfg: FedsiloConfig, site: str) -> None:
    """A prepared silo names its country: refuse another country's data under this site."""
    manifest = silo_dir(cfg, site) / "manifest.json"
    try:
        country = json.loads(manifest.read_text(encoding="utf-8")).get("country")
    except (OSError, ValueError):
        return  # the site's own data (no manifest): nothing to compare
    if country and country != site:
        raise SiteSetupError(f"{manifest.parent} is the silo of {country!r}, not of {site!r}; "
                             "pass this site's own --silo")


def join(cfg: FedsiloConfig, site: str, root: Path, superlink: str, ca_cert: Path,
         coordinator_key: Path | None = None, port: int = SUPERNODE_PORT) -> int:
    """Warm the site's model, start the SuperNode, serve rounds until stopped; exit code."""
    root = Path(root).resolve()
    keys = root / "keys"
    node_key = _check_home(root, site)
    _check_silo_country(cfg, site)
    if coordinator_key is not None:
        if load_public(coordinator_key).name != COORDINATOR:
            raise SiteSetupError(f"{coordinator_key} is not the coordinator's public identity")
        shutil.copyfile(coordinator_key, keys / f"{COORDINATOR}.pub.json")
    if cfg.security.enabled and not (keys / f"{COORDINATOR}.pub.json").is_file():
        raise SiteSetupError(f"{keys}: no coordinator.pub.json; pass --coordinator-key")

    (root / "audit").mkdir(mode=0o700, exist_ok=True)
    worker = SiteWorker(cfg, site, root / "run" / "worker.sock")
    try:
        worker.bind()  # first: a second join of the same site stops here, in a second
    except RuntimeError as exc:
        raise SiteSetupError(f"{exc}; this site is already joined") from None
    warm_s = worker.warm_up()
    log.info("site %s: model and silo loaded in %.1f s", site, warm_s)
    worker.install_signal_handlers()

    log_file = root / "logs" / "supernode.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_start = log_file.stat().st_size if log_file.exists() else 0
    node_config = f"site='{site}' worker-socket='{worker.socket_path}'"
    command = ["flower-supernode", "--superlink", superlink,
               "--root-certificates", str(Path(ca_cert).resolve()),
               "--auth-supernode-private-key", str(node_key),
               "--node-config", node_config, "--host", "127.0.0.1", "--port", str(port)]
    with log_file.open("ab") as handle:
        supernode = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=flower_env(root / "flwr"),
                                     cwd=root, start_new_session=True,
                                     preexec_fn=die_with_parent)  # noqa: PLW1509 - only prctl
    log.info("site %s: SuperNode started (PID %d), connecting to %s", site, supernode.pid,
             superlink)
    try:
        worker.serve(keep_going=SuperNodeWatch(supernode, log_file, superlink))
    finally:
        if supernode.poll() is None:
            stop_pid(supernode.pid)
    if worker.stopped_by_signal:
        return 0
    with log_file.open("rb") as handle:
        handle.seek(log_start)
        text = handle.read().decode(errors="replace")
    log.error("site %s: %s", site, diagnose(text, port=port, ca=ca_cert, node_key=node_key,
                                            log=log_file))
    return 1
