"""The coordinator's side of a round, as a Flower Message-API strategy.

Flower's ``Strategy.start`` drives the rounds; this class decides what each message carries,
turns replies into validated ``SiteUpdate``s, leaves failed sites out with their reason, and
hands the arithmetic to the configured strategy of ``strategies/``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy as FlowerStrategy

from common.channel import ChannelRejected, CoordinatorChannel
from common.ranks import adapter_rank, pad_to_rank, truncate_to_rank
from common.wire import LOCAL_BASELINE, PERSONALIZE, STATUS_OK, AdapterState, state_to_record
from server.validation import UpdateRejected, update_norm, validate_update
from strategies import SiteUpdate, Strategy

log = logging.getLogger(__name__)

NODE_WAIT_S = 120.0  # before the first message: for every site to connect
REJOIN_WAIT_S = 5.0  # later: a moment for a restarting site, then go on without it


@dataclass
class RoundRecord:
    """What happened in one round: per-site metrics and the sites left out, with reasons."""

    round: int
    train: dict[str, dict[str, float]] = field(default_factory=dict)
    evaluate: dict[str, dict[str, float]] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    aggregated: bool = False
    started: float = field(default_factory=time.perf_counter)
    wall_s: float = 0.0


    def summary(self) -> str:
        """One line for an operator: who trained, the mean score, time, who was left out."""
        f1 = [m["macro_f1"] for m in self.evaluate.values()]
        mean = sum(f1) / len(f1) if f1 else float("nan")
        left_out = f", left out: {', '.join(sorted(self.excluded))}" if self.excluded else ""
        return (f"round {self.round}: {len(self.train)} sites trained, mean macro-F1 "
                f"{mean:.3f} over {len(f1)} sites, {self.wall_s:.1f} s{left_out}")


class RoundObserver:
    """Hooks the coordinator calls; the CLI shows progress, the run directory records."""

    def phase(self, round_number: int, phase: str) -> None: ...

    def round_done(self, record: RoundRecord) -> None: ...


def wait_for_nodes(grid: Grid, expected: int, timeout_s: float = NODE_WAIT_S) -> list[int]:
    """Node ids once ``expected`` nodes are connected, or those present at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= expected or time.monotonic() >= deadline:
            return nodes
        time.sleep(0.5)


def reply_site(reply: Message, node_sites: dict[int, str] | None = None
               ) -> tuple[str, str | None]:
    """(site, failure reason or None) of a reply; Flower-level errors included. A node is
    named by the site it answered for before (``node_sites``), else ``node-<id>``."""
    node = reply.metadata.src_node_id
    known = (node_sites or {}).get(node, f"node-{node}")
    if reply.has_error():
        return known, f"Flower error {reply.error.code}: {reply.error.reason}"
    status = reply.content.config_records.get("site")
    if status is None:
        return known, "reply without a site record"
    site = str(status["site"])
    if status["status"] != STATUS_OK:
        return site, str(status.get("reason", "no reason given"))
    return site, None


