"""Processes fedsilo starts for Flower: their environment, and stopping them by PID."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from common.offline import OFFLINE_ENV


def flower_env(flwr_home: Path | None = None) -> dict[str, str]:
    """The environment of every Flower process fedsilo starts: offline switches, our venv."""
    env = {**OFFLINE_ENV, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **os.environ}
    for legacy in ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API"):
        env.pop(legacy, None)  # Flower's legacy gRPC servers would bind 0.0.0.0
    bin_dir = str(Path(sys.executable).parent)  # flwr, flower-superlink, flower-superexec
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def die_with_parent() -> None:
    """``preexec_fn`` for a child that must not outlive its parent (Linux: PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def stop_pid(pid: int, timeout_s: float = 20.0) -> None:
    """SIGTERM the process group fedsilo started, then SIGKILL what is left after a while."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                finished, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not our child: poll for its exit instead
                finished = 0 if Path(f"/proc/{pid}").exists() else pid
            if finished == pid:
                return
            time.sleep(0.2)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
