"""The site's egress guard blocks anything not declared, before it is sealed."""

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord

from common.audit import AuditLog
from common.channel import SiteChannel
from common.egress import EgressBlocked, EgressPolicy, tensor_spec
from common.keys import generate_identity

ADAPTER = {"layer.lora_A": np.zeros((2, 4), np.float32), "head.weight": np.zeros((3, 4), np.float32)}


@pytest.fixture
def site(tmp_path):
    audit = AuditLog(tmp_path / "de.jsonl")
    channel = SiteChannel("de", generate_identity("de"), generate_identity("coordinator").public(),
                          guard=EgressPolicy(tensors=tensor_spec(ADAPTER)), audit=audit)
    yield channel, tmp_path / "de.jsonl"
    audit.close()


def _last_entry(path):
    return json.loads(path.read_text().splitlines()[-1])


def test_token_ids_smuggled_as_a_tensor_are_blocked_and_logged(site):
    channel, log_path = site
    leaked = dict(ADAPTER, input_ids=np.array([[0, 581, 2]], np.int64))
    with pytest.raises(EgressBlocked, match="'input_ids' is not a declared adapter tensor"):
        channel.pack_reply(leaked, {"num_examples": 3.0}, "run", 1)
    entry = _last_entry(log_path)
    assert entry["decision"] == "blocked" and "input_ids" in entry["reason"]


def test_raw_text_smuggled_as_a_metric_is_blocked(site):
    channel, log_path = site
    with pytest.raises(EgressBlocked, match="metric 'text' is not on the allow-list"):
        channel.pack_reply(ADAPTER, {"num_examples": 3.0, "text": "Guten Morgen"}, "run", 1)
    assert _last_entry(log_path)["decision"] == "blocked"


def test_a_tensor_reshaped_to_carry_data_is_blocked(site):
    channel, _ = site
    reshaped = dict(ADAPTER, **{"head.weight": np.zeros((3, 400), np.float32)})
    with pytest.raises(EgressBlocked, match="declared float32\\[3, 4\\]"):
        channel.pack_reply(reshaped, {"num_examples": 3.0}, "run", 1)


def test_an_extra_record_with_text_is_blocked():
    from flwr.app import RecordDict

    policy = EgressPolicy(tensors=tensor_spec(ADAPTER))
    content = RecordDict({"site": ConfigRecord({"site": "de", "status": "ok"}),
                          "texts": ConfigRecord({"0": "Guten Morgen"})})
    with pytest.raises(EgressBlocked, match="records \\['texts'\\]"):
        policy.check_content(content)


def test_declared_adapter_and_metrics_pass_and_are_sealed(site):
    channel, log_path = site
    content = channel.pack_reply(ADAPTER, {"num_examples": 3.0, "train_loss": 0.5}, "run", 1)
    assert set(content.keys()) == {"site", "update"}
    assert _last_entry(log_path)["decision"] == "sealed"
