"""The capture proof, the term's health and the give-up back-off (pure, a fake clock)."""

from __future__ import annotations

from invalidator.liveness import CaptureProof, GiveUpBackoff, Probe, TermHealth


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _proof(timeout_s: float = 1.5) -> tuple[CaptureProof, Clock]:
    clock = Clock()
    return CaptureProof("me", timeout_s, clock), clock


def test_a_probe_that_never_comes_back_makes_the_connection_overdue_after_the_timeout() -> None:
    proof, clock = _proof()
    proof.listening()
    proof.send()
    clock.now += 1.4
    assert proof.overdue_s() is None
    clock.now += 0.2
    assert proof.overdue_s() is not None and proof.overdue_s() > 1.5  # type: ignore[operator]


def test_a_probe_back_in_time_is_no_longer_expected_and_proves_the_listen_connection() -> None:
    proof, clock = _proof()
    proof.listening()
    payload = proof.send()
    clock.now += 0.01
    assert proof.arrived(payload) == Probe(1, 100.0)
    clock.now += 5
    assert proof.overdue_s() is None  # nothing outstanding
    assert not proof.listen_proven()  # but the proof is old: the next probe must come back


def test_probes_of_another_process_or_unknown_payloads_are_ignored() -> None:
    proof, _ = _proof()
    proof.listening()
    proof.send()
    assert proof.arrived("someone-else:1") is None
    assert proof.arrived("me:99") is None
    assert proof.arrived("garbage") is None


def test_probes_sent_before_a_new_listen_connection_are_not_expected_on_it() -> None:
    proof, clock = _proof()
    proof.listening()
    old = proof.send()
    clock.now += 1.0
    proof.listening()  # reconnected: the old probe went to the dead connection
    clock.now += 1.0
    assert proof.overdue_s() is None
    assert proof.arrived(old) is None
    assert proof.listen_proven()  # a fresh connection gets one timeout of grace


def test_a_later_probe_arriving_first_means_the_earlier_one_is_lost_not_late() -> None:
    proof, clock = _proof()
    proof.listening()
    first = proof.send()
    clock.now += 0.5
    second = proof.send()
    assert proof.arrived(second) is not None
    clock.now += 2.0
    assert proof.overdue_s() is None  # NOTIFY keeps commit order: the first will not come
    assert proof.arrived(first) is None


def test_capture_is_live_only_once_a_probe_is_applied_and_for_the_timeout_after_its_sending() -> (
    None
):
    proof, clock = _proof()
    proof.listening()
    payload = proof.send()
    probe = proof.arrived(payload)
    assert probe is not None
    assert proof.validity_s() <= 0  # arrived, but what came before it is not in Redis yet
    clock.now += 0.5
    assert proof.applied(probe) is True  # became live
    assert proof.validity_s() == 1.0  # 1.5 s after the probe was sent, 0.5 s ago
    clock.now += 1.0
    assert proof.validity_s() <= 0


def test_term_is_healthy_during_its_grace_then_only_while_live() -> None:
    health = TermHealth(started_at=0.0, grace_s=1.5, give_up_after_s=5.0)
    health.observe(0.5, live=False, problems=("listen: not yet",))
    assert health.healthy(0.5)
    health.observe(2.0, live=False, problems=())
    assert not health.healthy(2.0)  # a backlog, say: unhealthy ...
    assert not health.must_give_up(100.0)  # ... but no channel fails: never gives up
    health.observe(2.5, live=True, problems=())
    assert health.healthy(2.5)


def test_term_gives_up_once_a_channel_has_failed_for_longer_than_the_bound() -> None:
    health = TermHealth(started_at=0.0, grace_s=1.5, give_up_after_s=5.0)
    health.observe(10.0, live=False, problems=("redis: unreachable",))
    health.observe(14.0, live=False, problems=("redis: unreachable",))
    assert not health.must_give_up(14.0)
    health.observe(15.5, live=False, problems=("redis: unreachable",))
    assert health.must_give_up(15.5)
    health.observe(16.0, live=True, problems=())  # back in time: the count starts again
    assert not health.must_give_up(16.0)


def test_give_up_backoff_doubles_per_consecutive_give_up_and_resets_after_a_good_term() -> None:
    backoff = GiveUpBackoff(base_s=5.0, max_s=60.0)
    delays = [backoff.after_term(gave_up=True, lasted_s=6) for _ in range(6)]
    assert delays == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    assert backoff.after_term(gave_up=False, lasted_s=1) == 0.0  # lost its lock: no pause
    assert backoff.after_term(gave_up=True, lasted_s=6) == 5.0
    backoff.after_term(gave_up=True, lasted_s=6)
    assert backoff.after_term(gave_up=True, lasted_s=600) == 5.0  # it worked for long


def test_a_new_term_starts_unproven_whatever_the_last_term_proved() -> None:
    proof, clock = _proof()
    proof.listening()
    probe = proof.arrived(proof.send())
    assert probe is not None and proof.applied(probe)
    clock.now += 0.3
    proof.reset()  # the lock was lost and taken again: the start-up flush comes first
    assert proof.validity_s() <= 0 and not proof.listen_proven()
