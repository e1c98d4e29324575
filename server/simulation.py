"""`fedsilo simulate`: a whole federation on one machine, on Flower's simulation engine.

Each site is a virtual Flower SuperNode running the same ClientApp as a deployed site; the
coordinator is the same ServerApp. With baselines on, the same run also trains each country
alone (on the sites, through Flower) and one pooled model (here, in the launching process:
only possible in simulation, where the silos sit on one machine).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from common.config import FedsiloConfig
from common.data import SiteDataError, load_silo, prepare_silos
from common.federation import federation_labels, silo_dir, silo_root, site_seed
from common.model import build_site_model
from common.offline import apply_offline_switches, hub_offline_from_now
from common.offline_model import resolve_model_source
from common.training import StepCallback, concat_splits, encode_split, evaluate, train_local
from server.coordinator import RoundObserver
from server.enrollment import provision_simulation_keys
from server.report import ResultTable, create_run_dir

log = logging.getLogger(__name__)


class SimulationFailed(RuntimeError):
    """The federation could not run to the end."""


@dataclass
class SimulationResult:
    run_dir: Path
    table: ResultTable
    wall_s: float


def ensure_default_silos(cfg: FedsiloConfig) -> None:
    """Prepare the chatterbot silos for the sites that use the default corpus, once."""
    default_sites = [s.id for s in cfg.federation.sites if s.silo is None]
    if not default_sites:
        return
    root = silo_root(cfg)
    if (root / "labels.json").exists() and all((root / s).is_dir() for s in default_sites):
        return
    log.info("preparing default silos in %s", root)
    prepare_silos(root, seed=cfg.data.seed)


def secure_simulation(cfg: FedsiloConfig, run_dir: Path) -> FedsiloConfig:
    """Generate every party's keys in the run directory and point the config at them."""
    if not cfg.security.enabled:
        log.warning(
            "SECURITY IS OFF: updates travel unencrypted and unsigned and no audit log is "
            "kept. Use security.enabled=false for benchmarking only, never with real data."
        )
        return cfg
    keys_dir, audit_dir = run_dir / "keys", run_dir / "audit"
    provision_simulation_keys(keys_dir, cfg.site_ids(), cfg.security.kem)
    audit_dir.mkdir(exist_ok=True)
    security = cfg.security.model_copy(update={"keys_dir": keys_dir, "audit_dir": audit_dir})
    return cfg.model_copy(update={"security": security})


def backend_config(cfg: FedsiloConfig) -> dict:
    """Flower's Ray backend settings: loopback only, no dashboard, bounded CPUs."""
    init_args = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": True}
    if cfg.simulation.num_cpus:
        init_args["num_cpus"] = cfg.simulation.num_cpus
    return {
        "client_resources": {"num_cpus": cfg.simulation.cpus_per_site, "num_gpus": 0.0},
        "init_args": init_args,
    }


def run_centralized(
    cfg: FedsiloConfig, outcome, labels: list[str], on_step: StepCallback | None = None
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Pool every usable silo's training data, train one model, test it on each country."""
    site_model = outcome.site_model
    read = dict(labels=labels, **cfg.data.read_options())
    train_parts, tests, failures = [], {}, {}
    for site in cfg.site_ids():
        try:
            train = load_silo(silo_dir(cfg, site), "train", **read)
            test = load_silo(silo_dir(cfg, site), cfg.data.eval_split, **read)
        except (SiteDataError, FileNotFoundError) as exc:
            failures[site] = str(exc)
            continue
        encode = lambda split: encode_split(
            site_model.tokenizer, split.texts, split.labels, cfg.model.max_length
        )
        train_parts.append(encode(train))
        tests[site] = encode(test)
    if not train_parts:
        raise SimulationFailed("centralized baseline: no site has usable data")

    site_model.load_adapter_state(outcome.initial_state)
    train_local(
        site_model.model,
        concat_splits(train_parts),
        epochs=cfg.federation.rounds * cfg.train.local_epochs,
        batch_size=cfg.train.batch_size,
        learning_rate=cfg.train.learning_rate,
        weight_decay=cfg.train.weight_decay,
        seed=site_seed(cfg.seed, "centralized", 0),
        on_step=on_step,
    )
    results = {
        site: evaluate(site_model.model, data, cfg.train.eval_batch_size)
        for site, data in tests.items()
    }
    return results, failures


def simulate(
    cfg: FedsiloConfig,
    display: RoundObserver | None = None,
    centralized_step: StepCallback | None = None,
) -> SimulationResult:
    """Run the configured federation on Flower's simulation engine and write the run dir."""
    apply_offline_switches(hub_offline=False)
    from flwr.simulation import run_simulation  # after the switches: imports Ray

    from client.app import make_client_app
    from server.app import CoordinatorOutcome, NothingLearned, make_server_app

    started = time.perf_counter()
    model_source = resolve_model_source(cfg.model.name, cfg.model.source)
    if cfg.model.source == "hub":
        from huggingface_hub import snapshot_download

        model_source = snapshot_download(str(model_source))  # once, before the sites start
    hub_offline_from_now()  # the sites load what was just resolved, from local files
    log.info("base model: %s", model_source)
    ensure_default_silos(cfg)
    labels = federation_labels(cfg)
    # Load the model before Flower starts and before the run directory: a bad model or LoRA
    # setting fails here, in seconds, leaving nothing behind.
    site_model = build_site_model(cfg, labels, model_source)
    run_dir = create_run_dir(cfg)
    log.info("run directory %s", run_dir)
    cfg = secure_simulation(cfg, run_dir)

    outcome = CoordinatorOutcome(site_model=site_model)
    server_app = make_server_app(cfg, run_dir, outcome, display or RoundObserver())
    site_model_settings = cfg.model.model_copy(update={"name": str(model_source),
                                                       "source": "local"})
    client_app = make_client_app(cfg.model_copy(update={"model": site_model_settings}))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        try:
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=len(cfg.federation.sites),
                backend_config=backend_config(cfg),
            )
        except Exception as exc:
            raise SimulationFailed(f"the federation stopped: {exc}") from exc
    if outcome.final_state is None or not outcome.rounds:
        raise SimulationFailed("the coordinator ended without completing a round")
    try:
        outcome.require_learning()
    except NothingLearned as exc:
        raise SimulationFailed(str(exc)) from None

    baselines, failures = {}, {}
    if cfg.simulation.baselines:
        baselines["local"] = outcome.local
        baselines["centralized"], central_failures = run_centralized(
            cfg, outcome, labels, centralized_step
        )
        failures = {**outcome.local_failures, **central_failures}
    table = outcome.table(cfg, baselines, failures)
    outcome.write_results(run_dir, table)
    wall_s = time.perf_counter() - started
    log.info("simulation finished in %.0f s", wall_s)
    return SimulationResult(run_dir=run_dir, table=table, wall_s=wall_s)
