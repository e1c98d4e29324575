"""The run directory: resolved config, per-round metrics, the global adapter, the final table."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from common.config import FedsiloConfig, config_to_yaml

ARMS = ("local", "federated", "personal", "centralized")
ARM_TITLES = {
    "local": "local-only",
    "federated": "federated",
    "personal": "federated + own head",
    "centralized": "centralized (pooled; simulation only)",
}
DELTA_TITLES = {"federated": "fed", "personal": "own head"}


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def create_run_dir(cfg: FedsiloConfig) -> Path:
    """``<runs_dir>/<time>-<name>/`` with the resolved config written into it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.output.runs_dir) / f"{stamp}-{cfg.name}"
    run_dir = base
    for attempt in range(2, 100):
        try:
            run_dir.mkdir(parents=True)
            break
        except FileExistsError:
            run_dir = base.with_name(f"{base.name}-{attempt}")
    else:
        raise FileExistsError(f"{base}: could not create a fresh run directory")
    atomic_write(run_dir / "config.yaml", config_to_yaml(cfg))
    return run_dir


def append_jsonl(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")


@dataclass
class SiteRow:
    site: str
    scores: dict[str, float] = field(default_factory=dict)  # arm -> macro-F1
    accuracy: dict[str, float] = field(default_factory=dict)
    num_test: int = 0
    trained: bool = True  # contributed to the federation in at least one round


@dataclass
class ResultTable:
    """Per-country macro-F1 of each arm, plus the mean and the worst country."""

    rows: list[SiteRow]
    arms: list[str]
    excluded: dict[str, str] = field(default_factory=dict)

    def complete_rows(self) -> list[SiteRow]:
        """Sites that trained, scored under every arm: the fair basis for mean and worst."""
        return [
            row for row in self.rows
            if row.trained and all(arm in row.scores for arm in self.arms)
        ]

    def mean(self, arm: str) -> float:
        values = [row.scores[arm] for row in self.complete_rows()]
        return float(np.mean(values)) if values else float("nan")

    def worst(self, arm: str) -> tuple[str, float]:
        scored = [(row.scores[arm], row.site) for row in self.complete_rows()]
        if not scored:
            return "-", float("nan")
        score, site = min(scored)
        return site, score

    def to_dict(self) -> dict:
        return {
            "arms": self.arms,
            "rows": [asdict(row) for row in self.rows],
            "mean": {arm: self.mean(arm) for arm in self.arms},
            "worst": {arm: dict(zip(("site", "macro_f1"), self.worst(arm))) for arm in self.arms},
            "excluded": self.excluded,
        }

    def compared(self) -> list[str]:
        """The federated arms shown against local-only in a difference column."""
        if "local" not in self.arms:
            return []
        return [arm for arm in ("federated", "personal") if arm in self.arms]

    def to_markdown(self) -> str:
        compared = self.compared()
        titles = [ARM_TITLES[a] for a in self.arms] + [f"{DELTA_TITLES[a]} - local"
                                                       for a in compared]
        header = "| country | test n | " + " | ".join(titles) + " |"
        lines = [header, "|" + "---|" * (len(titles) + 2)]
        for row in self.rows:
            cells = [_fmt(row.scores.get(arm)) for arm in self.arms]
            cells += [_delta(row.scores.get(arm), row.scores.get("local")) for arm in compared]
            site = row.site if row.trained else f"{row.site} (excluded)"
            lines.append(f"| {site} | {row.num_test} | " + " | ".join(cells) + " |")
        mean_cells = [_fmt(self.mean(arm)) for arm in self.arms]
        mean_cells += [_delta(self.mean(arm), self.mean("local")) for arm in compared]
        worst_cells = [f"{_fmt(self.worst(a)[1])} ({self.worst(a)[0]})" for a in self.arms]
        worst_cells += [""] * len(compared)
        lines.append("| **mean** | | " + " | ".join(mean_cells) + " |")
        lines.append("| **worst** | | " + " | ".join(worst_cells) + " |")
        text = (
            "Macro-F1 on each country's own test split; mean and worst over the "
            f"{len(self.complete_rows())} countries scored under every arm.\n\n"
            + "\n".join(lines) + "\n"
        )
        for arm in compared:
            wins, total = self.wins(arm)
            text += f"\n{ARM_TITLES[arm]} beats local-only in {wins} of {total} countries."
        if compared:
            text += "\n"
        if self.excluded:
            text += "\nExcluded sites:\n" + "".join(
                f"- {site}: {reason}\n" for site, reason in sorted(self.excluded.items())
            )
        return text

    def wins(self, arm: str) -> tuple[int, int]:
        """(countries where ``arm`` scores above local-only, countries compared)."""
        rows = self.complete_rows()
        return sum(row.scores[arm] > row.scores["local"] for row in rows), len(rows)


def _fmt(value: float | None) -> str:
    return "-" if value is None or np.isnan(value) else f"{value:.3f}"


def _delta(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "-"
    return f"{a - b:+.3f}"


def build_table(
    site_ids: list[str],
    arm_results: dict[str, dict[str, dict[str, float]]],
    excluded: dict[str, str],
    trained: set[str] | None = None,
) -> ResultTable:
    """``arm_results[arm][site]`` holds the site's test metrics under that arm.

    ``trained``: the sites that contributed an update in some round (default: all).
    """
    arms = [arm for arm in ARMS if arm in arm_results]
    rows = []
    for site in site_ids:
        row = SiteRow(site=site, trained=trained is None or site in trained)
        for arm in arms:
            metrics = arm_results[arm].get(site)
            if metrics is None:
                continue
            row.scores[arm] = float(metrics["macro_f1"])
            row.accuracy[arm] = float(metrics["accuracy"])
            row.num_test = int(metrics["num_examples"])
        if row.scores:
            rows.append(row)
    return ResultTable(rows=rows, arms=arms, excluded=dict(excluded))
