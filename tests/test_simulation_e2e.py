"""One small federation on Flower's simulation engine, run once and inspected by each test.

Three real sites plus a fourth whose training file has an invalid UTF-8 line; a monitor
thread lists listening sockets of this process tree while the run is going.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import threading
from pathlib import Path

import psutil
import pytest
import torch

from common.config import load_config
from common.model import load_for_inference
from server.simulation import simulate
from tests.conftest import tiny_settings

pytestmark = pytest.mark.e2e

BROKEN_LINE = 4


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _listening_beyond_loopback(stop: threading.Event, found: list, seen: list) -> None:
    me = psutil.Process()
    for _ in range(2000):  # bounded: at most ~10 minutes at 0.3 s
        if stop.wait(0.3):
            return
        pids = {me.pid} | {child.pid for child in me.children(recursive=True)}
        for conn in psutil.net_connections(kind="inet"):
            if conn.status != psutil.CONN_LISTEN or conn.pid not in pids:
                continue
            seen.append(conn.laddr.ip)
            if not _is_loopback(conn.laddr.ip):
                found.append((conn.pid, conn.laddr))


@pytest.fixture(scope="module")
def run(silo_root, tiny_model_dir, tmp_path_factory):
    broken = tmp_path_factory.mktemp("broken-silo")
    for split in ("train", "validation", "test"):
        shutil.copy(silo_root / "de" / f"{split}.jsonl", broken / f"{split}.jsonl")
    lines = (broken / "train.jsonl").read_bytes().split(b"\n")
    lines[BROKEN_LINE - 1] = b'{"text": "caf\xe9 \xff", "label": "greetings"}'
    (broken / "train.jsonl").write_bytes(b"\n".join(lines))

    sites = "federation.sites=[de, fr, id, {id: xx, silo: '%s'}]" % broken
    settings = tiny_settings(silo_root, tiny_model_dir, tmp_path_factory.mktemp("runs"))
    cfg = load_config(overrides=[*settings, sites, "simulation.baselines=true"])
    stop, wide, seen = threading.Event(), [], []
    monitor = threading.Thread(target=_listening_beyond_loopback, args=(stop, wide, seen))
    monitor.start()
    try:
        result = simulate(cfg)
    finally:
        stop.set()
        monitor.join()
    return cfg, result, wide, seen


def test_run_directory_holds_config_metrics_adapter_and_table(run):
    _, result, _, _ = run
    names = {p.name for p in result.run_dir.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "global", "results.md", "results.json"} <= names
    rounds = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    assert [r["round"] for r in rounds] == [1, 2]
    # The broken site cannot train, but its test split is fine: it still scores the global model.
    assert set(rounds[-1]["evaluate"]) == {"de", "fr", "id", "xx"}
    assert all("macro_f1" in m and "accuracy" in m for m in rounds[-1]["evaluate"].values())


def test_table_has_a_row_per_good_country_and_every_arm(run):
    _, result, _, _ = run
    table = result.table
    assert [row.site for row in table.complete_rows()] == ["de", "fr", "id"]
    assert table.arms == ["local", "federated", "personal", "centralized"]
    # xx cannot train: no local or pooled model; its own head trains on its train split too.
    assert set(table.rows[-1].scores) == {"federated"}
    text = (result.run_dir / "results.md").read_text()
    assert "**mean**" in text and "own head - local" in text
    assert "beats local-only in" in text


def test_own_heads_are_scored_on_each_trained_site(run):
    _, result, _, _ = run
    rows = result.table.complete_rows()
    for row in rows:
        assert 0.0 <= row.scores["personal"] <= 1.0
        assert 0.0 <= row.accuracy["personal"] <= 1.0
    assert "xx" in result.table.excluded


def test_broken_site_is_excluded_with_file_and_line_and_the_rounds_go_on(run):
    _, result, _, _ = run
    reason = result.table.excluded["xx"]
    assert "train.jsonl" in reason and f"line {BROKEN_LINE}" in reason and "UTF-8" in reason
    assert str(result.run_dir) not in reason
    rounds = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    assert all(sorted(r["train"]) == ["de", "fr", "id"] for r in rounds)
    assert all("xx" in r["excluded"] for r in rounds)


def test_global_adapter_loads_with_peft_and_classifies(run):
    cfg, result, _, _ = run
    model, tokenizer, labels = load_for_inference(result.run_dir / "global", cfg.model.name)
    config = json.loads((result.run_dir / "global" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    batch = tokenizer(["Guten Morgen!", "Bonjour, comment ça va ?", "Selamat pagi"],
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (3, len(labels))


def test_no_listener_beyond_loopback_during_the_simulation(run):
    _, _, wide, seen = run
    assert seen, "the monitor saw no listening socket at all: it did not observe the run"
    assert wide == []


def test_sites_keep_the_base_model_loaded_across_rounds(run):
    _, result, _, _ = run
    rounds = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    loads = [m["model_loads"] for r in rounds for phase in ("train", "evaluate")
             for m in r[phase].values()]
    assert len(loads) == 14  # 2 rounds x (3 sites training + 4 evaluating)
    # One load per simulation worker process (at most one per CPU), never one per round.
    assert 1 <= sum(loads) <= min(os.cpu_count() or 1, 3)
    assert sum(m["model_loads"] for phase in ("train", "evaluate")
               for m in rounds[-1][phase].values()) == 0


def test_every_party_keeps_an_intact_audit_log_of_sealed_messages(run):
    from common.audit import verify_log

    _, result, _, _ = run
    logs = {p.stem: p for p in (result.run_dir / "audit").glob("*.jsonl")}
    assert set(logs) == {"coordinator", "de", "fr", "id", "xx"}
    assert all(verify_log(path).ok for path in logs.values())
    site_entries = [json.loads(line) for line in logs["de"].read_text().splitlines()]
    assert {"sealed", "accepted"} <= {e["decision"] for e in site_entries}
    broken = [json.loads(line) for line in logs["xx"].read_text().splitlines()]
    assert any(e["decision"] == "error" and "UTF-8" in e["reason"] for e in broken)


def test_private_keys_in_the_run_directory_are_owner_only(run):
    _, result, _, _ = run
    keys = list((result.run_dir / "keys").glob("*.key"))
    assert len(keys) == 5
    assert all(path.stat().st_mode & 0o077 == 0 for path in keys)


def test_a_run_where_no_site_can_train_exits_non_zero(silo_root, tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from common.cli import app

    empty = tmp_path / "empty-silo"
    empty.mkdir()
    for split in ("train", "validation", "test"):
        (empty / f"{split}.jsonl").write_text("")
    settings = tiny_settings(silo_root, tiny_model_dir, tmp_path / "runs")
    args = ["simulate"]
    for setting in [*settings, "federation.rounds=1",
                    "federation.sites=[{id: de, silo: '%s'}]" % empty]:
        args += ["--set", setting]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "no round had a usable update" in result.output
    assert "train.jsonl" in result.output


@pytest.mark.parametrize("strategy", ["fedavg-local-head", "fedsa-lora"])
def test_personal_parts_stay_at_each_site_and_the_rounds_complete(silo_root, tiny_model_dir,
                                                                  tmp_path, strategy):
    settings = tiny_settings(silo_root, tiny_model_dir, tmp_path / "runs")
    cfg = load_config(overrides=[*settings, f"strategy.name={strategy}"])
    result = simulate(cfg)
    rounds = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    # The coordinator accepts only the shared tensors: a head arriving would be rejected.
    assert all(sorted(r["train"]) == ["de", "fr", "id"] and not r["excluded"] for r in rounds)
    entries = [json.loads(line) for line in
               (result.run_dir / "audit" / "coordinator.jsonl").read_text().splitlines()]
    assert not [e for e in entries if e.get("decision") == "rejected"]
