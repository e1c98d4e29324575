"""The coordinator's checkpoint after every completed round, for resuming a killed run.

``<run dir>/checkpoint/``: ``global-r<N>.safetensors`` (the shared adapter after round N),
``strategy-r<N>.safetensors`` (a stateful strategy's moments, if any) and ``checkpoint.json``
naming them with their SHA-256 digests and the coordinator audit log's head. The JSON is
replaced last and atomically, so a crash at any point leaves the previous checkpoint whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from server.report import atomic_write

log = logging.getLogger(__name__)

FOLDER = "checkpoint"
INDEX = "checkpoint.json"


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be trusted; the message says which file and why."""


@dataclass
class Checkpoint:
    round: int
    global_state: dict[str, np.ndarray]
    strategy_state: dict[str, np.ndarray]
    audit_head: str | None


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_tensors(path: Path, state: dict[str, np.ndarray]) -> str:
    staging = path.with_name(f".{path.name}.tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(staging))
    os.replace(staging, path)
    return _digest(path)


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> None:
    folder = Path(run_dir) / FOLDER
    folder.mkdir(exist_ok=True)
    names = {"global": f"global-r{checkpoint.round}.safetensors",
             "strategy": f"strategy-r{checkpoint.round}.safetensors"}
    index = {
        "round": checkpoint.round,
        "global": {"file": names["global"],
                   "sha256": _write_tensors(folder / names["global"], checkpoint.global_state)},
        "strategy": {"file": names["strategy"],
                     "sha256": _write_tensors(folder / names["strategy"],
                                              checkpoint.strategy_state)},
        "audit_head": checkpoint.audit_head,
    }
    atomic_write(folder / INDEX, json.dumps(index, indent=1) + "\n")
    for old in folder.glob("*-r*.safetensors"):  # earlier rounds: no longer referenced
        if old.name not in names.values():
            old.unlink(missing_ok=True)
    log.info("round %d: checkpoint written", checkpoint.round)


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The last completed round's checkpoint, or None when the run has none yet."""
    folder = Path(run_dir) / FOLDER
    index_path = folder / INDEX
    if not index_path.exists():
        return None
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        parts = {}
        for part in ("global", "strategy"):
            path = folder / index[part]["file"]
            if _digest(path) != index[part]["sha256"]:
                raise CheckpointError(f"{path}: digest differs from {index_path}; the "
                                      "checkpoint was altered")
            parts[part] = load_file(str(path))
        return Checkpoint(round=int(index["round"]), global_state=parts["global"],
                          strategy_state=parts["strategy"], audit_head=index.get("audit_head"))
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{index_path}: unreadable checkpoint ({exc})") from None
