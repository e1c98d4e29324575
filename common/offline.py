"""Switches that keep Flower, Ray and Hugging Face offline and on loopback.

Applied by every fedsilo entry point before Flower or Ray is imported, so no user or test
runs a simulation that binds beyond 127.0.0.1, probes cloud metadata addresses, phones home
or tries to install packages at run time.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

OFFLINE_ENV = {
    # Flower: no per-run dependency install, no telemetry, no update check.
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    # Ray: every listener on 127.0.0.1, no usage statistics.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    # Hugging Face: local files only unless the user asked for the hub.
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

# A present bootstrap file makes Ray's dashboard agent skip its cloud metadata probes.
RAY_BOOTSTRAP_FILE = Path.home() / "ray_bootstrap_config.yaml"


def apply_offline_switches(*, hub_offline: bool = True) -> None:
    """Set the environment switches (user-set values win) and Ray's bootstrap marker file.

    ``hub_offline=False`` leaves Hugging Face alone, for the one model resolution that may
    reach the hub (``model.source`` auto or hub); call ``hub_offline_from_now()`` after it.
    """
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    if hub_offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if not RAY_BOOTSTRAP_FILE.exists():
        try:
            RAY_BOOTSTRAP_FILE.write_text("{}\n", encoding="utf-8")
            log.info("wrote %s so Ray does not probe cloud metadata addresses",
                     RAY_BOOTSTRAP_FILE)
        except OSError as exc:
            log.warning("could not write %s (%s): Ray may probe cloud metadata addresses",
                        RAY_BOOTSTRAP_FILE, exc)


def hub_offline_from_now() -> None:
    """After the model is resolved (and cached), no process of this run asks the hub again."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
