"""The coordinator's deployment: its home folder, the SuperLink process, enrollment, runs.

A coordinator home holds everything the coordinator runs with::

    tls/        ca.pem (give to sites), ca.key, superlink.pem, superlink.key
    keys/       coordinator.key, coordinator.pub.json (give to sites), <site>.pub.json
    flwr/       FLWR_HOME of the flwr CLI (config.toml naming this SuperLink only)
    fedsilo-app/  the Flower app submitted by `fedsilo run` (a pyproject naming fedsilo's apps)
    logs/       superlink.log;  superlink.pid;  coordinator.json (host, port)

Flower's own processes (``flower-superlink``, ``flwr``) are started with fedsilo's offline
switches and on the configured host only.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from common.keys import generate_identity, load_public, save_identity
from common.processes import die_with_parent, flower_env, stop_pid, tail
from server.enrollment import COORDINATOR
from server.pki import TlsFiles, check_server_certificate, create_ca, issue_server_certificate
from server.report import atomic_write

log = logging.getLogger(__name__)

CONNECTION = "fedsilo"  # the SuperLink's name in the flwr CLI's config.toml
DEFAULT_PORT = 39500
START_TIMEOUT_S = 90.0
APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedsilo-app"
version = "1.0.0"
description = "fedsilo federated LoRA fine-tuning (apps installed with the fedsilo package)"
license = "Apache-2.0"
dependencies = ["fedsilo"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedsilo"

[tool.flwr.app.components]
serverapp = "server.deployed:app"
clientapp = "client.thin_app:app"

[tool.flwr.app.config]
fedsilo-config = ""
run-dir = ""
"""


class DeploymentError(RuntimeError):
    """A deployment step failed; the message says what to do."""


@dataclass(frozen=True)
class CoordinatorHome:
    root: Path

    @property
    def tls(self) -> TlsFiles:
        folder = self.root / "tls"
        return TlsFiles(ca_cert=folder / "ca.pem", cert=folder / "superlink.pem",
                        key=folder / "superlink.key")

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr"

    @property
    def app_dir(self) -> Path:
        return self.root / "fedsilo-app"

    @property
    def pid_file(self) -> Path:
        return self.root / "logs" / "superlink.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "logs" / "superlink.log"

    def settings(self) -> dict:
        path = self.root / "coordinator.json"
        if not path.is_file():
            raise DeploymentError(f"{self.root}: not a coordinator home (no coordinator.json); "
                                  "create one with `fedsilo coordinator init`")
        return json.loads(path.read_text(encoding="utf-8"))

    def enrolled(self) -> dict[str, list[int]]:
        """Site id -> the SuperNode ids registered for it (Flower does not list names)."""
        path = self.root / "enrolled.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def save_enrolled(self, enrolled: dict[str, list[int]]) -> None:
        atomic_write(self.root / "enrolled.json", json.dumps(enrolled, indent=1) + "\n")

    def address(self) -> str:
        settings = self.settings()
        return f"{settings['host']}:{settings['port']}"


def init_coordinator(root: Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                     cert_hosts: list[str] | None = None, own_tls: TlsFiles | None = None,
                     kem: str = "x25519") -> CoordinatorHome:
    """Create the coordinator home: CA and SuperLink certificate (or the operator's own),
    the coordinator's identity, the flwr CLI's connection and the app to submit."""
    home = CoordinatorHome(Path(root).resolve())
    if not cert_hosts and host in ("0.0.0.0", "::"):
        raise DeploymentError("listening on all interfaces: name the address sites use "
                              "with --cert-host")
    if (home.root / "coordinator.json").exists():
        raise DeploymentError(f"{home.root} is already a coordinator home")
    home.root.mkdir(parents=True, exist_ok=True)
    tls_dir = home.root / "tls"
    tls_dir.mkdir(mode=0o700, exist_ok=True)
    if own_tls is None:
        ca_cert, ca_key = create_ca(tls_dir)
        issue_server_certificate(tls_dir, ca_cert, ca_key, cert_hosts or [host, "localhost"])
    else:
        check_server_certificate(own_tls, (cert_hosts or [host])[0])
        for source, dest in zip(own_tls.__dict__.values(), home.tls.__dict__.values()):
            shutil.copyfile(source, dest)
        home.tls.key.chmod(0o600)
    check_server_certificate(home.tls, (cert_hosts or [host])[0])

    home.keys_dir.mkdir(mode=0o700, exist_ok=True)
    save_identity(generate_identity(COORDINATOR, kem), home.keys_dir)
    home.flwr_home.mkdir(exist_ok=True)
    (home.flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "{host}:{port}"\nroot-certificates = "{home.tls.ca_cert.resolve()}"\n',
        encoding="utf-8",
    )
    home.app_dir.mkdir(exist_ok=True)
    (home.app_dir / "pyproject.toml").write_text(APP_PYPROJECT, encoding="utf-8")
    (home.root / "logs").mkdir(exist_ok=True)
    (home.root / "coordinator.json").write_text(
        json.dumps({"host": host, "port": port}, indent=1) + "\n", encoding="utf-8")
    log.info("coordinator home ready in %s", home.root)
    return home


