"""Per-round overhead of a deployed federation: fedsilo's warm site worker against a plain
Flower ClientApp that loads the model for every message (what Flower 1.42 does by default).

Stands up, on 127.0.0.1 only, a coordinator (SuperLink with TLS and SuperNode authentication)
and three sites with the real base model, then runs the same rounds twice: once through
`fedsilo site join` (warm worker), once with plain SuperNodes running
bench/plain_clientapp.py. Overhead per round = round wall time - the slowest site's training
- the slowest site's evaluation (both measured inside the sites).

    python bench/deploy_overhead.py                       # de, fr, tr; 3 rounds each way
    python bench/deploy_overhead.py --sites de,fr,id --rounds 2 --out /tmp/overhead
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from client.node_auth import node_key_paths
from client.site import site_config
from common.config import config_to_yaml, load_config
from common.processes import flower_env
from server.deploy import CoordinatorHome, run_status, submit_run

HERE = Path(__file__).resolve().parent


def fedsilo(*args: str, timeout: float = 600.0) -> str:
    done = subprocess.run([sys.executable, "-m", "common.cli", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise SystemExit(f"fedsilo {' '.join(args[:2])} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def spawn(command: list[str], log: Path) -> subprocess.Popen:
    with log.open("wb") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=flower_env(log.parent / "flwr"),
                                start_new_session=True)


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def wait_for_run(home: CoordinatorHome, config: Path, run_dir: Path,
                 app_dir: Path | None) -> list[dict]:
    run_dir.mkdir(parents=True)
    (run_dir / "audit").mkdir()
    run_id = submit_run(home, config, run_dir, app_dir)
    for _ in range(3600):  # bounded: at most ~2 hours at 2 s
        status = run_status(home, run_id)
        if str(status.get("status", "")).startswith("finished"):
            break
        time.sleep(2)
    if status.get("status") != "finished:completed":
        raise SystemExit(f"run {run_id}: {status}")
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]


def overheads(rounds: list[dict]) -> list[float]:
    values = []
    for record in rounds:
        train = max(m["train_time_s"] for m in record["train"].values())
        evaluate = max(m.get("eval_time_s", 0.0) for m in record["evaluate"].values())
        values.append(record["wall_s"] - train - evaluate)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", default="de,fr,tr")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="Work folder (default: temp).")
    args = parser.parse_args()
    sites = args.sites.split(",")
    work = args.out or Path(tempfile.mkdtemp(prefix="fedsilo-overhead-"))
    work.mkdir(parents=True, exist_ok=True)

    base_cfg = load_config(overrides=[f"federation.sites=[{', '.join(sites)}]",
                                      f"federation.rounds={args.rounds}",
                                      "personalize.head_epochs=0"])
    from common.federation import federation_labels
    from common.offline_model import resolve_model_source

    model = resolve_model_source(base_cfg.model.name, base_cfg.model.source)
    base_cfg = base_cfg.model_copy(update={
        "data": base_cfg.data.model_copy(update={"labels": federation_labels(base_cfg)}),
        "model": base_cfg.model.model_copy(update={"name": str(model), "source": "local"}),
    })
    federation = work / "federation.yaml"
    federation.write_text(config_to_yaml(base_cfg))

    coordinator = work / "coordinator"
    port = free_port()
    fedsilo("coordinator", "init", str(coordinator), "--port", str(port))
    fedsilo("coordinator", "start", str(coordinator))
    home = CoordinatorHome(coordinator)
    ca = coordinator / "tls" / "ca.pem"
    coordinator_key = coordinator / "keys" / "coordinator.pub.json"
    run_cfg = base_cfg.model_copy(update={"security": base_cfg.security.model_copy(
        update={"keys_dir": home.keys_dir.resolve()})})
    results = {}
    try:
        for site in sites:
            fedsilo("site", "init", str(work / site), "--site", site)
            keys = work / site / "keys"
            fedsilo("coordinator", "enroll", str(coordinator), site, "--node-key",
                    str(keys / f"{site}.node-key.pub"), "--identity", str(keys / f"{site}.pub.json"))
            shutil.copyfile(coordinator_key, keys / "coordinator.pub.json")

        for mode in ("fedsilo", "plain"):
            run_dir = work / "runs" / mode
            config = work / f"run-{mode}.yaml"
            config.write_text(config_to_yaml(run_cfg.model_copy(update={
                "security": run_cfg.security.model_copy(update={"audit_dir": run_dir / "audit"})
            })))
            nodes, app_dir = [], None
            for site in sites:
                if mode == "fedsilo":
                    nodes.append(spawn([sys.executable, "-m", "common.cli", "site", "join",
                                        str(work / site), "--site", site, "--superlink",
                                        f"127.0.0.1:{port}", "--ca", str(ca), "--port",
                                        str(free_port()), "--config", str(federation)],
                                       work / site / f"{mode}.log"))
                    continue
                site_cfg = site_config(base_cfg, site, work / site, None)
                (work / site / "audit").mkdir(exist_ok=True)
                site_file = work / site / "site.yaml"
                site_file.write_text(config_to_yaml(site_cfg))
                node_key, _ = node_key_paths(site, work / site / "keys")
                nodes.append(spawn(["flower-supernode", "--superlink", f"127.0.0.1:{port}",
                                    "--root-certificates", str(ca),
                                    "--auth-supernode-private-key", str(node_key),
                                    "--node-config", f"site='{site}' fedsilo-config='{site_file}'",
                                    "--host", "127.0.0.1", "--port", str(free_port())],
                                   work / site / f"{mode}.log"))
            if mode == "plain":
                app_dir = work / "plain-app"
                app_dir.mkdir(exist_ok=True)
                (app_dir / "pyproject.toml").write_text(
                    home.app_dir.joinpath("pyproject.toml").read_text().replace(
                        'name = "fedsilo-app"', 'name = "fedsilo-plain-app"').replace(
                        '"client.thin_app:app"', '"plain_clientapp:app"'))
                shutil.copyfile(HERE / "plain_clientapp.py", app_dir / "plain_clientapp.py")
            time.sleep(5 if mode == "plain" else 0)
            try:
                started = time.perf_counter()
                rounds = wait_for_run(home, config, run_dir, app_dir)
                results[mode] = {"rounds": rounds, "total_s": time.perf_counter() - started}
            finally:
                stop(nodes)
    finally:
        fedsilo("coordinator", "stop", str(coordinator))

    print(f"{len(sites)} sites ({', '.join(sites)}), {args.rounds} rounds, real model, "
          "TLS + SuperNode auth + sealed updates, 127.0.0.1")
    print("| | round wall s (each) | site compute s (train+eval) | overhead s per round | "
          "model loads |")
    print("|---|---|---|---|---|")
    summary = {}
    for mode, result in results.items():
        rounds = result["rounds"]
        over = overheads(rounds)
        walls = [r["wall_s"] for r in rounds]
        compute = [w - o for w, o in zip(walls, over)]
        loads = sum(m.get("model_loads", 0) for r in rounds for m in r["train"].values())
        summary[mode] = statistics.mean(over)
        print(f"| {mode} | {', '.join(f'{w:.1f}' for w in walls)} | "
              f"{', '.join(f'{c:.1f}' for c in compute)} | {statistics.mean(over):.1f} "
              f"(first {over[0]:.1f}, later {statistics.mean(over[1:] or over):.1f}) | {loads:.0f} |")
    if {"fedsilo", "plain"} <= summary.keys():
        print(f"overhead ratio plain / fedsilo: {summary['plain'] / summary['fedsilo']:.1f}x")
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
