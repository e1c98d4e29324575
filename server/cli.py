"""`fedsilo coordinator ...` and `fedsilo run`: what the coordinator's operator runs."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Annotated

import typer

from common.console import ConfigOption, SetOption, console, fail, load, setup_logging

coordinator_app = typer.Typer(help="The coordinator: CA, SuperLink, enrollment.",
                              no_args_is_help=True)
HomeArg = Annotated[Path, typer.Argument(help="The coordinator home folder.")]
STATUS_POLL_S = 2.0


def _home(root: Path):
    from server.deploy import CoordinatorHome, DeploymentError

    home = CoordinatorHome(Path(root).resolve())
    try:
        home.settings()
    except DeploymentError as exc:
        fail(str(exc))
    return home


@coordinator_app.command("init")
def coordinator_init(
    root: HomeArg,
    host: Annotated[str, typer.Option(help="Address the SuperLink listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The SuperLink's port (HTTPS).")] = 39500,
    cert_host: Annotated[list[str] | None, typer.Option(
        help="Names/IPs the certificate is valid for (repeatable; default: host, localhost)."
    )] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="Your own SuperLink certificate.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Its private key (PEM).")] = None,
    tls_ca: Annotated[Path | None, typer.Option(help="The CA that signed it.")] = None,
) -> None:
    """Create the federation's CA, the SuperLink certificate and the coordinator's keys."""
    setup_logging(False)
    from server.deploy import DeploymentError, init_coordinator
    from server.pki import CertificateError, TlsFiles

    own = None
    if any((tls_cert, tls_key, tls_ca)):
        if not all((tls_cert, tls_key, tls_ca)):
            fail("give all three of --tls-cert, --tls-key and --tls-ca, or none")
        own = TlsFiles(ca_cert=tls_ca, cert=tls_cert, key=tls_key)
    try:
        home = init_coordinator(root, host, port, cert_host, own)
    except (DeploymentError, CertificateError, FileExistsError) as exc:
        fail(str(exc))
    from server.pki import fingerprint, load_certificate

    console.print(f"coordinator home: {home.root}")
    console.print(f"give every site: {home.tls.ca_cert} (SHA-256 "
                  f"{fingerprint(load_certificate(home.tls.ca_cert))}) and "
                  f"{home.keys_dir / 'coordinator.pub.json'}")
    console.print(f"next: fedsilo coordinator start {home.root}")


@coordinator_app.command("start")
def coordinator_start(
    root: HomeArg,
    foreground: Annotated[bool, typer.Option(
        help="Stay in the foreground until the SuperLink ends; SIGTERM stops it (containers)."
    )] = False,
) -> None:
    """Start the SuperLink (TLS, only enrolled SuperNodes may join) in the background."""
    setup_logging(False)
    from server.deploy import DeploymentError, running_pid, start_superlink, stop_superlink

    home = _home(root)
    stopping = []
    if foreground:  # before starting: a stop request during start-up is honoured too
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
        signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    try:
        pid = start_superlink(home, tied=foreground)
    except DeploymentError as exc:
        fail(str(exc), code=1)
    console.print(f"SuperLink running on {home.address()} (PID {pid}); log {home.log_file}")
    if not foreground:
        return
    while not stopping and running_pid(home.pid_file, "flower-superlink") == pid:
        time.sleep(0.5)
    if stop_superlink(home):
        console.print("SuperLink stopped")
    else:
        fail(f"the SuperLink ended by itself; see {home.log_file}", code=1)


@coordinator_app.command("stop")
def coordinator_stop(root: HomeArg) -> None:
    """Stop the SuperLink this home started."""
    from server.deploy import stop_superlink

    home = _home(root)
    console.print("SuperLink stopped" if stop_superlink(home) else "SuperLink was not running")


@coordinator_app.command("enroll")
def coordinator_enroll(
    root: HomeArg,
    site: Annotated[str, typer.Argument(help="The site id, as in federation.sites.")],
    node_key: Annotated[Path, typer.Option(help="The site's <site>.node-key.pub.")],
    identity: Annotated[Path, typer.Option(help="The site's <site>.pub.json.")],
) -> None:
    """Let a site in: register its SuperNode key and its update-signing identity."""
    setup_logging(False)
    from client.node_auth import NodeKeyError
    from common.keys import KeyFileError
    from server.deploy import DeploymentError, enroll_site

    home = _home(root)
    try:
        node_id = enroll_site(home, site, node_key, identity)
    except (DeploymentError, NodeKeyError, KeyFileError, FileNotFoundError) as exc:
        fail(str(exc), code=1)
    console.print(f"site {site} enrolled (SuperNode id {node_id})")


@coordinator_app.command("revoke")
def coordinator_revoke(
    root: HomeArg,
    site: Annotated[str, typer.Argument(help="The site id to remove.")],
) -> None:
    """Remove a site's SuperNode keys and identity (a lost key, a site leaving). To rotate a
    site's keys: revoke, then enroll the new ones."""
    setup_logging(False)
    from server.deploy import DeploymentError, revoke_site

    home = _home(root)
    try:
        revoked = revoke_site(home, site)
    except DeploymentError as exc:
        fail(str(exc), code=1)
    console.print(f"site {site} revoked (SuperNodes {', '.join(map(str, revoked)) or 'none'})")


