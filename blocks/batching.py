"""Continuous batching: the calls that many streams make at the same moment run as one.

A server runs each stream's generator in a worker thread; every stream calls its networks (and
its vocoder's tensor work) once per chunk. A :class:`BatchQueue` gathers the calls that are
waiting at the same moment and runs them as one batched call, leader-follower and without a
timer: the first caller that finds the queue idle runs everything waiting (at most
``max_batch``, most urgent first) and the calls that arrive meanwhile wait for the next round.
A lone stream therefore pays nothing, N streams share one forward pass per step, and a stream
joins or leaves between steps simply by calling or not.

Urgency is the stream's playback deadline (:data:`DEADLINE`, Unix time in seconds, so that
processes on one machine agree): when its listener's buffer would run dry. A stream that has not sent audio yet has
deadline "now", so new streams' first chunks go ahead of streams far ahead of playback.

Up to ``lanes`` batches run at once, each in its caller's thread. On a GPU one lane is right (a
bigger batch is nearly free there); on a CPU a batched pass costs about what its items cost one by
one, so one lane would hold a replica to one core: there as many lanes as cores let the calls of
concurrent streams use the machine (:func:`default_lanes`).

Batched results equal unbatched ones to float rounding: items are grouped by the shapes of
their inputs (padding is never added, so a network needs no mask for this), and a batch that
fails is run again item by item, so one bad stream cannot fail the others.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

__all__ = ["DEADLINE", "BatchQueue", "BatchStats", "deadline", "default_lanes", "stack_call"]

#: The calling stream's playback deadline (``time.time()`` seconds); unset means "now".
DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("chorus_deadline", default=None)

I = TypeVar("I")  # noqa: E741 - the conventional name of an item type
O = TypeVar("O")  # noqa: E741


@contextlib.contextmanager
def deadline(when: float | None) -> Iterator[None]:
    """Calls made inside carry ``when`` as their urgency."""
    token = DEADLINE.set(when)
    try:
        yield
    finally:
        DEADLINE.reset(token)


@dataclass
class BatchStats:
    """What a queue has done: calls served, batched runs, the largest batch."""

    calls: int = 0
    runs: int = 0
    largest: int = 0

    @property
    def mean_batch(self) -> float:
        return self.calls / self.runs if self.runs else 0.0


class _Call(Generic[I, O]):
    __slots__ = ("done", "error", "item", "key", "result", "urgency")

    def __init__(self, item: I, key: object, urgency: float) -> None:
        self.item, self.key, self.urgency = item, key, urgency
        self.done = False
        self.result: O | None = None
        self.error: BaseException | None = None


def default_lanes(device: torch.device | str = "cpu") -> int:
    """Batches a queue runs at once on ``device``: one on a GPU, the cores this process may use on a
    CPU (``CHORUS_BATCH_LANES`` overrides)."""
    if os.environ.get("CHORUS_BATCH_LANES", "").isdigit():
        return max(1, int(os.environ["CHORUS_BATCH_LANES"]))
    if torch.device(device).type != "cpu":
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class BatchQueue(Generic[I, O]):
    """Runs ``run_batch(items) -> results`` over the calls waiting together (see the module doc).

    ``key(item)`` groups items that can share a run (equal shapes); a free lane takes the group
    holding the most urgent call; at most ``lanes`` groups run at once.
    """

    def __init__(
        self,
        run_batch: Callable[[list[I]], Sequence[O]],
        key: Callable[[I], object] = lambda item: None,
        max_batch: int = 32,
        lanes: int = 1,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if lanes < 1:
            raise ValueError("lanes must be at least 1")
        self._run_batch, self._key, self.max_batch, self.lanes = run_batch, key, max_batch, lanes
        self._cond = threading.Condition()
        self._pending: list[_Call[I, O]] = []
        self._busy = 0  # lanes running a batch
        self.stats = BatchStats()

    def __call__(self, item: I) -> O:
        urgency = DEADLINE.get()
        call: _Call[I, O] = _Call(item, self._key(item), time.time() if urgency is None else urgency)
        with self._cond:
            self._pending.append(call)
            while not call.done:
                if self._busy >= self.lanes or call not in self._pending:  # no lane free, or taken
                    self._cond.wait()
                    continue
                self._lead()
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[return-value]

    def _lead(self) -> None:
        """With the lock held: take the most urgent group, run it unlocked, hand out the results."""
        self._pending.sort(key=lambda c: c.urgency)
        key = self._pending[0].key
        batch = [c for c in self._pending if c.key == key][: self.max_batch]
        taken = {id(c) for c in batch}
        self._pending = [c for c in self._pending if id(c) not in taken]
        self._busy += 1
        self._cond.release()
        try:
            self._run(batch)
        finally:
            self._cond.acquire()
            self._busy -= 1
            self.stats.calls += len(batch)
            self.stats.runs += 1
            self.stats.largest = max(self.stats.largest, len(batch))
            self._cond.notify_all()

    def _run(self, batch: list[_Call[I, O]]) -> None:
        try:
            results = self._run_batch([c.item for c in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} gave {len(results)} results")
            for call, result in zip(batch, results, strict=True):
                call.result = result
        except BaseException as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:  # find the item at fault: the others still get their results
                for call in batch:
                    self._run([call])
                return
        for call in batch:
            call.done = True


def stack_call(
    fn: Callable[..., tuple[torch.Tensor, ...]], items: list[tuple[torch.Tensor, ...]]
) -> list[tuple[torch.Tensor, ...]]:
    """Call ``fn`` once on items of equal shapes stacked along axis 0; split the outputs again.

    Every input and output must have the batch on axis 0 and each item a batch of 1.
    """
    if len(items) == 1:
        return [fn(*items[0])]
    stacked = [torch.cat(parts) for parts in zip(*items, strict=True)]
    outs = fn(*stacked)
    return [tuple(o[i : i + 1] for o in outs) for i in range(len(items))]
