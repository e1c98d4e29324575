"""Where a site's silo and the federation's label set come from."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

from common.config import FedsiloConfig
from common.data import default_silo_root


def silo_root(cfg: FedsiloConfig) -> Path:
    return Path(cfg.data.silo_root) if cfg.data.silo_root else default_silo_root()


def silo_dir(cfg: FedsiloConfig, site: str) -> Path:
    spec = next((s for s in cfg.federation.sites if s.id == site), None)
    if spec is None:
        raise KeyError(f"site {site!r} is not in federation.sites")
    return Path(spec.silo) if spec.silo else silo_root(cfg) / site


def federation_labels(cfg: FedsiloConfig) -> list[str]:
    """``data.labels`` if set, else the labels.json written by `fedsilo data prepare`."""
    if cfg.data.labels:
        return list(cfg.data.labels)
    path = silo_root(cfg) / "labels.json"
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: no label set; run `fedsilo data prepare` or set data.labels"
        ) from None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{path}: expected a JSON list of label names")
    return labels


def site_seed(seed: int, site: str, round_number: int) -> int:
    """A seed per site and round, stable across processes and Python versions."""
    return (seed * 1_000_003 + round_number * 10_007 + zlib.crc32(site.encode())) % (2**31)
