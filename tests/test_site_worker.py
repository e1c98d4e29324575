"""The warm site worker behind the thin per-message ClientApp."""

import socket
import stat
import threading

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from client import thin_app
from client.app import LOCAL_RECORD, runtime_for
from client.worker import SiteWorker
from client.worker_protocol import send_frames
from common.channel import CoordinatorChannel
from common.config import load_config


@pytest.fixture
def identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 5), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)  # what Flower sets in its processes


@pytest.fixture
def worker(tiny_overrides, tmp_path):
    cfg = load_config(overrides=[*tiny_overrides, "security.enabled=false",
                                 "strategy.name=fedavg-local-head"])
    site_worker = SiteWorker(cfg, "de", tmp_path / "run" / "de.sock")
    site_worker.warm_up()
    site_worker.bind()
    thread = threading.Thread(target=site_worker.serve, kwargs={"max_messages": 10})
    thread.start()
    yield cfg, site_worker
    site_worker.stop()
    thread.join(timeout=30)


def _message(cfg, round_number, message_type=MessageType.TRAIN):
    runtime = runtime_for(cfg)
    shared = {k: v for k, v in runtime.initial_state.items() if "classifier" not in k}
    channel = CoordinatorChannel(run_id="5", identity=None, registry={},
                                 max_update_bytes=cfg.security.max_update_bytes)
    content = RecordDict({"global": channel.pack_global(shared, round_number),
                          "config": ConfigRecord({"round": round_number})})
    return Message(content=content, dst_node_id=1, message_type=message_type), channel


def test_rounds_are_served_by_one_warm_model_and_node_state_round_trips(worker, identity):
    cfg, site_worker = worker
    model_before = runtime_for(cfg).model
    context = Context(run_id=5, node_id=1, state=RecordDict(), run_config={},
                      node_config={"site": "de", "worker-socket": str(site_worker.socket_path)})
    loads = []
    for round_number in (1, 2):
        message, channel = _message(cfg, round_number)
        reply = thin_app.forward(message, context)
        assert reply.content["site"]["status"] == "ok"
        state, metrics = channel.open_reply("de", reply.content, round_number)
        assert state and not any("classifier" in k for k in state)
        loads.append(metrics["model_loads"])
        # The head this strategy keeps at the site came back into the node's state.
        assert LOCAL_RECORD in context.state.array_records
    assert runtime_for(cfg).model is model_before
    assert sum(loads) <= 1 and loads[-1] == 0
    assert site_worker.served == 2


def test_the_socket_is_owner_only(worker):
    _, site_worker = worker
    assert stat.S_IMODE(site_worker.socket_path.stat().st_mode) & 0o077 == 0
    assert stat.S_IMODE(site_worker.socket_path.parent.stat().st_mode) == 0o700


def test_a_message_for_another_site_or_garbage_gets_no_reply(worker, identity):
    cfg, site_worker = worker
    message, _ = _message(cfg, 1)
    context = Context(run_id=5, node_id=1, state=RecordDict(), run_config={},
                      node_config={"site": "fr", "worker-socket": str(site_worker.socket_path)})
    reply = thin_app.forward(message, context)
    assert reply.content["site"]["status"] == "error"
    assert "site worker unreachable" in reply.content["site"]["reason"]

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(str(site_worker.socket_path))
        send_frames(conn, [b"not json", b"", b""])
        assert conn.recv(1) == b""  # closed without a reply
    assert site_worker.served == 0


def test_no_worker_means_an_error_reply_not_a_crash(identity, tmp_path, tiny_overrides):
    cfg = load_config(overrides=[*tiny_overrides, "security.enabled=false"])
    runtime_for(cfg).model  # noqa: B018 - loads the initial adapter for the message
    message, _ = _message(cfg, 1)
    context = Context(run_id=5, node_id=1, state=RecordDict(), run_config={},
                      node_config={"site": "de", "worker-socket": str(tmp_path / "none.sock")})
    reply = thin_app.forward(message, context)
    assert reply.content["site"]["status"] == "error"
    assert np.all([str(tmp_path) not in reply.content["site"]["reason"]])
