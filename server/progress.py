"""Step-by-step progress for long commands, written to stderr through logging."""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger("hybridrec")


class Steps:
    """Numbered steps with elapsed time: `[train 3/8] collaborative factors ... 1.2 s`."""

    def __init__(self, task: str, total: int) -> None:
        self.task, self.total, self.done = task, total, 0

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        self.done += 1
        prefix = f"[{self.task} {self.done}/{self.total}] {what}"
        log.info("%s ...", prefix)
        start = time.perf_counter()
        yield
        log.info("%s done in %.2f s", prefix, time.perf_counter() - start)
