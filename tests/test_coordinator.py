import numpy as np
import pytest
from flwr.app import Message, MessageType, RecordDict

from common.wire import site_error, state_to_record
from server.coordinator import reply_site
from server.validation import UpdateRejected, validate_update

GLOBAL = {"a.lora_A": np.zeros((4, 8), np.float32), "head.weight": np.zeros((3, 8), np.float32)}


def _metrics(n=10):
    return {"num_examples": n, "train_loss": 1.0}


def test_a_matching_update_is_accepted_with_its_example_count():
    update = validate_update("de", {k: v + 1 for k, v in GLOBAL.items()}, _metrics(12), GLOBAL)
    assert update.site == "de" and update.num_examples == 12
    np.testing.assert_array_equal(update.state["a.lora_A"], np.ones((4, 8), np.float32))


def test_wrong_shape_is_rejected_naming_the_tensor():
    bad = dict(GLOBAL, **{"a.lora_A": np.zeros((4, 9), np.float32)})
    with pytest.raises(UpdateRejected, match=r"a\.lora_A: got float32\[4, 9\], expected"):
        validate_update("de", bad, _metrics(), GLOBAL)


def test_nan_is_rejected():
    bad = dict(GLOBAL, **{"head.weight": np.full((3, 8), np.nan, np.float32)})
    with pytest.raises(UpdateRejected, match="NaN or Inf"):
        validate_update("de", bad, _metrics(), GLOBAL)


def test_extra_tensor_is_rejected():
    bad = dict(GLOBAL, extra=np.zeros(2, np.float32))
    with pytest.raises(UpdateRejected, match="unexpected"):
        validate_update("de", bad, _metrics(), GLOBAL)


def test_missing_example_count_is_rejected():
    with pytest.raises(UpdateRejected, match="num_examples"):
        validate_update("de", GLOBAL, {}, GLOBAL)


def test_update_norm_above_the_bound_is_rejected_with_the_norm():
    scaled = {k: v + 1000.0 for k, v in GLOBAL.items()}
    with pytest.raises(UpdateRejected, match="update norm 7483 exceeds security.max_update_norm=100"):
        validate_update("de", scaled, _metrics(), GLOBAL, max_norm=100.0)


def test_error_reply_carries_site_and_reason():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    request = Message(content=RecordDict({"arrays": state_to_record(GLOBAL)}),
                      message_type=MessageType.TRAIN, dst_node_id=5)
    reply = Message(content=site_error("fr", "train.jsonl, line 3: invalid UTF-8"),
                    reply_to=request)
    assert reply_site(reply) == ("fr", "train.jsonl, line 3: invalid UTF-8")


@pytest.mark.parametrize("count", [float("inf"), float("nan"), 2.5, -3, "12", 1.7e308, True])
def test_a_bad_example_count_is_rejected_not_raised(count):
    with pytest.raises(UpdateRejected, match="num_examples"):
        validate_update("de", dict(GLOBAL), {"num_examples": count, "train_loss": 1.0}, GLOBAL)


def test_an_example_count_given_as_a_numpy_number_is_accepted():
    update = validate_update("de", dict(GLOBAL), {"num_examples": np.float32(5.0)}, GLOBAL)
    assert update.num_examples == 5
