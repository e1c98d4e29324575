"""The site side: a Flower ClientApp that trains and evaluates on the site's own silo.

Only adapter tensors and named scalar metrics leave the site. The base model and the
tokenized silo stay loaded in the process between rounds (``SiteRuntime``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from common.audit import AuditLog
from common.channel import SiteChannel
from common.config import FedsiloConfig
from common.data import SiteDataError, load_silo
from common.egress import EgressPolicy, tensor_spec
from common.federation import federation_labels, silo_dir, site_seed
from common.keys import load_identity, load_public
from common.model import SiteModel, build_site_model, classification_head
from common.ranks import truncate_to_rank
from common.training import (
    EncodedSplit,
    encode_split,
    evaluate,
    evaluate_head,
    head_features,
    proximal_term,
    train_head,
    train_local,
)
from common.wire import (
    LOCAL_BASELINE,
    PERSONALIZE,
    record_to_state,
    site_error,
    state_to_record,
)
from strategies import create_strategy, local_tensors

log = logging.getLogger(__name__)

# Node state record holding the adapter parts a site keeps (never sent).
LOCAL_RECORD = "fedsilo-local-adapter"
# Node state record holding the site's own fine-tuned head (never sent).
PERSONAL_HEAD_RECORD = "fedsilo-personal-head"


class SiteRuntime:
    """What one process keeps warm between rounds: the model and the tokenized silos."""

    def __init__(self, cfg: FedsiloConfig) -> None:
        self.cfg = cfg
        self.labels = federation_labels(cfg)
        self._models: dict[int, SiteModel] = {}  # by LoRA rank (sites may differ)
        self._initial: dict[int, dict] = {}
        self._policies: dict[int, EgressPolicy] = {}
        self.ranks = cfg.site_ranks()
        self.rank = cfg.lora.r  # of the site being served (see use_site)
        self._splits: dict[tuple[str, str], EncodedSplit] = {}
        self.loads = 0
        self.loads_reported = 0  # model loads already reported in a reply
        self._identities: dict[str, tuple] = {}
        strategy = create_strategy(cfg.strategy)
        self.is_local = local_tensors(strategy)
        self.proximal = getattr(strategy, "site_proximal_term", False)

    def use_site(self, site: str) -> None:
        """Serve ``site`` next: its LoRA rank picks the model."""
        self.rank = self.ranks.get(site, self.cfg.lora.r)

    @property
    def model(self) -> SiteModel:
        """The warm model at the current site's rank (loaded on first use)."""
        if self.rank not in self._models:
            torch.set_num_threads(self.cfg.train.threads)
            started = time.perf_counter()
            model = build_site_model(self.cfg.for_rank(self.rank), self.labels)
            self._models[self.rank] = model
            self._initial[self.rank] = model.adapter_state()
            self.loads += 1
            log.info("base model loaded in %.1f s from %s (LoRA rank %d)",
                     time.perf_counter() - started, model.source, self.rank)
        return self._models[self.rank]

    @property
    def initial_state(self) -> dict:
        self.model  # noqa: B018 - loads the model and its initial adapter on first use
        return self._initial[self.rank]

    def split(self, site: str, name: str) -> EncodedSplit:
        key = (site, name)
        if key not in self._splits:
            data = load_silo(silo_dir(self.cfg, site), name, labels=self.labels,
                             **self.cfg.data.read_options())
            self._splits[key] = encode_split(
                self.model.tokenizer, data.texts, data.labels, self.cfg.model.max_length
            )
        return self._splits[key]

    def egress_policy(self) -> EgressPolicy:
        """The site's declaration: its own adapter's shared tensors, the allowed metrics.

        Tensors the strategy keeps at the site (a personal head) are not declared: the guard
        blocks them if they ever head out.
        """
        if self.rank not in self._policies:
            shared = {k: v for k, v in self.initial_state.items() if not self.is_local(k)}
            self._policies[self.rank] = EgressPolicy(tensors=tensor_spec(shared))
        return self._policies[self.rank]

    def with_local_parts(self, state: dict, context: Context) -> dict:
        """The received shared tensors, cut to this site's rank, plus the site's own kept
        parts (its head, say)."""
        state = truncate_to_rank(state, self.rank)
        missing = [k for k in self.initial_state if k not in state]
        if not missing:
            return state
        kept = context.state.array_records.get(LOCAL_RECORD)
        kept_state = record_to_state(kept) if kept is not None else {}
        return {**state, **{k: kept_state.get(k, self.initial_state[k]) for k in missing}}

    def keep_local_parts(self, tensors: dict | None, context: Context) -> dict | None:
        """Store the parts that stay at the site; return only what may be sent."""
        if tensors is None:
            return None
        local = {k: v for k, v in tensors.items() if self.is_local(k)}
        if local:
            context.state[LOCAL_RECORD] = state_to_record(local)
        return {k: v for k, v in tensors.items() if not self.is_local(k)}

    def channel(self, site: str, audit: AuditLog | None) -> SiteChannel:
        security = self.cfg.security
        if not security.enabled:
            return SiteChannel(site, None, None, guard=self.egress_policy(), audit=None)
        if site not in self._identities:  # read the key files once per process
            keys_dir = Path(security.keys_dir)
            self._identities[site] = (load_identity(keys_dir / f"{site}.key"),
                                      load_public(keys_dir / "coordinator.pub.json"))
        identity, coordinator = self._identities[site]
        return SiteChannel(site, identity, coordinator, guard=self.egress_policy(), audit=audit)

    def fresh_model_loads(self) -> int:
        """Model loads in this process since the last reply that reported them."""
        fresh, self.loads_reported = self.loads - self.loads_reported, self.loads
        return fresh

    def train(self, site: str, state, epochs: int, seed: int) -> tuple[dict, dict]:
        data = self.split(site, "train")
        self.model.load_adapter_state(state)
        mu = self.cfg.strategy.proximal_mu
        extra = proximal_term(self.model.model, mu) if self.proximal else None
        metrics = train_local(
            self.model.model,
            data,
            epochs=epochs,
            batch_size=self.cfg.train.batch_size,
            learning_rate=self.cfg.train.learning_rate,
            weight_decay=self.cfg.train.weight_decay,
            seed=seed,
            extra_loss=extra,
        )
        return self.model.adapter_state(), metrics

    def evaluate(self, site: str, state) -> dict:
        data = self.split(site, self.cfg.data.eval_split)
        self.model.load_adapter_state(state)
        return evaluate(self.model.model, data, self.cfg.train.eval_batch_size)

    def personalize(self, site: str, state, epochs: int, learning_rate: float,
                    seed: int) -> tuple[dict, dict]:
        """Fine-tune a copy of the head on the global model's features of the site's own
        training split; return the head's tensors (to keep here) and its test metrics."""
        self.model.load_adapter_state(state)
        network = self.model.model
        shared_head = classification_head(network)
        batch = self.cfg.train.eval_batch_size
        train = self.split(site, "train")
        test = self.split(site, self.cfg.data.eval_split)
        train_x = head_features(network, shared_head, train, batch)
        test_x = head_features(network, shared_head, test, batch)
        head = copy.deepcopy(shared_head)
        stats = train_head(
            head, train_x, train.labels, epochs=epochs, batch_size=self.cfg.train.batch_size,
            learning_rate=learning_rate, weight_decay=self.cfg.train.weight_decay, seed=seed,
        )
        metrics = evaluate_head(head, test_x, test.labels)
        metrics["train_time_s"] = stats["train_time_s"]
        kept = {k: v.detach().cpu().numpy().copy() for k, v in head.state_dict().items()}
        return kept, metrics