class Coordinator(FlowerStrategy):
    """Sends the global adapter to every site each round and aggregates the replies."""

    def __init__(
        self,
        *,
        strategy: Strategy,
        channel: CoordinatorChannel,
        site_ids: list[str],
        min_sites: int,
        max_update_norm: float = float("inf"),
        observer: RoundObserver | None = None,
        checkpoint: Callable[[int, AdapterState], None] | None = None,
        site_ranks: dict[str, int] | None = None,
    ) -> None:
        self.strategy = strategy
        self.channel = channel
        self.max_update_norm = max_update_norm
        self.site_ids = site_ids
        self.min_sites = min_sites
        self.observer = observer or RoundObserver()
        self.rounds: dict[int, RoundRecord] = {}
        self.global_state: AdapterState = {}
        self.latest_state: AdapterState = {}  # after the last aggregation
        self.round_offset = 0  # rounds completed before this run (a resumed run)
        self._messaged = False
        self.checkpoint = checkpoint
        self.site_ranks = site_ranks or {}
        self.node_sites: dict[int, str] = {}  # learned from replies, to name Flower errors

    # Messages out

    def _messages(
        self, grid: Grid, arrays: ArrayRecord, config: ConfigRecord, round_number: int,
        message_type: str, state: AdapterState | None = None,
    ) -> list[Message]:
        wait_s = REJOIN_WAIT_S if self._messaged else NODE_WAIT_S
        nodes = wait_for_nodes(grid, len(self.site_ids), wait_s)
        self._messaged = True
        if state is None:
            state = {name: array.numpy() for name, array in arrays.items()}
        global_record = self.channel.pack_global(state, round_number)
        round_config = ConfigRecord({**dict(config), "round": round_number})
        return [
            Message(
                content=RecordDict({"global": global_record, "config": round_config}),
                message_type=message_type,
                dst_node_id=node,
            )
            for node in nodes
        ]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset  # the run's round, counted across resumes
        self.rounds[server_round] = RoundRecord(round=server_round)
        self.global_state = {name: array.numpy() for name, array in arrays.items()}
        self.observer.phase(server_round, "train")
        return self._messages(grid, arrays, config, server_round, MessageType.TRAIN,
                              state=self.global_state)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset  # the run's round, counted across resumes
        self.observer.phase(server_round, "evaluate")
        return self._messages(grid, arrays, config, server_round, MessageType.EVALUATE)

    def _open(self, reply: Message, round_number: int) -> tuple[str, dict, dict]:
        """(site, tensors, metrics) of a reply; raises UpdateRejected with the reason."""
        site, failure = reply_site(reply, self.node_sites)
        if failure is not None:
            raise UpdateRejected(failure, site)
        try:
            state, metrics = self.channel.open_reply(site, reply.content, round_number)
        except ChannelRejected as exc:
            raise UpdateRejected(str(exc), site) from None
        if site in self.site_ids:  # a verified reply: this node serves this site
            self.node_sites[reply.metadata.src_node_id] = site
        return site, state, metrics

    # Replies in

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset  # the run's round, counted across resumes
        record = self.rounds[server_round]
        updates: list[SiteUpdate] = []
        for reply in replies:
            try:
                site, state, metrics = self._open(reply, server_round)
                if site in record.train:
                    raise UpdateRejected("a second update in the same round", site)
                expected = self._expected_for(site)
                update = validate_update(site, state, metrics, expected, self.max_update_norm)
            except UpdateRejected as exc:
                site = exc.site or site
                record.excluded[site] = str(exc)
                self.channel.note_rejection(site, server_round, str(exc))
                log.warning("round %s: site %s left out: %s", server_round, site, exc)
                continue
            metrics["update_norm"] = update_norm(update.state, expected)
            updates.append(self._to_global_rank(update))
            record.train[site] = metrics
        self._note_silent(record, record.train, "update")

        if len(updates) < self.min_sites:
            log.warning(
                "round %s: %d usable updates, fewer than federation.min_sites=%d; "
                "global adapter unchanged", server_round, len(updates), self.min_sites
            )
            return None, None
        updates.sort(key=lambda update: update.site)  # the same sum whatever the reply order
        new_state = self.strategy.aggregate(self.global_state, updates)
        self.latest_state = new_state
        record.aggregated = True
        total = sum(u.num_examples for u in updates)
        loss = sum(record.train[u.site]["train_loss"] * u.num_examples for u in updates) / total
        log.info("round %s: aggregated %d sites (%d examples) with %s", server_round,
                 len(updates), total, self.strategy.name)
        return state_to_record(new_state), MetricRecord({"train_loss": loss, "sites": len(updates)})

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        server_round += self.round_offset  # the run's round, counted across resumes
        record = self.rounds[server_round]
        for reply in replies:
            try:
                site, _, metrics = self._open(reply, server_round)
            except UpdateRejected as exc:
                record.excluded.setdefault(exc.site, str(exc))
                log.warning("round %s: site %s did not evaluate: %s", server_round, exc.site,
                            exc)
                continue
            record.evaluate[site] = metrics
        self._note_silent(record, record.evaluate, "evaluation")
        record.wall_s = time.perf_counter() - record.started
        self.observer.round_done(record)
        if self.checkpoint is not None:
            self.checkpoint(server_round, self.latest_state or self.global_state)
        if not record.evaluate:
            return None
        f1 = [m["macro_f1"] for m in record.evaluate.values()]
        return MetricRecord(
            {"mean_macro_f1": float(np.mean(f1)), "worst_macro_f1": float(np.min(f1))}
        )

    def _expected_for(self, site: str) -> AdapterState:
        """The global adapter as ``site`` holds it: cut to the site's LoRA rank."""
        rank = self.site_ranks.get(site)
        if rank is None or rank == adapter_rank(self.global_state):
            return self.global_state
        return truncate_to_rank(self.global_state, rank)

    def _to_global_rank(self, update: SiteUpdate) -> SiteUpdate:
        """A smaller-rank site's update at the global rank: zero-padded (same B A) for a
        strategy that averages products, padded with the global's own components (no change
        there) for one that averages the factors."""
        rank = adapter_rank(self.global_state)
        if rank is None or adapter_rank(update.state) == rank:
            return update
        fill = None if getattr(self.strategy, "averages_products", False) else self.global_state
        return SiteUpdate(update.site, pad_to_rank(update.state, rank, fill), update.num_examples)

    def _note_silent(self, record: RoundRecord, replied: dict, what: str) -> None:
        """Sites that sent nothing this round (down, disconnected, too slow): left out."""
        for site in self.site_ids:
            if site not in replied and site not in record.excluded:
                record.excluded[site] = (f"no {what} this round: not connected, down, or "
                                         "slower than federation.round_timeout_s")
                log.warning("round %s: no %s from site %s", record.round, what, site)

    def summary(self) -> None:
        log.info("coordinator: %d sites, strategy %s, min_sites %d", len(self.site_ids),
                 self.strategy.name, self.min_sites)


    def query_sites(
        self, grid: Grid, state: AdapterState, config: dict, timeout_s: float
    ) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
        """Send ``state`` with a query task to every site; each site's metrics or failure."""
        messages = self._messages(
            grid, ArrayRecord(array_dict={}), ConfigRecord(config), 0, MessageType.QUERY,
            state=state,
        )
        results, failures = {}, {}
        for reply in grid.send_and_receive(messages, timeout=timeout_s):
            try:
                site, _, metrics = self._open(reply, 0)
            except UpdateRejected as exc:
                failures[exc.site] = str(exc)
                continue
            results[site] = metrics
        return results, failures

    def run_local_baseline(
        self, grid: Grid, initial: AdapterState, epochs: int, timeout_s: float
    ) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
        """Ask every site to train alone for ``epochs`` from ``initial``; its test metrics."""
        return self.query_sites(
            grid, initial, {"task": LOCAL_BASELINE, "epochs": epochs}, timeout_s
        )

    def run_personalization(
        self, grid: Grid, shared: AdapterState, epochs: int, learning_rate: float,
        timeout_s: float,
    ) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
        """Ask every site to fine-tune its own head on the final global model; test metrics."""
        config = {"task": PERSONALIZE, "epochs": epochs, "learning-rate": learning_rate}
        return self.query_sites(grid, shared, config, timeout_s)
