"""Admission control: refuse at once what cannot be served in real time; learn the capacity."""

from __future__ import annotations

import pytest

from serve_app import admission as adm
from serve_app.admission import AdmissionConfig, AtCapacity, ModelAdmission
from tests.helpers import Clock

RATE = 1000  # samples per second, to keep the arithmetic readable


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(adm.time, "monotonic", c)
    return c


def test_a_burst_is_let_in_a_slice_at_a_time(clock: Clock) -> None:
    model = ModelAdmission(AdmissionConfig(ceiling=10, start_slots=3))
    tickets = [model.admit(RATE) for _ in range(3)]
    with pytest.raises(AtCapacity, match="3 streams are starting"):
        model.admit(RATE)
    tickets[0].heard(RATE)  # its first audio: a slot frees
    model.admit(RATE)
    assert model.refused == 1


def test_a_stream_falling_behind_stops_admission_and_lowers_the_limit(clock: Clock) -> None:
    model = ModelAdmission(AdmissionConfig(ceiling=10, start_slots=10, low_water_s=0.2))
    tickets = [model.admit(RATE) for _ in range(4)]
    for t in tickets:
        t.heard(2 * RATE)  # two seconds of audio each
    clock.now += 1.0
    model.admit(RATE).heard(RATE)  # everyone a second ahead: admitted
    clock.now += 1.9  # the first four now hold 0.1 s: behind
    with pytest.raises(AtCapacity, match="falling behind"):
        model.admit(RATE)
    assert model.limit == 4  # five streams were too many
    for t in list(model.tickets):
        t.close()
    assert model.admit(RATE)  # nothing behind any more


def test_the_limit_grows_back_after_healthy_service(clock: Clock) -> None:
    model = ModelAdmission(AdmissionConfig(ceiling=3, start_slots=3, grow_after_s=5.0))
    model.limit = 1
    first = model.admit(RATE)
    first.heard(60 * RATE)
    with pytest.raises(AtCapacity, match="serving 1 streams"):
        model.admit(RATE)
    clock.now += 6.0
    model.admit(RATE)  # healthy at the limit for long enough: one more
    assert model.limit == 2


def test_waiting_too_long_for_first_audio_is_behind(clock: Clock) -> None:
    model = ModelAdmission(AdmissionConfig(ceiling=10, start_slots=10, first_audio_s=1.0))
    model.admit(RATE)
    clock.now += 1.5
    with pytest.raises(AtCapacity):
        model.admit(RATE)
    assert model.figures(clock.now)["starting"] == 1.0


def test_turned_off_it_admits_every_stream_up_to_the_ceiling(clock: Clock) -> None:
    model = ModelAdmission(AdmissionConfig(ceiling=5, start_slots=1, enabled=False))
    tickets = [model.admit(RATE) for _ in range(5)]  # none has audio yet; none is refused for it
    clock.now += 10.0  # every one of them is far behind: still not a reason when off
    with pytest.raises(AtCapacity, match="5 streams in progress"):
        model.admit(RATE)
    tickets[0].close()
    model.admit(RATE)
    assert model.limit == 5


def test_cold_voices_queue_their_loads_and_admission_allows_for_the_queue(clock: Clock) -> None:
    """A family replica loads one voice at a time: the third cold stream waits for three loads."""
    model = ModelAdmission(AdmissionConfig(ceiling=10, start_slots=10, first_audio_s=1.0))
    cold = [model.admit(RATE, grace_s=2.0) for _ in range(3)]
    assert [t.grace_s for t in cold] == [2.0, 4.0, 6.0]
    warm = model.admit(RATE)  # a warm voice gets no grace
    assert warm.grace_s == 0.0
    warm.heard(60 * RATE)
    clock.now += 5.0  # past the first two cold streams' allowance, within the third's
    cold[0].heard(60 * RATE)
    cold[1].heard(60 * RATE)
    model.admit(RATE).heard(60 * RATE)  # the third is still within its grace: not behind
    clock.now += 2.5  # now it is
    with pytest.raises(AtCapacity, match="falling behind"):
        model.admit(RATE)
    assert model.limit == 4  # five streams were too many
    cold[2].heard(60 * RATE)
    cold[0].close()
    cold[1].close()
    assert model.admit(RATE, grace_s=2.0).grace_s == 2.0  # no cold stream starting: its own load only
