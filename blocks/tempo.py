"""Speaking rate for stacks that cannot set it themselves: mel resampled in time, as it streams.

A duration model sets the rate where it belongs (the upsampler divides durations by ``speed``).
An attention decoder has no durations to scale, so the decoder stage stretches its mel instead:
output frame ``j`` is the source read at ``j * speed`` frames, linearly between the two nearest
frames (pitch and timbre stay, only time changes). Each output frame depends only on its source
frames, so a stream resampled chunk by chunk equals the whole utterance resampled at once, and
each output frame keeps the alignment (input token) of its nearest source frame.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MAX_SPEED", "MIN_SPEED", "MelTempo", "honours"]

#: The speaking rates the blocks that honour ``speed`` are built for (an upsampler dividing
#: durations, :class:`MelTempo` resampling mel): every request option, SSML rate and voice preset
#: is held to this range (``addons.engine.options``).
MIN_SPEED, MAX_SPEED = 0.25, 4.0


def honours(node: object, option: str) -> bool:
    """Whether a parsed stack (a ``BlockNode``) has a block that reads request ``option`` itself."""
    cls = getattr(node, "cls", None)
    return option in getattr(cls, "honours", ()) or any(honours(c, option) for c in getattr(node, "children", ()))


class MelTempo:
    """One stream's time resampling at ``speed`` (> 1: faster, fewer frames).

    ``push(mel, tokens)`` takes the next source chunk ``[F, n_mels]`` (and its per-frame tokens, or
    None) and returns the output frames now final; ``finish()`` the rest. ``ceil(N / speed)``
    frames in all for ``N`` source frames.
    """

    def __init__(self, speed: float) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be positive, not {speed}")
        self.speed = float(speed)
        self.next = 0  # index of the next output frame
        self.base = 0  # source index of held[0]
        self.held: np.ndarray | None = None  # the source frames still needed
        self.tokens: np.ndarray | None = np.zeros(0, np.int64)  # theirs, or None: no alignment

    def push(self, mel: np.ndarray, tokens: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        self.held = mel if self.held is None else np.concatenate([self.held, mel])
        if tokens is None or self.tokens is None:
            self.tokens = None
        else:
            self.tokens = np.concatenate([self.tokens, np.asarray(tokens, np.int64)])
        available = self.base + len(self.held)
        # output j needs source floor(t) and, unless t is whole, the frame after it
        last = self.next
        while self._needs(last) <= available - 1:
            last += 1
        return self._emit(last, available)

    def finish(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self.held is None:
            return np.zeros((0, 0), np.float32), None if self.tokens is None else np.zeros(0, np.int64)
        total = self.base + len(self.held)
        return self._emit(math.ceil(total / self.speed - 1e-9), total)

    def _needs(self, j: int) -> int:
        t = j * self.speed
        i = math.floor(t)
        return i + 1 if t > i else i

    def _emit(self, stop: int, available: int) -> tuple[np.ndarray, np.ndarray | None]:
        assert self.held is not None
        j = np.arange(self.next, max(stop, self.next), dtype=np.float64)
        t = j * self.speed
        i0 = np.floor(t).astype(np.int64)
        frac = (t - i0).astype(np.float32)[:, None]
        i1 = np.minimum(i0 + 1, available - 1)
        i0 = np.minimum(i0, available - 1)
        a, b = self.held[i0 - self.base], self.held[i1 - self.base]
        out = (a + (b - a) * frac).astype(self.held.dtype, copy=False)
        tokens = None
        if self.tokens is not None:
            nearest = np.minimum(np.floor(t + 0.5).astype(np.int64), available - 1)
            tokens = self.tokens[nearest - self.base]
        self.next = max(stop, self.next)
        keep = min(math.floor(self.next * self.speed), available - 1) - self.base  # frames still needed
        if keep > 0:
            self.held = self.held[keep:]
            if self.tokens is not None:
                self.tokens = self.tokens[keep:]
            self.base += keep
        return out, tokens
