"""Overload protection for the asyncio server: a cheaper pipeline while the process is saturated.

A worker that receives more calls than its share of the CPU can answer does not fail: its
backlog waits inside gRPC core, every call gets slower, and the backlog stays until the load
drops. That is how a full pipeline turns a slow minute of the host into seconds of latency.

With `server.overload.fallbacks` set (e.g. `{hybrid: cf}`), each asyncio worker watches how much
of the time its event loop waits for work in its selector. An idle share that stays below
`enter_idle` means the loop is never waiting: calls are queueing. From then until the idle share
climbs back above `leave_idle`, calls for a pipeline named in `fallbacks` run its fallback
instead; the answer names the pipeline that ran and lists `overload` among its degraded stages,
so callers and dashboards can count them. Pipelines without a fallback, and every call while
the loop has idle time, are served as asked.

Fallbacks may chain (`{hybrid: cf, cf: popularity}`): a ladder. If a step does not bring the
idle share back above `leave_idle` within `escalate_ms`, the worker goes one step further down
the ladder; each time the idle share rises above `leave_idle` it comes one step back up.

The idle share cannot see a backlog directly (gRPC core holds it, not the event loop), but it
sees the cause: a loop that never waits for work has more work than time, whether it is running
or blocked in a handler. A host that slows down under a fixed load shows up the same way.
"""
from __future__ import annotations

import asyncio
import logging
import selectors
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

log = logging.getLogger("hybridrec")

OVERLOAD_STAGE = "overload"  # the degraded-stage name of an answer served by a fallback


@dataclass
class OverloadSection:
    """`server.overload`: no fallbacks, no protection."""

    fallbacks: dict[str, str] = field(default_factory=dict)  # pipeline -> cheaper pipeline
    enter_idle: float = 0.05  # serve fallbacks once the smoothed idle share falls below this
    leave_idle: float = 0.15  # and stop once it rises above this
    sample_ms: float = 10.0  # how often the idle share is sampled
    smoothing: float = 0.3  # weight in the moving average of one sample_ms of new readings
    escalate_ms: float = 500.0  # a step that has not restored idle time after this long: one more step down

    def validate(self, where: str, pipelines: dict[str, Any]) -> None:
        names = ", ".join(pipelines)
        for source, fallback in self.fallbacks.items():
            if source not in pipelines:
                raise ConfigError(f"{where}.fallbacks: {source!r} is not a pipeline; valid: {names}")
            if fallback not in pipelines:
                raise ConfigError(f"{where}.fallbacks.{source}: {fallback!r} is not a pipeline; valid: {names}")
            if fallback == source:
                raise ConfigError(f"{where}.fallbacks.{source}: a pipeline cannot be its own fallback")
            seen, step = [source], fallback
            while step is not None:  # a ladder goes down, never round
                if step in seen:
                    raise ConfigError(f"{where}.fallbacks.{source}: the fallbacks go round in a circle: "
                                      f"{' -> '.join([*seen, step])}")
                seen.append(step)
                step = self.fallbacks.get(step)
        if not 0.0 <= self.enter_idle < self.leave_idle <= 1.0:
            raise ConfigError(f"{where}: needs 0 <= enter_idle < leave_idle <= 1, got enter_idle {self.enter_idle} "
                              f"and leave_idle {self.leave_idle}")
        if self.sample_ms <= 0:
            raise ConfigError(f"{where}.sample_ms: must be > 0, got {self.sample_ms}")
        if not 0.0 < self.smoothing <= 1.0:
            raise ConfigError(f"{where}.smoothing: must be in (0, 1], got {self.smoothing}")
        if self.escalate_ms <= 0:
            raise ConfigError(f"{where}.escalate_ms: must be > 0, got {self.escalate_ms}")

    def depth(self) -> int:
        """Steps in the longest ladder of fallbacks."""
        longest = 0
        for source in self.fallbacks:
            steps, step = 0, source
            while step in self.fallbacks and steps <= len(self.fallbacks):
                step, steps = self.fallbacks[step], steps + 1
            longest = max(longest, steps)
        return longest

    def resolve(self, pipeline: str, level: int) -> str | None:
        """The pipeline `level` steps down the ladder from `pipeline` (fewer when the ladder is
        shorter), or None when `pipeline` has no fallback."""
        served = pipeline
        for _ in range(level):
            step = self.fallbacks.get(served)
            if step is None:
                break
            served = step
        return None if served == pipeline else served


class IdleSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The platform's default selector, adding up the time `select` spends waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.idle_seconds = 0.0

    def select(self, timeout: float | None = None) -> list:
        started = time.perf_counter()
        try:
            return super().select(timeout)
        finally:
            self.idle_seconds += time.perf_counter() - started


def new_event_loop() -> asyncio.AbstractEventLoop:
    """An asyncio event loop whose selector is an `IdleSelector` (read back by `loop_selector`)."""
    selector = IdleSelector()
    loop = asyncio.SelectorEventLoop(selector)
    loop.hybridrec_selector = selector  # type: ignore[attr-defined]
    return loop


def loop_selector(loop: asyncio.AbstractEventLoop) -> IdleSelector | None:
    return getattr(loop, "hybridrec_selector", None)


class OverloadGuard:
    """How far down the fallback ladder this process is, by a moving average of its event
    loop's idle share: 0 while it has idle time."""

    def __init__(self, section: OverloadSection, selector: IdleSelector) -> None:
        self.section = section
        self.selector = selector
        self.idle_share = 1.0
        self.level = 0
        self.depth = max(1, section.depth())
        self.saturated_for = 0.0  # seconds on this step without the idle share rising above leave_idle
        self.episodes = 0  # times fallbacks started
        self.fallback_calls: Counter[str] = Counter()  # calls served by each fallback (counted by the servicer)
        self._logged_at = float("-inf")

    @property
    def active(self) -> bool:
        return self.level > 0

    def update(self, idle_share: float, seconds: float, now: float) -> int:
        """Fold in the idle share of the last `seconds`; returns the level (0: serve as asked).

        The weight grows with the time the reading covers: a busy loop wakes its sampler late,
        and one late reading then counts for every period it spans."""
        section = self.section
        periods = seconds / (section.sample_ms / 1000.0)
        weight = 1.0 - (1.0 - section.smoothing) ** max(periods, 0.0)
        self.idle_share += weight * (idle_share - self.idle_share)
        if self.level == 0:
            if self.idle_share < section.enter_idle:
                self._step(1, now)
        elif self.idle_share > section.leave_idle:
            self._step(self.level - 1, now)
        else:  # still short of idle time on this step: after escalate_ms, one step further down
            self.saturated_for += seconds
            if self.saturated_for * 1000.0 >= section.escalate_ms and self.level < self.depth:
                self._step(self.level + 1, now)
        return self.level

    def _step(self, level: int, now: float) -> None:
        if self.level == 0:
            self.episodes += 1
        self.level, self.saturated_for = level, 0.0
        if level and now - self._logged_at >= 10.0:  # at most one line per 10 s however often it moves
            self._logged_at = now
            log.warning("overload: event loop idle %.0f%% of the time; fallbacks %s at level %d "
                        "(%d episodes, %d calls served by a fallback so far)", 100 * self.idle_share,
                        self.section.fallbacks, level, self.episodes, sum(self.fallback_calls.values()))

    def summary(self) -> str:
        served = ", ".join(f"{name} {count}" for name, count in sorted(self.fallback_calls.items())) or "none"
        return f"overload: {self.episodes} episodes; calls served by fallbacks: {served}"

    async def watch(self) -> None:
        """Sample the idle share every `sample_ms` until cancelled."""
        period = self.section.sample_ms / 1000.0
        last_time, last_idle = time.perf_counter(), self.selector.idle_seconds
        while True:
            await asyncio.sleep(period)
            now, idle = time.perf_counter(), self.selector.idle_seconds
            seconds = max(now - last_time, 1e-9)
            self.update(min((idle - last_idle) / seconds, 1.0), seconds, now)
            last_time, last_idle = now, idle