@coordinator_app.command("status")
def coordinator_status(root: HomeArg) -> None:
    """The SuperLink's process, the connected SuperNodes and the runs."""
    from server.deploy import CONNECTION, DeploymentError, enrolled_nodes, flwr, running_pid

    home = _home(root)
    pid = running_pid(home.pid_file, "flower-superlink")
    if pid is None:
        console.print(f"SuperLink not running (start it: fedsilo coordinator start {root})")
        raise typer.Exit(1)
    console.print(f"SuperLink PID {pid} on {home.address()}")
    try:
        nodes = enrolled_nodes(home)
        runs = flwr(home, "ls", CONNECTION).get("runs", [])
    except DeploymentError as exc:
        fail(str(exc), code=1)
    for node in nodes:
        console.print(f"site {node['site']}: SuperNode {node.get('node-id')} "
                      f"{node.get('status', '')}")
    for run in runs:
        console.print(f"run {run.get('run-id')}: {run.get('status')} {run.get('elapsed', '')}")


def run(
    root: HomeArg,
    config: ConfigOption = None,
    set_: SetOption = None,
    timeout_s: Annotated[float | None, typer.Option(
        help="Give up (and stop the run) after this long; default: rounds x round timeout."
    )] = None,
    resume: Annotated[Path | None, typer.Option(
        help="A run directory to continue from its last checkpoint (after a crash or stop)."
    )] = None,
) -> None:
    """Submit a federated run to the coordinator's SuperLink and follow it to the end.

    Exits non-zero when the run fails or learns nothing (Flower's own `flwr run` does not).
    """
    setup_logging(False)
    from server.deploy import DeploymentError, run_status, stop_run, submit_run

    home = _home(root)
    if resume is not None:
        if config is not None or set_:
            fail("--resume takes the run's own config.yaml; drop --config and --set")
        run_dir = resume.resolve()
        cfg = load(run_dir / "config.yaml", [])
        _describe_resume(run_dir, cfg.federation.rounds)
    else:
        cfg = load(config, set_)
        run_dir = _new_run_dir(cfg, home)
    try:
        run_id = submit_run(home, run_dir / "config.yaml", run_dir)
    except DeploymentError as exc:
        fail(str(exc), code=1)
    console.print(f"run {run_id} submitted; run directory {run_dir}")

    limit = timeout_s or cfg.federation.rounds * cfg.federation.round_timeout_s + 600
    deadline = time.monotonic() + limit
    shown, status = 0, {}
    while time.monotonic() < deadline:
        shown = _show_rounds(run_dir / "metrics.jsonl", shown)
        try:
            status = run_status(home, run_id)
        except DeploymentError as exc:
            fail(f"{exc}\nThe run stopped with the SuperLink. Once it is back "
                 f"(fedsilo coordinator start {root}), continue with: "
                 f"fedsilo run {root} --resume {run_dir}", code=1)
        if str(status.get("status", "")).startswith("finished"):
            break
        time.sleep(STATUS_POLL_S)
    else:
        stop_run(home, run_id)
        fail(f"run {run_id} did not finish within {limit:.0f} s; stopped it", code=1)
    _show_rounds(run_dir / "metrics.jsonl", shown)
    if status.get("status") != "finished:completed" or not (run_dir / "results.md").exists():
        fail(f"run {run_id} {status.get('status')}: {status.get('status-details', '')}; "
             f"see {home.log_file}", code=1)
    console.print((run_dir / "results.md").read_text(encoding="utf-8"))
    console.print(f"run directory: {run_dir}")


def _new_run_dir(cfg, home) -> Path:
    """A fresh run directory holding the config the coordinator runs: the federation's label
    set resolved, keys from the coordinator home, audit log in the run directory."""
    from common.config import config_to_yaml
    from common.federation import federation_labels
    from server.report import atomic_write, create_run_dir

    try:
        labels = federation_labels(cfg)
    except (FileNotFoundError, ValueError) as exc:
        fail(f"{exc} (the coordinator needs the label set: set data.labels)")
    run_dir = create_run_dir(cfg).resolve()
    (run_dir / "audit").mkdir(mode=0o700)
    security = cfg.security.model_copy(update={"keys_dir": home.keys_dir.resolve(),
                                               "audit_dir": run_dir / "audit"})
    cfg = cfg.model_copy(update={"security": security,
                                 "data": cfg.data.model_copy(update={"labels": labels})})
    atomic_write(run_dir / "config.yaml", config_to_yaml(cfg))
    return run_dir


def _describe_resume(run_dir: Path, rounds: int) -> None:
    from server.checkpoint import CheckpointError, load_checkpoint

    try:
        checkpoint = load_checkpoint(run_dir)
    except CheckpointError as exc:
        fail(str(exc), code=1)
    if checkpoint is None:
        console.print(f"{run_dir}: no checkpoint yet; the run starts again from round 1")
    elif (run_dir / "results.md").exists() and checkpoint.round >= rounds:
        fail(f"{run_dir} is already complete ({checkpoint.round} rounds, results.md written); "
             "start a new run instead", code=1)
    else:
        console.print(f"{run_dir}: resuming after round {checkpoint.round}")


def _show_rounds(metrics: Path, shown: int) -> int:
    """Print the rounds recorded since the last call; how many are shown now."""
    if not metrics.exists():
        return shown
    lines = metrics.read_text(encoding="utf-8").splitlines()
    from server.coordinator import RoundRecord

    for line in lines[shown:]:
        console.print(RoundRecord(**json.loads(line)).summary())
    return len(lines)
