"""Continuous batching: concurrent streams share forward passes, and batched equals unbatched."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import addons
from blocks import NetworkRunner, NetworkSpec, TensorSpec
from blocks.batching import BatchQueue, deadline

TEXTS = [
    "Batching shares one forward pass between streams.",
    "A second stream, a little longer than the first one, joins in.",
    "Short.",
    "Streams join and leave between steps; nobody waits for the others to finish their sentences.",
]


def _in_threads(fn, n: int) -> list:  # type: ignore[no-untyped-def]
    results: list = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = fn(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]
    return results


def test_calls_waiting_together_run_as_one_batch() -> None:
    sizes: list[int] = []

    def run(items: list[int]) -> list[int]:
        sizes.append(len(items))
        time.sleep(0.05)  # while this batch runs, the other callers queue up
        return [x * 10 for x in items]

    queue: BatchQueue[int, int] = BatchQueue(run, max_batch=8)
    results = _in_threads(lambda i: queue(i), 8)
    assert results == [i * 10 for i in range(8)]
    assert max(sizes) > 1 and sum(sizes) == 8
    assert queue.stats.calls == 8 and queue.stats.largest == max(sizes)


def test_a_failing_item_fails_only_its_caller() -> None:
    def run(items: list[int]) -> list[int]:
        time.sleep(0.02)
        if 3 in items:
            raise ValueError("bad item 3")
        return items

    queue: BatchQueue[int, int] = BatchQueue(run)
    outcomes = _in_threads(lambda i: _outcome(lambda: queue(i)), 6)
    assert outcomes[3] == "ValueError" and all(outcomes[i] == i for i in range(6) if i != 3)


def _outcome(fn):  # type: ignore[no-untyped-def]
    try:
        return fn()
    except Exception as exc:
        return type(exc).__name__


def test_most_urgent_calls_run_first() -> None:
    order: list[int] = []
    gate = threading.Event()

    def run(items: list[int]) -> list[int]:
        if items == [0]:
            gate.wait(5)  # hold the queue while the others line up
        order.extend(items)
        return items

    queue: BatchQueue[int, int] = BatchQueue(run, max_batch=1)
    first = threading.Thread(target=queue, args=(0,))
    first.start()
    time.sleep(0.05)
    now = time.time()
    waiting = []
    for i, urgency in ((1, now + 30), (2, now + 10), (3, now + 20)):

        def call(i: int = i, urgency: float = urgency) -> None:
            with deadline(urgency):
                queue(i)

        t = threading.Thread(target=call)
        t.start()
        waiting.append(t)
    time.sleep(0.1)
    gate.set()
    for t in [first, *waiting]:
        t.join(5)
    assert order == [0, 2, 3, 1]


def _runner(module: torch.nn.Module) -> NetworkRunner:
    spec = NetworkSpec(
        file="x.pt2",
        role="decoder",
        inputs=(TensorSpec(name="x", shape=("B", "T", 4)),),
        outputs=(TensorSpec(name="y", shape=("B", "T", 4)),),
        receptive_field=0,
    )
    return NetworkRunner("probe", spec, module)


class _Exact(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 + 1.0


class _BatchDependent(torch.nn.Module):
    """Rounds differently with the batch size, as some kernels do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1e-7 * x.shape[0]


def test_batching_is_only_turned_on_where_it_is_exact() -> None:
    assert _runner(_Exact()).enable_batching()
    assert not _runner(_BatchDependent()).enable_batching()


class _Counting(_Exact):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().forward(x)


def test_batching_probe_runs_once_per_runner_and_once_per_shared_shape() -> None:
    module = _Counting()
    runner = _runner(module)
    runner.batch_when_used(8)
    assert runner.enable_batching(8)
    probe = module.calls
    assert probe > 0
    runner.load()  # batching is decided: loading does not probe again
    runner.call({"x": torch.zeros(1, 3, 4)})
    assert module.calls == probe + 1

    probes: dict[str, bool] = {}
    first, second = _Counting(), _Counting()
    a, b = _runner(first), _runner(second)
    a.probes = b.probes = probes
    assert a.enable_batching(8) and b.enable_batching(8)
    assert first.calls == probe and second.calls == 0  # the second runner of this shape reads the answer
    assert list(probes.values()) == [True]
    dependent = _runner(_BatchDependent())
    dependent.probes = {}
    assert not dependent.enable_batching(8) and list(dependent.probes.values()) == [False]


