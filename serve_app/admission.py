"""Admission control per model: admit a stream only if every listener can still be served in real time.

Bookkeeping only, at the ingress (no tensor math). Each admitted stream holds a :class:`Ticket`
that follows its listener's playback clock: playback starts with the first audio, so the
listener's buffer ("lead") is the audio received minus the time since the first audio. A new
stream is refused at once (the caller answers 503 with ``Retry-After``) when

- the model already carries ``limit`` streams, or
- ``start_slots`` streams are still waiting for their first audio (a burst is let in a slice at
  a time, so that feedback arrives before the next slice), or
- some admitted stream has fallen behind (its lead is under ``low_water_s``, or it has waited
  longer than ``first_audio_s`` for its first audio, plus its voice's load time where the voice
  is expected cold, see :class:`RecentVoices`): new work would only make that worse.

``limit`` is learned: when a stream falls behind with ``n`` streams running, the model's
capacity is below ``n`` and the limit drops to ``n - 1``; after ``grow_after_s`` of healthy
service at the limit it rises by one again, up to the configured ceiling.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

__all__ = ["AdmissionConfig", "AtCapacity", "ModelAdmission", "RecentVoices", "Ticket"]


class AtCapacity(Exception):
    """A stream refused because the model cannot serve one more in real time; says why."""


@dataclass(frozen=True)
class AdmissionConfig:
    ceiling: int = 64  # streams per model per ingress replica, at most
    start_slots: int = 16  # streams waiting for their first audio at once, at most
    low_water_s: float = 0.2  # a listener with less audio buffered than this is behind
    first_audio_s: float = 1.5  # a stream waiting longer than this for its first audio is behind
    grow_after_s: float = 5.0  # healthy seconds at the limit before it rises by one
    enabled: bool = True  # False: every stream is admitted up to the ceiling (no playback checks)


@dataclass(eq=False)
class Ticket:
    """One admitted stream's playback clock."""

    owner: ModelAdmission
    sample_rate: int
    admitted: float = field(default_factory=time.monotonic)
    first_audio: float | None = None
    samples: int = 0
    grace_s: float = 0.0  # more time allowed for the first audio: the voice must be loaded first

    def heard(self, samples: int) -> None:
        if self.first_audio is None:
            self.first_audio = time.monotonic()
        self.samples += samples

    def lead(self, now: float) -> float | None:
        """Seconds of audio the listener has buffered (None before the first audio)."""
        if self.first_audio is None:
            return None
        return self.samples / self.sample_rate - (now - self.first_audio)

    def behind(self, now: float, config: AdmissionConfig) -> bool:
        lead = self.lead(now)
        if lead is None:
            return now - self.admitted > config.first_audio_s + self.grace_s
        return lead < config.low_water_s

    def close(self) -> None:
        self.owner.tickets.discard(self)


class ModelAdmission:
    """The admission state of one model on one ingress replica."""

    def __init__(self, config: AdmissionConfig | None = None) -> None:
        self.config = config or AdmissionConfig()
        self.limit = self.config.ceiling
        self.tickets: set[Ticket] = set()
        self.refused = 0
        self._changed = time.monotonic()

    def admit(self, sample_rate: int, grace_s: float = 0.0) -> Ticket:
        """A ticket for a new stream, or :class:`AtCapacity` naming the reason; ``grace_s``: seconds
        its first audio may take beyond ``first_audio_s`` (a cold voice's load), once more for each
        cold stream still waiting for its first audio (their loads queue ahead of this one)."""
        now = time.monotonic()
        self._learn(now)
        reason = self._refusal(now)
        if reason:
            self.refused += 1
            raise AtCapacity(reason)
        if grace_s > 0:  # a replica loads one voice at a time: the cold streams still starting load first
            grace_s *= 1 + sum(1 for t in self.tickets if t.first_audio is None and t.grace_s > 0)
        ticket = Ticket(self, sample_rate, now, grace_s=grace_s)
        self.tickets.add(ticket)
        return ticket

    @property
    def starting(self) -> int:
        return sum(1 for t in self.tickets if t.first_audio is None)

    def _refusal(self, now: float) -> str:
        if not self.config.enabled:
            return "" if len(self.tickets) < self.config.ceiling else f"{len(self.tickets)} streams in progress"
        if any(t.behind(now, self.config) for t in self.tickets):
            return "a stream in progress is falling behind playback"
        if len(self.tickets) >= self.limit:
            return f"the model is serving {len(self.tickets)} streams, its capacity here"
        if self.starting >= self.config.start_slots:
            return f"{self.starting} streams are starting; more would delay their first audio"
        return ""

    def _learn(self, now: float) -> None:
        if not self.config.enabled:
            return
        running = len(self.tickets)
        if running and any(t.behind(now, self.config) for t in self.tickets):
            if running - 1 < self.limit:
                self.limit, self._changed = max(1, running - 1), now
        elif running >= self.limit and now - self._changed > self.config.grow_after_s:
            self.limit, self._changed = min(self.config.ceiling, self.limit + 1), now

    def figures(self, now: float | None = None) -> dict[str, float]:
        """For metrics: streams, the learned limit, starting streams, the smallest lead, refusals."""
        now = time.monotonic() if now is None else now
        leads = [lead for t in self.tickets if (lead := t.lead(now)) is not None]
        return {
            "streams": float(len(self.tickets)),
            "limit": float(self.limit),
            "starting": float(self.starting),
            "min_lead_s": min(leads) if leads else 0.0,
            "refused": float(self.refused),
        }


class RecentVoices:
    """The voices a family's replicas most likely hold: the last ``capacity`` distinct voices sent
    to them (their caps times their replicas). A voice not among them is expected cold: its first
    audio waits for its load, which admission allows for rather than taking it for overload."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._order: OrderedDict[str, None] = OrderedDict()

    def touch(self, voice: str) -> bool:
        """Record a request for ``voice``; whether it was expected warm."""
        warm = voice in self._order
        self._order[voice] = None
        self._order.move_to_end(voice)
        while len(self._order) > self.capacity:
            self._order.popitem(last=False)
        return warm
