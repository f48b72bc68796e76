"""What ``leptonrt train`` shows while a job runs, and the ``logging`` set-up of the commands.

Off a terminal (a pipe, a file, CI) the output is plain lines: one per epoch on stdout,
notes as ``leptonrt: ...`` on stderr, as before. On a terminal (stdout and stderr both a
TTY) a rich progress bar also follows the job within each epoch, fed by the broker's
``Progress`` events (samples/s and the time left come from rich's own rate estimate), and
notes go through rich's logging handler. No torch here: this is the client's side.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable

LEVELS = ("debug", "info", "warning", "error")
log = logging.getLogger("leptonrt")


def interactive() -> bool:
    """Both output streams are a terminal: a person is watching."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def setup_logging(level: str = "info", *, rich: bool | None = None) -> None:
    """The ``leptonrt`` logger: rich's handler on a terminal, ``leptonrt: MESSAGE`` lines otherwise."""
    rich = interactive() if rich is None else rich
    if rich:
        from rich.console import Console
        from rich.logging import RichHandler
        handler: logging.Handler = RichHandler(console=Console(stderr=True), show_time=False, show_path=False,
                                               markup=False, rich_tracebacks=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("leptonrt: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False


class Follow:
    """Follows one job: ``with Follow(...) as on_event`` and feed it the job's events."""

    def __init__(self, describe_epoch: Callable[[object], str], *, quiet: bool = False,
                 bar: bool | None = None) -> None:
        self.describe_epoch, self.quiet = describe_epoch, quiet
        self.bar = interactive() if bar is None else bar
        self._progress = self._task = None

    def __enter__(self) -> "Follow":
        if self.bar:
            from rich.console import Console
            from rich.progress import Progress
            self._progress = Progress(*_columns(), console=Console(stderr=True), transient=True,
                                      redirect_stdout=True, redirect_stderr=True)
            self._progress.start()
            self._task = self._progress.add_task("starting", total=None)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __call__(self, event) -> None:
        from .broker.events import ActorLost, EpochEvent, Progress, Recovered
        if isinstance(event, EpochEvent) and not self.quiet:
            print(self.describe_epoch(event), flush=True)
        elif isinstance(event, Progress) and self._progress is not None:
            self._progress.update(self._task, description=f"epoch {event.epoch}/{event.epochs}",
                                  completed=event.samples, total=event.total_samples)
        elif isinstance(event, ActorLost):
            log.warning(event.describe())
        elif isinstance(event, Recovered):
            log.info(event.describe())


def _columns() -> tuple:
    """epoch k/N, the bar, its percentage, samples/s and the time left (rich's own estimates)."""
    from rich.progress import BarColumn, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:,.0f} samples/s" if task.speed else "", style="progress.data.speed")

    return (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), Rate(),
            TimeRemainingColumn())
