"""A site's own head, fine-tuned on the final global model: trained at the site, kept there."""

import copy

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from client.app import PERSONAL_HEAD_RECORD, SiteRuntime, make_client_app
from common.channel import CoordinatorChannel
from common.config import load_config
from common.egress import DEFAULT_METRICS
from common.model import classification_head
from common.training import evaluate_head, head_features, train_head
from common.wire import PERSONALIZE


@pytest.fixture
def cfg(tiny_overrides):
    return load_config(overrides=[*tiny_overrides, "security.enabled=false"])


def test_head_features_reproduce_the_models_logits(cfg):
    runtime = SiteRuntime(cfg)
    network = runtime.model.model
    data = runtime.split("de", "test")
    head = classification_head(network)
    features = head_features(network, head, data, batch_size=16)
    assert features.shape[0] == len(data) and features.shape[1] == 1
    with torch.no_grad():
        from common.training import _collate

        rows = list(range(5))
        logits = network(**_collate(data, rows, torch.device("cpu"))).logits
        np.testing.assert_allclose(head(features[rows]).numpy(), logits.numpy(), atol=1e-5)


def test_train_head_learns_separable_features_and_is_repeatable(cfg):
    runtime = SiteRuntime(cfg)
    head = classification_head(runtime.model.model)
    width = head.out_proj.in_features
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, width, generator=generator) * 3
    labels = np.repeat(np.arange(3), 40)
    features = (centres[labels] + torch.randn(len(labels), width, generator=generator))[:, None]

    def fit(seed):
        fresh = copy.deepcopy(head)
        train_head(fresh, features, labels, epochs=5, batch_size=8, learning_rate=5e-3,
                   weight_decay=0.0, seed=seed)
        return fresh

    first, second = fit(1), fit(1)
    assert evaluate_head(first, features, labels)["accuracy"] > 0.95
    for a, b in zip(first.parameters(), second.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_personalize_trains_a_copy_and_leaves_the_shared_head_alone(cfg):
    runtime = SiteRuntime(cfg)
    before = runtime.model.adapter_state()
    kept, metrics = runtime.personalize("de", before, epochs=2, learning_rate=5e-3, seed=0)
    after = runtime.model.adapter_state()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)
    head = classification_head(runtime.model.model)
    assert set(kept) == set(head.state_dict())
    assert any(not np.array_equal(kept[k], head.state_dict()[k].numpy()) for k in kept)
    assert set(metrics) <= DEFAULT_METRICS and 0.0 <= metrics["macro_f1"] <= 1.0


def test_the_query_reply_carries_metrics_only_and_the_head_stays_in_node_state(cfg,
                                                                             monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 7), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)  # what Flower sets in its processes
    runtime = SiteRuntime(cfg)
    state = runtime.model.adapter_state()
    channel = CoordinatorChannel(run_id="7", identity=None, registry={},
                                 max_update_bytes=cfg.security.max_update_bytes)
    content = RecordDict({
        "global": channel.pack_global(state, 0),
        "config": ConfigRecord({"task": PERSONALIZE, "epochs": 1, "learning-rate": 1e-3,
                                "round": 0}),
    })
    message = Message(content=content, dst_node_id=1, message_type=MessageType.QUERY)
    context = Context(run_id=7, node_id=1, node_config={"site": "de"}, state=RecordDict(),
                      run_config={})
    reply = make_client_app(cfg)(message, context)
    assert reply.content["site"]["status"] == "ok"
    _, metrics = channel.open_reply("de", reply.content, 0)
    assert 0.0 <= metrics["macro_f1"] <= 1.0
    arrays = [key for key in reply.content.array_records if len(reply.content[key]) > 0]
    assert arrays == []
    kept = context.state.array_records[PERSONAL_HEAD_RECORD]
    assert set(kept) == set(classification_head(runtime.model.model).state_dict())