def test_batched_network_calls_equal_single_calls() -> None:
    runner = _runner(_Exact())
    single = [runner.call({"x": torch.full((1, 5, 4), float(i))})["y"] for i in range(6)]
    assert runner.enable_batching()
    batched = _in_threads(lambda i: runner.call({"x": torch.full((1, 5, 4), float(i))})["y"], 6)
    assert all(torch.equal(a, b) for a, b in zip(single, batched, strict=True))


@pytest.mark.parametrize("name", ["tiny-fast", "tiny-taco", "tiny-neural"])
@pytest.mark.parametrize("context", ["dynamic", "static"])
@pytest.mark.slow
def test_concurrent_streams_batched_equal_unbatched(fixture_dir: Path, name: str, context: str) -> None:
    plain = addons.load(fixture_dir / name, context=context)
    want = [np.concatenate([c.samples for c in plain.stream(t)]) for t in TEXTS]
    batched = addons.load(fixture_dir / name, context=context, batching=16)
    got = _in_threads(lambda i: np.concatenate([c.samples for c in batched.stream(TEXTS[i % len(TEXTS)])]), 4)
    for i, audio in enumerate(got):
        assert np.array_equal(audio, want[i % len(TEXTS)]), (name, context, i)


@pytest.mark.parametrize("name", ["tiny-fast", "tiny-taco"])
def test_encoder_batches_equal_single_sentences_to_the_bit(fixture_dir: Path, name: str) -> None:
    voice = addons.load(fixture_dir / name)
    ids = [
        s.ids
        for t in ("Short one.", "A somewhat longer sentence, with a comma.", "Mid length here.")
        for s in voice.sentences(t)
    ]
    alone = [voice.encode(i) for i in ids]
    together = voice.encode_batch(ids)
    for a, b in zip(alone, together, strict=True):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _two_callers(lanes: int) -> tuple[list[int], bool]:
    """Two threads call a queue of ``lanes`` lanes with items of different shapes (never one batch);
    whether their batches ran at the same time."""
    inside = threading.Barrier(2, timeout=1.0)
    met: list[bool] = []

    def run(items: list[int]) -> list[int]:
        try:
            inside.wait()
            met.append(True)
        except threading.BrokenBarrierError:
            met.append(False)
        return [i * 10 for i in items]

    queue: BatchQueue[int, int] = BatchQueue(run, key=lambda i: i, lanes=lanes)
    results: list[int] = []
    threads = [threading.Thread(target=lambda i=i: results.append(queue(i))) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(results), any(met)


def test_lanes_run_that_many_batches_at_once() -> None:
    """On a CPU a batch costs what its items cost: with two lanes, two callers' batches run at the
    same time (each in its own thread); with one lane the second waits for the first."""
    assert _two_callers(2) == ([10, 20], True)
    assert _two_callers(1) == ([10, 20], False)


def test_griffin_lim_batches_only_where_a_batch_equals_each_window_alone() -> None:
    """Batched FFTs need not sum in the order single ones do: Griffin-Lim batches concurrent streams'
    windows only where its probe found them bit-exact, and says which it chose."""
    from blocks import BuildEnv, GriffinLim, MelSettings
    from blocks.vocoders import GriffinLimConfig

    mel = MelSettings()
    vocoder = GriffinLim(GriffinLimConfig(n_iter=4), BuildEnv(loader=lambda *_: None, specs={}, mel=mel))  # type: ignore[arg-type, return-value]
    on = vocoder.enable_batching(4)
    gen = torch.Generator().manual_seed(1)
    n_freq, frames = mel.n_fft // 2 + 1, 48
    windows = [
        (
            torch.rand(n_freq, frames, generator=gen) + 0.1,
            torch.polar(torch.ones(n_freq, frames), torch.rand(n_freq, frames, generator=gen)),
            frames * mel.hop_length,
        )
        for _ in range(2)
    ]
    alone = [vocoder._griffin_lim_batch([w])[0][0] for w in windows]
    together = [audio for audio, _ in vocoder._griffin_lim_batch(windows)]
    exact = all(torch.equal(a, b) for a, b in zip(alone, together, strict=True))
    assert on == exact and (vocoder._queue is not None) == on
