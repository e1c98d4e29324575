"""The coordinator's Flower ServerApp: federated rounds, then the optional local baseline."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from common.audit import AuditLog
from common.channel import CoordinatorChannel
from common.config import FedsiloConfig
from common.federation import federation_labels
from common.model import SiteModel, build_site_model, save_adapter
from common.wire import AdapterState, record_to_state, state_to_record
from server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from server.coordinator import Coordinator, RoundObserver, RoundRecord
from server.enrollment import COORDINATOR, coordinator_identity, enrolled_sites
from server.report import ResultTable, append_jsonl, atomic_write, build_table
from strategies import create_strategy, local_tensors

log = logging.getLogger(__name__)


@dataclass
class CoordinatorOutcome:
    """What the ServerApp leaves for the command that launched it."""

    site_model: SiteModel | None = None
    initial_state: AdapterState | None = None
    final_state: AdapterState | None = None
    rounds: list[RoundRecord] = field(default_factory=list)
    local: dict[str, dict[str, float]] = field(default_factory=dict)
    local_failures: dict[str, str] = field(default_factory=dict)
    personal: dict[str, dict[str, float]] = field(default_factory=dict)
    personal_failures: dict[str, str] = field(default_factory=dict)

    def excluded(self) -> dict[str, str]:
        """Each site left out of any round, with its latest reason and the rounds."""
        reasons: dict[str, tuple[list[int], str]] = {}
        for record in self.rounds:
            for site, reason in record.excluded.items():
                rounds, _ = reasons.get(site, ([], ""))
                reasons[site] = (rounds + [record.round], reason)
        return {
            site: f"rounds {','.join(map(str, rounds))}: {reason}"
            for site, (rounds, reason) in reasons.items()
        }


    def require_learning(self) -> None:
        """Raise when no round had a usable update: nothing was learned."""
        if not any(record.aggregated for record in self.rounds):
            reasons = "; ".join(f"{s}: {r}" for s, r in sorted(self.excluded().items()))
            raise NothingLearned(f"no round had a usable update, nothing was learned "
                                 f"({reasons or 'no site replied'})")

    def table(self, cfg: FedsiloConfig, baselines: dict | None = None,
              baseline_failures: dict[str, str] | None = None) -> ResultTable:
        """The per-country table: the global model, the sites' own heads, any baselines."""
        arms = {"federated": self.rounds[-1].evaluate, **(baselines or {})}
        excluded = self.excluded()
        if self.personal or self.personal_failures:
            arms["personal"] = self.personal
            for site, reason in self.personal_failures.items():
                excluded.setdefault(site, f"own head: {reason}")
        for site, reason in (baseline_failures or {}).items():
            excluded.setdefault(site, reason)
        trained = {site for record in self.rounds for site in record.train}
        return build_table(cfg.site_ids(), arms, excluded, trained)

    def write_results(self, run_dir: Path, table: ResultTable) -> None:
        atomic_write(run_dir / "results.md", table.to_markdown())
        atomic_write(run_dir / "results.json", json.dumps(table.to_dict(), indent=1))


def restore_rounds(metrics: Path, last_round: int) -> list[RoundRecord]:
    """The rounds a resumed run already completed; later lines (a round cut short by the
    crash, after its checkpoint) are dropped from ``metrics``."""
    if not metrics.exists():
        return []
    kept = [line for line in metrics.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["round"] <= last_round]
    atomic_write(metrics, "".join(line + "\n" for line in kept))
    return [RoundRecord(**json.loads(line)) for line in kept]


class NothingLearned(RuntimeError):
    """The federation ended without a single aggregated round."""


class RunRecorder(RoundObserver):
    """Writes one JSON line per round to the run directory and forwards to a display."""

    def __init__(self, run_dir: Path, outcome: CoordinatorOutcome, display: RoundObserver):
        self.path = run_dir / "metrics.jsonl"
        self.outcome = outcome
        self.display = display

    def phase(self, round_number: int, phase: str) -> None:
        self.display.phase(round_number, phase)

    def round_done(self, record: RoundRecord) -> None:
        self.outcome.rounds.append(record)
        fields = asdict(record)
        fields.pop("started")
        append_jsonl(self.path, fields)
        self.display.round_done(record)


def make_server_app(
    cfg: FedsiloConfig, run_dir: Path, outcome: CoordinatorOutcome, display: RoundObserver
) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_coordinator(cfg, grid, str(context.run_id), run_dir, outcome, display)

    return app


def run_coordinator(cfg: FedsiloConfig, grid: Grid, run_id: str, run_dir: Path,
                    outcome: CoordinatorOutcome, display: RoundObserver) -> None:
    """The body of every fedsilo ServerApp: record the rounds, open the channel, coordinate."""
    recorder = RunRecorder(run_dir, outcome, display)
    channel = coordinator_channel(cfg, run_id)
    try:
        coordinate(cfg, grid, run_dir, outcome, recorder, channel)
    finally:
        if channel.audit is not None:
            channel.audit.close()


