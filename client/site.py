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

import logging
import shutil
import subprocess
from pathlib import Path

from client.node_auth import generate_node_key, node_key_paths
from client.worker import SiteWorker
from common.config import FedsiloConfig
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


def join(cfg: FedsiloConfig, site: str, root: Path, superlink: str, ca_cert: Path,
         coordinator_key: Path | None = None, port: int = SUPERNODE_PORT) -> int:
    """Warm the site's model, start the SuperNode, serve rounds until stopped; exit code."""
    root = Path(root).resolve()
    keys = root / "keys"
    node_key, _ = node_key_paths(site, keys)
    if not node_key.is_file():
        raise SiteSetupError(f"{node_key}: no SuperNode key; run `fedsilo site init` first")
    if coordinator_key is not None:
        if load_public(coordinator_key).name != COORDINATOR:
            raise SiteSetupError(f"{coordinator_key} is not the coordinator's public identity")
        shutil.copyfile(coordinator_key, keys / f"{COORDINATOR}.pub.json")
    if cfg.security.enabled and not (keys / f"{COORDINATOR}.pub.json").is_file():
        raise SiteSetupError(f"{keys}: no coordinator.pub.json; pass --coordinator-key")

    (root / "audit").mkdir(mode=0o700, exist_ok=True)
    worker = SiteWorker(cfg, site, root / "run" / "worker.sock")
    warm_s = worker.warm_up()
    log.info("site %s: model and silo loaded in %.1f s", site, warm_s)
    worker.bind()
    worker.install_signal_handlers()

    log_file = root / "logs" / "supernode.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
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
        worker.serve(keep_going=lambda: supernode.poll() is None)
    finally:
        if supernode.poll() is None:
            stop_pid(supernode.pid)
    code = supernode.returncode
    if code not in (0, None, -15):
        log.error("site %s: the SuperNode exited with %s (refused by the SuperLink? is the "
                  "site enrolled?); last lines of %s:\n%s", site, code, log_file, tail(log_file))
        return 1
    return 0
