"""The live display of ``bss-sync sync --wait`` (rich): one row per phase and entity,
refreshed as the run goes, on stderr; the summary table at the end on stdout."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from shared.storage.runs import Run


class RunDisplay:
    """``with display:`` shows the live table while the run goes; ``update(progress)`` is
    the executor's ``on_change``; ``summary(run, outcomes)`` prints the final table."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self.run_id: str | None = None
        self.progress: Any = None
        self.live = Live(self._table(), console=Console(stderr=True),
                         refresh_per_second=4, transient=True)

    def __enter__(self) -> RunDisplay:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def started(self, run: Run) -> None:
        self.run_id = str(run.id)
        self.live.update(self._table())

    def update(self, progress: Any) -> None:
        self.progress = progress
        self.live.update(self._table())

    def _table(self) -> Table:
        progress = self.progress
        title = f"run {self.run_id or '…'} of {self.instance_id}"
        if progress is not None:
            title += f" — phase {progress.phase}"
        table = Table(title=title)
        for column in ("phase", "entity / object", "queued", "earlier failures", "note"):
            table.add_column(column)
        if progress is None:
            return table
        for item in progress.entities:
            table.add_row(item.phase, item.name, str(item.queued), str(item.retried or ""),
                          item.error or "")
        for phase, expected in progress.expected.items():
            settled = progress.settled.get(phase, 0)
            table.add_row(phase, "settled", f"{settled} of {expected}", "", "")
        return table

    def summary(self, run: Run, outcomes: list[dict[str, Any]]) -> None:
        """The run's outcomes per direction, entity and outcome, and its status."""
        print(f"run {run.id} of {run.instance_id}: {run.status}", flush=True)
        console = Console()
        table = Table()
        for column in ("direction", "entity", "outcome", "records"):
            table.add_column(column, justify="right" if column == "records" else "left")
        for row in outcomes:
            table.add_row(row["direction"] or "-", row["entity"] or "-", row["outcome"],
                          str(row["records"]))
        console.print(table)
        push_queued = run.counts.get("push.queued", 0)
        pulled = run.counts.get("pull.published", 0)
        console.print(f"push: {push_queued} queued; pull: {pulled} published"
                      + (f"; error: {run.error}" if run.error else ""), soft_wrap=True)