def coordinator_channel(cfg: FedsiloConfig, run_id: str) -> CoordinatorChannel:
    """Sealed with the coordinator's identity and the enrolled sites, unless security is off."""
    security = cfg.security
    if not security.enabled:
        return CoordinatorChannel(run_id=run_id, identity=None, registry={},
                                  max_update_bytes=security.max_update_bytes)
    keys_dir = Path(security.keys_dir)
    audit = AuditLog(Path(security.audit_dir) / f"{COORDINATOR}.jsonl")
    return CoordinatorChannel(
        run_id=run_id,
        identity=coordinator_identity(keys_dir),
        registry=enrolled_sites(keys_dir, cfg.federation.sites),
        max_update_bytes=security.max_update_bytes,
        audit=audit,
    )


def coordinate(
    cfg: FedsiloConfig,
    grid: Grid,
    run_dir: Path,
    outcome: CoordinatorOutcome,
    recorder: RoundObserver,
    channel: CoordinatorChannel,
) -> None:
    """Run the federated rounds, save the global adapter, let each site fine-tune its own
    head on it, then the local-only baseline."""
    if outcome.site_model is None:
        outcome.site_model = build_site_model(cfg, federation_labels(cfg))
    outcome.initial_state = outcome.site_model.adapter_state()

    strategy = create_strategy(cfg.strategy)
    is_local = local_tensors(strategy)
    shared_initial = {k: v for k, v in outcome.initial_state.items() if not is_local(k)}
    start_round, shared_start = 0, shared_initial
    # LIMITATION: a resumed run is a new Flower run, so the sites' node state (parts a strategy
    # keeps there: fedavg-local-head, fedsa-lora) starts again from the initial values; the
    # site worker could persist them per site to lift this.
    resumed = load_checkpoint(run_dir)
    if resumed is not None:
        start_round, shared_start = resumed.round, resumed.global_state
        if hasattr(strategy, "import_state"):
            strategy.import_state(resumed.strategy_state)
        outcome.rounds = restore_rounds(run_dir / "metrics.jsonl", start_round)
        log.info("resuming %s after round %d of %d", run_dir, start_round,
                 cfg.federation.rounds)

    def checkpoint(round_number: int, state: AdapterState) -> None:
        strategy_state = strategy.export_state() if hasattr(strategy, "export_state") else {}
        head = channel.audit.head if channel.audit is not None else None
        save_checkpoint(run_dir, Checkpoint(round_number, state, strategy_state, head))

    coordinator = Coordinator(
        strategy=strategy,
        channel=channel,
        site_ids=cfg.site_ids(),
        min_sites=cfg.federation.min_sites,
        max_update_norm=cfg.security.max_update_norm,
        observer=recorder,
        checkpoint=checkpoint,
        site_ranks=cfg.site_ranks(),
    )
    coordinator.round_offset = start_round
    shared_final = shared_start
    if cfg.federation.rounds > start_round:
        result = coordinator.start(
            grid=grid,
            initial_arrays=state_to_record(shared_start),
            num_rounds=cfg.federation.rounds - start_round,
            timeout=cfg.federation.round_timeout_s,
            train_config=ConfigRecord({"local-epochs": cfg.train.local_epochs}),
        )
        if result.arrays is not None and len(result.arrays) > 0:
            shared_final = record_to_state(result.arrays)
    aggregated = any(record.aggregated for record in outcome.rounds)
    # Parts kept at the sites (a personal head) never reach the coordinator: the saved
    # global adapter carries their initial values.
    outcome.final_state = {**outcome.initial_state, **shared_final}
    if aggregated:
        save_adapter(outcome.site_model, outcome.final_state, run_dir / "global", cfg.model.name)
        log.info("global adapter saved to %s", run_dir / "global")

    if aggregated and cfg.personalize.head_epochs > 0:
        recorder.phase(cfg.federation.rounds, "own heads")
        outcome.personal, outcome.personal_failures = coordinator.run_personalization(
            grid, shared_final, cfg.personalize.head_epochs,
            cfg.personalize.learning_rate or cfg.train.learning_rate,
            cfg.federation.round_timeout_s,
        )
        scores = [m["macro_f1"] for m in outcome.personal.values()]
        if scores:
            log.info("own heads on the global model: mean macro-F1 %.3f over %d sites",
                     sum(scores) / len(scores), len(scores))

    if cfg.simulation.baselines:
        recorder.phase(cfg.federation.rounds, "local-only baseline")
        epochs = cfg.federation.rounds * cfg.train.local_epochs
        outcome.local, outcome.local_failures = coordinator.run_local_baseline(
            grid, outcome.initial_state, epochs, cfg.federation.round_timeout_s
        )
        scores = [m["macro_f1"] for m in outcome.local.values()]
        if scores:
            log.info("local-only baseline: mean macro-F1 %.3f over %d sites",
                     sum(scores) / len(scores), len(scores))
