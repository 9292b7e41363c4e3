"""Scale decoders and vocoders on real load: how busy their replicas are, not how many requests they hold.

A streaming request holds its replica slot for the whole utterance, mostly waiting for the
listener, so Ray's default policy (ongoing requests per replica) scales on the number of
listeners, whatever each costs. Each decoder and vocoder replica instead reports, through
Serve's custom autoscaling metrics (``record_autoscaling_stats``):

- ``busy``: the share of wall time since its last report in which it was running work for some
  stream (its stream threads, batched or not), 0..1;
- ``streams``: the streams it is stepping now.

:func:`load_policy` aims for ``TARGET_BUSY`` per replica: the replicas a deployment needs are its
summed busy share over the target. Serve applies ``min_replicas``, ``max_replicas``, the scaling
factors and the up/down delays around it. A deployment gets this policy when its
``autoscaling_config`` says ``"policy": "load"`` (the default for decoders and vocoders with an
``autoscaling_config``); ``"policy": "requests"`` keeps Ray's own.
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["POLICY_FUNCTION", "TARGET_BUSY", "BusyMeter", "desired_replicas", "load_policy"]

TARGET_BUSY = 0.6  # headroom for bursts: a replica busier than this on average wants company
POLICY_FUNCTION = "serve_app.autoscaling:load_policy"


class BusyMeter:
    """Wall time during which at least one piece of work ran, between reports (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._since = time.monotonic()  # start of the current report window
        self._busy_from: float | None = None
        self._busy = 0.0

    def enter(self) -> None:
        with self._lock:
            if self._running == 0:
                self._busy_from = time.monotonic()
            self._running += 1

    def leave(self) -> None:
        with self._lock:
            self._running -= 1
            if self._running == 0 and self._busy_from is not None:
                self._busy += time.monotonic() - self._busy_from
                self._busy_from = None

    def report(self) -> float:
        """Busy share of the wall time since the last report, 0..1; starts a new window."""
        with self._lock:
            now = time.monotonic()
            busy = self._busy
            if self._busy_from is not None:  # work in progress counts up to now
                busy += now - self._busy_from
                self._busy_from = now
            share = busy / max(now - self._since, 1e-9)
            self._since, self._busy = now, 0.0
            return min(1.0, share)


def desired_replicas(busy: dict[Any, float], current: int) -> float:
    """Replicas needed to bring the summed busy share down to TARGET_BUSY each (no report yet: keep)."""
    if not busy:
        return current
    return max(1.0, sum(busy.values()) / TARGET_BUSY)


def load_policy(ctx: Any) -> tuple[float, dict[str, Any]]:
    """Serve custom autoscaling policy (``AutoscalingContext`` -> replicas, policy state)."""
    metrics = ctx.aggregated_metrics or {}
    return desired_replicas(dict(metrics.get("busy", {})), ctx.current_num_replicas), {}