_RUNTIMES: dict[str, SiteRuntime] = {}


def runtime_for(cfg: FedsiloConfig) -> SiteRuntime:
    """The process-wide runtime of this configuration, created on first use."""
    key = hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode())
    digest = key.hexdigest()
    if digest not in _RUNTIMES:
        _RUNTIMES.clear()
        _RUNTIMES[digest] = SiteRuntime(cfg)
    return _RUNTIMES[digest]


def site_of(cfg: FedsiloConfig, context: Context) -> str:
    """The site this node serves: node config ``site``, or the simulation's partition id."""
    node_config = context.node_config
    if "site" in node_config:
        return str(node_config["site"])
    partition = int(node_config["partition-id"])
    return cfg.site_ids()[partition]


def _failure_reason(exc: Exception) -> str:
    """What the coordinator is told: the problem and the file's name, never a path or text."""
    if isinstance(exc, SiteDataError):
        where = exc.path.name if exc.line is None else f"{exc.path.name}, {exc.unit} {exc.line}"
        return f"{where}: {exc.reason}" + (f". {exc.hint}" if exc.hint else "")
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"{Path(exc.filename).name}: file not found at the site"
    return f"{type(exc).__name__}: {exc}"


def _site_audit(cfg: FedsiloConfig, site: str) -> AuditLog | None:
    """The site's audit log, opened for one message (sites may move between processes)."""
    if not cfg.security.enabled or cfg.security.audit_dir is None:
        return None
    return AuditLog(Path(cfg.security.audit_dir) / f"{site}.jsonl")