# ------------------------------------------------------------------------------------------
# The SuperLink process
# ------------------------------------------------------------------------------------------


def running_pid(pid_file: Path, expect: str) -> int | None:
    """The PID in ``pid_file`` if that process is alive and is ``expect`` (by command line)."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError):
        return None
    return pid if expect in cmdline else None


def start_superlink(home: CoordinatorHome, timeout_s: float = START_TIMEOUT_S,
                    tied: bool = False) -> int:
    """Start ``flower-superlink`` with TLS and SuperNode authentication; wait until it answers.

    ``tied``: the SuperLink ends when this process ends (a foreground command in a container);
    otherwise it keeps running in the background until ``stop_superlink``.
    """
    if (pid := running_pid(home.pid_file, "flower-superlink")) is not None:
        raise DeploymentError(f"the SuperLink of {home.root} is already running (PID {pid})")
    settings = home.settings()
    tls = home.tls
    command = [
        "flower-superlink",
        "--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.cert),
        "--ssl-keyfile", str(tls.key),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--host", str(settings["host"]), "--port", str(settings["port"]),
        "--database", str(home.root / "logs" / "superlink-state.db"),
    ]
    log_handle = home.log_file.open("ab")
    process = subprocess.Popen(command, stdout=log_handle, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, env=flower_env(home.flwr_home),
                               cwd=home.root, start_new_session=True,
                               preexec_fn=die_with_parent if tied else None)  # noqa: PLW1509
    log_handle.close()
    home.pid_file.write_text(f"{process.pid}\n")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log_text = tail(home.log_file, 60)
            if "address already in use" in log_text.lower():
                raise DeploymentError(f"port {settings['port']} on {settings['host']} is "
                                      "already in use (another SuperLink?); stop it or pick "
                                      "another port in a new home (coordinator init --port)")
            raise DeploymentError(f"flower-superlink exited with {process.returncode}; see "
                                  f"{home.log_file}:\n{tail(home.log_file)}")
        if tls_answers(settings["host"], int(settings["port"]), tls.ca_cert):
            log.info("SuperLink up on %s:%s (PID %d)", settings["host"], settings["port"],
                     process.pid)
            return process.pid
        time.sleep(0.5)
    stop_pid(process.pid)
    raise DeploymentError(f"the SuperLink did not answer within {timeout_s:.0f} s; see "
                          f"{home.log_file}")


def tls_answers(host: str, port: int, ca_cert: Path) -> bool:
    """True when a TLS handshake that verifies against ``ca_cert`` succeeds."""
    context = ssl.create_default_context(cafile=str(ca_cert))
    try:
        with socket.create_connection((host, port), timeout=2) as raw, \
                context.wrap_socket(raw, server_hostname=host):
            return True
    except (OSError, ssl.SSLError):
        return False


def stop_superlink(home: CoordinatorHome) -> bool:
    pid = running_pid(home.pid_file, "flower-superlink")
    if pid is None:
        return False
    stop_pid(pid)
    home.pid_file.unlink(missing_ok=True)
    log.info("SuperLink (PID %d) stopped", pid)
    return True


# ------------------------------------------------------------------------------------------
# The flwr CLI: enrollment and runs
# ------------------------------------------------------------------------------------------


def flwr(home: CoordinatorHome, *args: str, timeout_s: float = 120.0) -> dict:
    """Run a ``flwr`` CLI command with JSON output against this coordinator's SuperLink."""
    command = ["flwr", *args, "--format", "json"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False,
                              env=flower_env(home.flwr_home), cwd=home.root)
    except subprocess.TimeoutExpired:
        raise DeploymentError(f"`{' '.join(command[:3])}` did not answer in {timeout_s:.0f} s; "
                              "is the SuperLink running (`fedsilo coordinator start`)?") from None
    try:
        result = json.loads(done.stdout[done.stdout.find("{"):])
    except json.JSONDecodeError:
        raise DeploymentError(f"`{' '.join(command[:3])}` failed (exit {done.returncode}): "
                              f"{(done.stderr or done.stdout).strip()[-600:]}") from None
    if not result.get("success", False):
        message = str(result.get("error-message", result))
        hint = ""
        if "unavailable" in message.lower():
            hint = f"; is the SuperLink running? (fedsilo coordinator start {home.root})"
        raise DeploymentError(f"`{' '.join(command[:3])}` failed: {message}{hint}")
    return result


