"""The ServerApp that `fedsilo run` submits to the coordinator's SuperLink.

The run configuration names the resolved fedsilo config (written by `fedsilo run` into the
run directory) and the run directory. The rounds are the same as in simulation; the run ends
failed (so `fedsilo run` exits non-zero) when no round produced a usable update.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from common.config import load_config
from common.offline import apply_offline_switches
from server.app import CoordinatorOutcome, run_coordinator
from server.coordinator import RoundObserver, RoundRecord

log = logging.getLogger(__name__)

POLL_S = 0.2  # Flower's HttpGrid waits 3 s between pulls; replies are picked up sooner here

app = ServerApp()


class PollingGrid:
    """A Grid whose ``send_and_receive`` pulls replies every ``poll_s`` instead of every 3 s."""

    def __init__(self, grid: Grid, poll_s: float = POLL_S) -> None:
        self._grid = grid
        self.poll_s = poll_s

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout: float | None = None) -> list[Message]:
        pending = set(self._grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending and (deadline is None or time.monotonic() < deadline):
            received = list(self._grid.pull_messages(pending))
            replies.extend(received)
            pending.difference_update(m.metadata.reply_to_message_id for m in received)
            if pending:
                time.sleep(self.poll_s)
        return replies


class LogDisplay(RoundObserver):
    def phase(self, round_number: int, phase: str) -> None:
        log.info("round %s: %s", round_number, phase)

    def round_done(self, record: RoundRecord) -> None:
        log.info("%s", record.summary())


@app.main()
def main(grid: Grid, context: Context) -> None:
    apply_offline_switches()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = load_config(Path(str(context.run_config["fedsilo-config"])))
    run_dir = Path(str(context.run_config["run-dir"]))
    outcome = CoordinatorOutcome()
    run_coordinator(cfg, PollingGrid(grid), str(context.run_id), run_dir, outcome, LogDisplay())
    outcome.require_learning()
    outcome.write_results(run_dir, outcome.table(cfg))
    log.info("run finished; results in %s", run_dir)