# What a site does for each kind of message: (cfg, runtime, site, content, global state,
# round, node context) -> (tensors to send or None, metrics).
Work = Callable[[FedsiloConfig, SiteRuntime, str, RecordDict, dict, int, Context],
                tuple[dict | None, dict]]


def _train(cfg, runtime, site, content, state, round_number, context):
    seed = site_seed(cfg.seed, site, round_number)
    new_state, metrics = runtime.train(site, state, cfg.train.local_epochs, seed)
    metrics["model_loads"] = float(runtime.fresh_model_loads())
    log.info("site %s round %s: trained on %d examples, loss %.4f in %.1f s", site,
             round_number, int(metrics["num_examples"]), metrics["train_loss"],
             metrics["train_time_s"])
    return new_state, metrics


def _evaluate(cfg, runtime, site, content, state, round_number, context):
    started = time.perf_counter()
    metrics = runtime.evaluate(site, state)
    metrics["eval_time_s"] = time.perf_counter() - started
    metrics["model_loads"] = float(runtime.fresh_model_loads())
    return None, metrics


def _local_baseline(cfg, runtime, site, content, state, round_number, context):
    """Train alone from the initial adapter with the federation's compute, then test."""
    epochs = int(content["config"]["epochs"])
    trained, metrics = runtime.train(site, state, epochs, site_seed(cfg.seed, site, 0))
    result = runtime.evaluate(site, trained)
    result["train_time_s"] = metrics["train_time_s"]
    return None, result


def _personalize(cfg, runtime, site, content, state, round_number, context):
    """The site's own head on the final global model; the head stays in node state."""
    config = content["config"]
    head, metrics = runtime.personalize(
        site, state, int(config["epochs"]), float(config["learning-rate"]),
        site_seed(cfg.seed, site, round_number),
    )
    context.state[PERSONAL_HEAD_RECORD] = state_to_record(head)
    log.info("site %s: own head fine-tuned, test macro-F1 %.3f", site, metrics["macro_f1"])
    return None, metrics


QUERY_TASKS: dict[str, Work] = {LOCAL_BASELINE: _local_baseline, PERSONALIZE: _personalize}


def _query(cfg, runtime, site, content, state, round_number, context):
    task = str(content["config"]["task"])
    if task not in QUERY_TASKS:
        raise ValueError(f"unknown query task {task!r}")
    return QUERY_TASKS[task](cfg, runtime, site, content, state, round_number, context)


WORK: dict[str, Work] = {
    MessageType.TRAIN: _train,
    MessageType.EVALUATE: _evaluate,
    MessageType.QUERY: _query,
}


def site_reply(cfg: FedsiloConfig, message_type: str, content: RecordDict,
               context: Context) -> RecordDict:
    """The content of a site's reply to one coordinator message; never raises.

    A failure becomes an error reply naming the problem (file name and line, never a path
    or text), so the coordinator can leave the site out and go on.
    """
    site, audit = "unknown", None
    try:
        site = site_of(cfg, context)
        audit = _site_audit(cfg, site)
        work = WORK.get(message_type)
        if work is None:
            raise ValueError(f"unsupported message type {message_type!r}")
        runtime = runtime_for(cfg)
        runtime.use_site(site)
        channel = runtime.channel(site, audit)
        round_number = int(content["config"]["round"])
        run_id = str(context.run_id)
        state = channel.open_global(content["global"], run_id, round_number)
        state = runtime.with_local_parts(state, context)
        tensors, metrics = work(cfg, runtime, site, content, state, round_number, context)
        tensors = runtime.keep_local_parts(tensors, context)
        return channel.pack_reply(tensors, metrics, run_id, round_number)
    except Exception as exc:  # noqa: BLE001 - a site's failure is reported, never raised
        reason = _failure_reason(exc)
        log.warning("site %s: %s", site, exc)
        if audit is not None:
            audit.append("message", peer="coordinator", direction="sent", size_bytes=0,
                         payload_digest="", decision="error", reason=reason)
        return site_error(site, reason)
    finally:
        if audit is not None:
            audit.close()


def make_client_app(cfg: FedsiloConfig) -> ClientApp:
    """A ClientApp serving every site of ``cfg`` in this process (simulation, or a
    deployment without a warm site worker)."""
    app = ClientApp()

    def reply(msg: Message, context: Context) -> Message:
        return Message(content=site_reply(cfg, msg.metadata.message_type, msg.content, context),
                       reply_to=msg)

    app.train()(reply)
    app.evaluate()(reply)
    app.query()(reply)
    return app
