"""A real deployment on loopback: a SuperLink and three SuperNodes as processes, with TLS and
SuperNode authentication, driven through the `fedsilo` commands an operator would type."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import TINY_SITES, tiny_settings

pytestmark = pytest.mark.integration

JOIN_READY_S = 120.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fedsilo(*args: str, timeout: float = 300.0, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "common.cli", *args], capture_output=True,
                          text=True, timeout=timeout, check=False, **kwargs)


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("wb") as handle:
        return subprocess.Popen([sys.executable, "-m", "common.cli", *args], stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _config_file(path: Path, overrides: list[str]) -> Path:
    """The federation's YAML config, from ``--set`` style overrides."""
    from common.config import config_to_yaml, load_config

    path.write_text(config_to_yaml(load_config(overrides=overrides)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def federation(tmp_path_factory, silo_root, tiny_model_dir):
    base = tmp_path_factory.mktemp("deploy")
    overrides = tiny_settings(silo_root, tiny_model_dir, base / "runs")
    config = _config_file(base / "federation.yaml", [*overrides, "security.enabled=true"])
    coordinator = base / "coordinator"
    port = _free_port()
    done = fedsilo("coordinator", "init", str(coordinator), "--port", str(port))
    assert done.returncode == 0, done.stderr
    done = fedsilo("coordinator", "start", str(coordinator))
    assert done.returncode == 0, done.stdout + done.stderr
    ca = coordinator / "tls" / "ca.pem"
    joins: list[subprocess.Popen] = []
    try:
        for site in TINY_SITES:
            home = base / f"site-{site}"
            assert fedsilo("site", "init", str(home), "--site", site).returncode == 0
            keys = home / "keys"
            done = fedsilo("coordinator", "enroll", str(coordinator), site,
                           "--node-key", str(keys / f"{site}.node-key.pub"),
                           "--identity", str(keys / f"{site}.pub.json"))
            assert done.returncode == 0, done.stdout + done.stderr
            joins.append(_spawn(
                ["site", "join", str(home), "--site", site, "--superlink", f"127.0.0.1:{port}",
                 "--ca", str(ca), "--coordinator-key",
                 str(coordinator / "keys" / "coordinator.pub.json"),
                 "--port", str(_free_port()), "--config", str(config)],
                base / f"join-{site}.log"))
        yield {"base": base, "config": config, "coordinator": coordinator, "port": port,
               "ca": ca, "joins": joins}
    finally:
        for process in joins:
            _stop(process)
        fedsilo("coordinator", "stop", str(coordinator))


def test_an_unenrolled_site_is_refused(federation):
    base = federation["base"]
    home = base / "site-intruder"
    assert fedsilo("site", "init", str(home), "--site", "de").returncode == 0
    done = fedsilo("site", "join", str(home), "--site", "de", "--superlink",
                   f"127.0.0.1:{federation['port']}", "--ca", str(federation["ca"]),
                   "--coordinator-key",
                   str(federation["coordinator"] / "keys" / "coordinator.pub.json"),
                   "--port", str(_free_port()), "--config", str(federation["config"]),
                   timeout=JOIN_READY_S)
    assert done.returncode != 0
    assert "refused" in (done.stdout + done.stderr)


def test_two_rounds_run_over_tls_and_write_a_run_directory(federation):
    done = fedsilo("run", str(federation["coordinator"]), "--config",
                   str(federation["config"]), "--timeout-s", "600", timeout=700)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = Path(done.stdout.strip().splitlines()[-1].split("run directory: ")[1])
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(sorted(r["train"]) == sorted(TINY_SITES) for r in rounds)
    assert (run_dir / "global" / "adapter_model.safetensors").is_file()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["arms"] == ["federated", "personal"]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["data"]["labels"]
    # Every update was sealed and logged at both ends.
    assert (run_dir / "audit" / "coordinator.jsonl").is_file()
    for site in TINY_SITES:
        assert (federation["base"] / f"site-{site}" / "audit" / f"{site}.jsonl").is_file()
    assert all(p.poll() is None for p in federation["joins"])  # sites stay up between runs


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _run_dir_from(output: str) -> Path:
    return Path(output.strip().splitlines()[-1].split("run directory: ")[1])


def test_a_killed_coordinator_resumes_and_ends_as_an_uninterrupted_run(federation):
    from safetensors.numpy import load_file

    base, coordinator = federation["base"], federation["coordinator"]
    config = base / "three-rounds.yaml"
    text = federation["config"].read_text().replace("rounds: 2", "rounds: 3")
    config.write_text(text)
    assert "rounds: 3" in text

    done = fedsilo("run", str(coordinator), "--config", str(config), timeout=700)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    uninterrupted = _run_dir_from(done.stdout)

    # The same run, with the coordinator killed once round 1 is checkpointed.
    (base / "runs").mkdir(exist_ok=True)
    before = set((base / "runs").iterdir())
    follower = _spawn(["run", str(coordinator), "--config", str(config)], base / "killed.log")
    try:
        _wait_for(lambda: len(set((base / "runs").iterdir()) - before) == 1, 60, "run dir")
        (run_dir,) = set((base / "runs").iterdir()) - before
        _wait_for(lambda: (run_dir / "checkpoint" / "checkpoint.json").exists(), 300,
                  "the first checkpoint")
        assert fedsilo("coordinator", "stop", str(coordinator)).returncode == 0
        assert follower.wait(timeout=120) != 0  # the run did not finish: the command says so
    finally:
        _stop(follower)
    assert fedsilo("coordinator", "start", str(coordinator)).returncode == 0
    done = fedsilo("run", str(coordinator), "--resume", str(run_dir), timeout=700)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resuming after round" in done.stdout

    rounds = [json.loads(line)["round"] for line in (run_dir / "metrics.jsonl").open()]
    assert rounds == [1, 2, 3]
    final = load_file(str(run_dir / "global" / "adapter_model.safetensors"))
    reference = load_file(str(uninterrupted / "global" / "adapter_model.safetensors"))
    assert final.keys() == reference.keys()
    for name in final:
        np.testing.assert_allclose(final[name], reference[name], rtol=1e-5, atol=1e-7,
                                   err_msg=name)


@pytest.fixture
def foreground(tmp_path):
    """`fedsilo coordinator start --foreground` running: (home, port, command, SuperLink PID)."""
    home = tmp_path / "coordinator"
    port = _free_port()
    assert fedsilo("coordinator", "init", str(home), "--port", str(port)).returncode == 0
    process = _spawn(["coordinator", "start", str(home), "--foreground"], tmp_path / "fg.log")
    try:
        _wait_for(lambda: "SuperLink running" in (tmp_path / "fg.log").read_text(), 90,
                  "the command to report the SuperLink")
        yield home, port, process, int((home / "logs" / "superlink.pid").read_text())
    finally:
        _stop(process)
        fedsilo("coordinator", "stop", str(home))  # whatever happened in the test


def test_a_killed_foreground_command_takes_its_superlink_along(foreground):
    from server.deploy import tls_answers

    home, port, process, pid = foreground
    process.kill()  # SIGKILL: no handler runs
    process.wait(timeout=30)
    _wait_for(lambda: not tls_answers("127.0.0.1", port, home / "tls" / "ca.pem"), 30,
              "the SuperLink to end with its command")
    assert not Path(f"/proc/{pid}/cmdline").exists() or \
        not Path(f"/proc/{pid}/cmdline").read_bytes()


def test_the_container_entrypoint_runs_the_superlink_in_the_foreground(foreground):
    from server.deploy import tls_answers

    home, port, process, pid = foreground
    assert tls_answers("127.0.0.1", port, home / "tls" / "ca.pem")
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert not Path(f"/proc/{pid}").exists() or \
        Path(f"/proc/{pid}/status").read_text().find("zombie") >= 0


def test_a_coordinator_listening_on_all_interfaces_needs_a_certificate_name(tmp_path):
    done = fedsilo("coordinator", "init", str(tmp_path / "a"), "--host", "0.0.0.0")
    assert done.returncode != 0 and "--cert-host" in done.stdout + done.stderr
    assert not (tmp_path / "a").exists()
    done = fedsilo("coordinator", "init", str(tmp_path / "b"), "--host", "0.0.0.0",
                   "--cert-host", "coordinator")
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_site_that_drops_mid_run_is_left_out_and_rejoins(federation):
    base, coordinator, joins = federation["base"], federation["coordinator"], federation["joins"]
    text = federation["config"].read_text()
    for old, new in (("rounds: 2", "rounds: 4"), ("min_sites: 1", "min_sites: 2"),
                     ("round_timeout_s: 3600.0", "round_timeout_s: 30.0")):
        assert old in text
        text = text.replace(old, new)
    config = base / "dropout.yaml"
    config.write_text(text)

    (base / "runs").mkdir(exist_ok=True)
    before = set((base / "runs").iterdir())
    follower = _spawn(["run", str(coordinator), "--config", str(config)], base / "dropout.log")
    dropped = TINY_SITES.index("fr")
    try:
        _wait_for(lambda: len(set((base / "runs").iterdir()) - before) == 1, 60, "run dir")
        (run_dir,) = set((base / "runs").iterdir()) - before
        index = run_dir / "checkpoint" / "checkpoint.json"
        _wait_for(index.exists, 300, "round 1")
        os.killpg(joins[dropped].pid, signal.SIGKILL)  # the site vanishes mid-run
        joins[dropped].wait(timeout=30)
        _wait_for(lambda: json.loads(index.read_text())["round"] >= 2, 300, "round 2")
        joins[dropped] = _spawn(joins[dropped].args[3:], base / "join-fr-again.log")
        assert follower.wait(timeout=600) == 0, (base / "dropout.log").read_text()[-3000:]
    finally:
        _stop(follower)

    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    assert "fr" in rounds[0]["train"]
    assert "fr" not in rounds[1]["train"] and "no update" in rounds[1]["excluded"]["fr"], \
        rounds[1]["excluded"]
    assert sorted(rounds[1]["train"]) == ["de", "id"]  # the round went on without it
    assert any("fr" in r["train"] for r in rounds[2:]), "the restarted site did not rejoin"


def test_a_revoked_site_key_is_unregistered_and_its_identity_dropped(federation):
    base, coordinator = federation["base"], federation["coordinator"]
    home = base / "site-spare"
    assert fedsilo("site", "init", str(home), "--site", "spare").returncode == 0
    keys = home / "keys"
    done = fedsilo("coordinator", "enroll", str(coordinator), "spare", "--node-key",
                   str(keys / "spare.node-key.pub"), "--identity", str(keys / "spare.pub.json"))
    assert done.returncode == 0, done.stdout + done.stderr
    status = fedsilo("coordinator", "status", str(coordinator))
    assert "spare" in status.stdout
    done = fedsilo("coordinator", "revoke", str(coordinator), "spare")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (coordinator / "keys" / "spare.pub.json").exists()
    assert "spare" not in fedsilo("coordinator", "status", str(coordinator)).stdout
    assert fedsilo("coordinator", "revoke", str(coordinator), "spare").returncode != 0


def test_site_join_mistakes_get_clear_errors(federation, tmp_path):
    base = federation["base"]
    common = ["--superlink", f"127.0.0.1:{federation['port']}", "--ca", str(federation["ca"]),
              "--config", str(federation["config"]), "--port", str(_free_port())]
    # another site's home
    done = fedsilo("site", "join", str(base / "site-de"), "--site", "fr", *common)
    assert done.returncode != 0 and "is the home of site de" in done.stdout + done.stderr
    # another country's silo
    done = fedsilo("site", "join", str(base / "site-fr"), "--site", "fr", "--silo",
                   str(_silo(federation, "de")),
                   *common)
    assert done.returncode != 0 and "is the silo of 'de', not of 'fr'" in done.stdout + done.stderr
    # a second join of a running site
    done = fedsilo("site", "join", str(base / "site-de"), "--site", "de", *common)
    assert done.returncode != 0 and "already joined" in done.stdout + done.stderr
    # keys already there
    done = fedsilo("site", "init", str(base / "site-de"), "--site", "de")
    assert done.returncode != 0 and "already holds keys" in done.stdout + done.stderr


def _silo(federation, site: str) -> Path:
    import yaml as _yaml

    config = _yaml.safe_load(federation["config"].read_text())
    return Path(config["data"]["silo_root"]) / site


def test_a_relative_coordinator_home_works_like_an_absolute_one(tmp_path):
    port = _free_port()
    done = subprocess.run([sys.executable, "-m", "common.cli", "coordinator", "init", "coord",
                           "--port", str(port)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    try:
        done = subprocess.run([sys.executable, "-m", "common.cli", "coordinator", "start",
                               "coord"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        done = subprocess.run([sys.executable, "-m", "common.cli", "coordinator", "status",
                               "coord"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        subprocess.run([sys.executable, "-m", "common.cli", "coordinator", "stop", "coord"],
                       cwd=tmp_path, capture_output=True, timeout=120, check=False)