def enroll_site(home: CoordinatorHome, site: str, node_key: Path, identity: Path) -> int:
    """Register the site's SuperNode key at the SuperLink and its identity in the registry."""
    from client.node_auth import check_node_public_key

    check_node_public_key(node_key)
    public = load_public(identity)
    if public.name != site:
        raise DeploymentError(f"{identity} is the identity of {public.name!r}, not of {site!r}")
    result = flwr(home, "supernode", "register", str(Path(node_key).resolve()), CONNECTION,
                  "--name", site)
    shutil.copyfile(identity, home.keys_dir / f"{site}.pub.json")
    node_id = int(result["node-id"])
    enrolled = home.enrolled()
    enrolled[site] = sorted(set(enrolled.get(site, [])) | {node_id})
    home.save_enrolled(enrolled)
    log.info("site %s enrolled: SuperNode key registered (node %d), identity %s", site,
             node_id, public.fingerprint())
    return node_id


def enrolled_nodes(home: CoordinatorHome) -> list[dict]:
    """The SuperNodes registered at the SuperLink (id, status), each with its site's id."""
    site_of = {node_id: site for site, ids in home.enrolled().items() for node_id in ids}
    nodes = list(flwr(home, "supernode", "ls", CONNECTION).get("nodes", []))
    for node in nodes:
        node["site"] = site_of.get(int(node["node-id"]), "?")
    return nodes


def revoke_site(home: CoordinatorHome, site: str) -> list[int]:
    """Unregister every SuperNode key enrolled for ``site`` and drop its identity: the site
    can no longer join, and its sealed updates would be refused. Returns the node ids."""
    enrolled = home.enrolled()
    identity = home.keys_dir / f"{site}.pub.json"
    if site not in enrolled and not identity.exists():
        raise DeploymentError(f"no SuperNode key or identity is enrolled for site {site!r}")
    revoked = enrolled.pop(site, [])
    for node_id in revoked:
        flwr(home, "supernode", "unregister", str(node_id), CONNECTION)
    home.save_enrolled(enrolled)
    identity.unlink(missing_ok=True)
    log.info("site %s revoked (SuperNodes %s)", site, revoked)
    return revoked


def submit_run(home: CoordinatorHome, config_path: Path, run_dir: Path,
               app_dir: Path | None = None) -> int:
    """Submit fedsilo's app (or ``app_dir``, a variant) as a run; its run id."""
    run_config = f"fedsilo-config='{config_path.resolve()}' run-dir='{run_dir.resolve()}'"
    result = flwr(home, "run", str(app_dir or home.app_dir), CONNECTION, "--run-config",
                  run_config)
    return int(result["run-id"])


def run_status(home: CoordinatorHome, run_id: int) -> dict:
    result = flwr(home, "ls", CONNECTION, "--run-id", str(run_id), timeout_s=60.0)
    runs = result.get("runs") or []
    if not runs:
        raise DeploymentError(f"the SuperLink knows no run {run_id}")
    return runs[0]


def stop_run(home: CoordinatorHome, run_id: int) -> None:
    flwr(home, "stop", str(run_id), CONNECTION)
