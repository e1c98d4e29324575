"""The console the `fedsilo` commands share: output, errors, logging, config loading."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text

from common.config import ConfigError, FedsiloConfig, load_config

# Markup off: paths, reasons and config values may hold "[...]" and must print as they are.
console = Console(stderr=False, markup=False, highlight=False, soft_wrap=True)
err_console = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML file overriding the default.")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", help="Override one config key (repeatable), e.g. --set train.batch_size=16."
    ),
]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Show Flower's logs.")]


def setup_logging(verbose: bool) -> None:
    handler = RichHandler(console=err_console, show_path=False, rich_tracebacks=False)
    logging.basicConfig(level=logging.INFO, handlers=[handler], format="%(message)s", force=True)
    quiet = logging.INFO if verbose else logging.ERROR
    for name in ("flwr", "ray", "transformers", "peft", "httpx", "huggingface_hub", "alembic"):
        logging.getLogger(name).setLevel(quiet)


def fail(message: str, code: int = 2) -> None:
    err_console.print(Text.assemble(("error: ", "bold red"), message))
    raise typer.Exit(code)


def load(config: Path | None, overrides: list[str] | None) -> FedsiloConfig:
    try:
        return load_config(config, overrides or [])
    except ConfigError as exc:
        fail(str(exc))


def check_silo_and_print(silo: Path, config: Path | None, overrides: list[str] | None) -> None:
    """`fedsilo data check` and `fedsilo site check`: counts per split and label, no text."""
    setup_logging(False)
    cfg = load(config, overrides)
    from common.data import SiteDataError, check_silo
    from common.federation import federation_labels

    try:
        report = check_silo(silo, federation_labels(cfg), **cfg.data.read_options())
    except (SiteDataError, FileNotFoundError, ValueError) as exc:
        fail(str(exc), code=1)
    for split, info in report["splits"].items():
        counts = ", ".join(f"{label} {n}" for label, n in sorted(info.get("counts", {}).items()))
        console.print(f"{split}: {info['examples']} examples" + (f" ({counts})" if counts else ""))
    console.print("ok")
