"""Is the capture alive? Probes, proofs and the give-up rule of an active term (pure, no I/O).

Silence is not news (DESIGN invariant 8): a LISTEN connection can go silent without closing
(a proxy whose upstream died, an expired NAT entry; TCP keepalives are answered by the
middlebox), and it then delivers nothing while looking healthy. So the active invalidator
proves its channels itself:

- Every heartbeat it sends a *probe*: a NOTIFY on a channel of its own, from its lock
  connection. The probe must come back on the LISTEN connection within `timeout_s`, else that
  connection counts as lost (dropped, reconnected, LISTEN, epoch bump).
- A probe that came back goes through the consumer's queue behind every change received
  before it. Once the batch it rode in has been applied to Redis, capture is *proven* up to
  the moment the probe was sent: every change committed before then has been invalidated.
- The heartbeat (the pub/sub message and the liveness key readers check) is published only
  while the newest proof is younger than `timeout_s`, and the key expires when that proof
  does. A dead LISTEN connection, an unreachable Redis or a stuck consumer therefore stop the
  heartbeat within `timeout_s` (+ one heartbeat), and readers stop trusting their caches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Probe:
    """A probe that came back on the LISTEN connection (an item of the consumer's queue)."""

    seq: int
    sent_at: float


class CaptureProof:
    """The probes of one process: sent, arrived, applied; and what they prove."""

    def __init__(self, sender: str, timeout_s: float, clock: Callable[[], float] = time.monotonic):
        self.sender = sender  # unique per process: probes of another process are not ours
        self.timeout_s = timeout_s
        self.clock = clock
        self._seq = 0
        self._outstanding: dict[int, float] = {}  # seq -> sent at, not arrived yet
        self.last_sent_at: float | None = None
        self.listening_since: float | None = None  # the current LISTEN connection's start
        self.arrived_sent_at: float | None = None  # newest probe back on this connection
        self.proven_at: float | None = None  # newest probe applied to Redis (sent time)

    def reset(self) -> None:
        """A new term: what an earlier term proved says nothing about this one."""
        self.not_listening()
        self.proven_at = None

    # --- the LISTEN connection ------------------------------------------------------------

    def listening(self) -> None:
        """A new LISTEN connection: probes sent before it can never arrive on it."""
        self._outstanding.clear()
        self.listening_since = self.clock()
        self.arrived_sent_at = None

    def not_listening(self) -> None:
        self._outstanding.clear()
        self.listening_since = None
        self.arrived_sent_at = None

    def send(self) -> str:
        """The payload of the next probe NOTIFY; its clock starts now."""
        self._seq += 1
        now = self.clock()
        self._outstanding[self._seq] = now
        self.last_sent_at = now
        return f"{self.sender}:{self._seq}"

    def arrived(self, payload: str) -> Probe | None:
        """A notification on the probe channel; a Probe if it is one of ours still expected."""
        sender, _, seq_text = payload.rpartition(":")
        if sender != self.sender or not seq_text.isdigit():
            return None
        seq = int(seq_text)
        sent_at = self._outstanding.pop(seq, None)
        if sent_at is None:
            return None
        # notifications arrive in commit order: older outstanding probes are lost, not late
        for older in [s for s in self._outstanding if s < seq]:
            del self._outstanding[older]
        if self.arrived_sent_at is None or sent_at > self.arrived_sent_at:
            self.arrived_sent_at = sent_at
        return Probe(seq, sent_at)

    def overdue_s(self) -> float | None:
        """How late the oldest expected probe is, once it is later than timeout_s."""
        if not self._outstanding:
            return None
        age = self.clock() - min(self._outstanding.values())
        return age if age > self.timeout_s else None

    def listen_proven(self) -> bool:
        """The LISTEN connection delivered a probe lately, or was (re)made lately."""
        if self.listening_since is None:
            return False
        # probes accepted on this connection were all sent after it started listening
        latest = self.listening_since if self.arrived_sent_at is None else self.arrived_sent_at
        return self.clock() - latest <= self.timeout_s

    # --- end to end -------------------------------------------------------------------------

    def applied(self, probe: Probe) -> bool:
        """Everything received before `probe` is in Redis; True when capture just became live."""
        was_live = self.validity_s() > 0
        if self.proven_at is None or probe.sent_at > self.proven_at:
            self.proven_at = probe.sent_at
        return not was_live and self.validity_s() > 0

    def validity_s(self) -> float:
        """How much longer the newest proof holds (<= 0: capture is not proven live)."""
        if self.proven_at is None:
            return 0.0
        return self.proven_at + self.timeout_s - self.clock()

    def proof_age_s(self) -> float | None:
        return None if self.proven_at is None else self.clock() - self.proven_at


@dataclass(slots=True)
class TermHealth:
    """When an active term is unhealthy (503) and when it must give its leadership up.

    A term is healthy while its heartbeat is published (capture proven live end to end), and
    during a grace of `grace_s` after it started. It gives up its leadership once one of its
    own channels (the LISTEN connection, Redis) has been failing for `give_up_after_s`, so
    that a standby that can reach both takes over. A backlog (proof late while the channels
    work) makes it unhealthy but never gives up: another instance would face the same load.
    """

    started_at: float
    grace_s: float
    give_up_after_s: float
    failing_since: float | None = None
    problems: tuple[str, ...] = ()
    live: bool = False

    def observe(self, now: float, *, live: bool, problems: tuple[str, ...]) -> None:
        self.live = live
        self.problems = problems
        if problems and self.failing_since is None:
            self.failing_since = now
        elif not problems:
            self.failing_since = None

    def healthy(self, now: float) -> bool:
        return self.live or now - self.started_at <= self.grace_s

    def must_give_up(self, now: float) -> bool:
        return self.failing_since is not None and now - self.failing_since > self.give_up_after_s


@dataclass(slots=True)
class GiveUpBackoff:
    """How long an instance that gave its leadership up stays standby before trying again:
    `base_s`, doubling per consecutive give-up up to `max_s`. A term that stayed healthy for
    `max_s` resets it. So when no instance can reach both servers they do not take the lock
    from each other in a storm (each new term bumps the namespace epoch)."""

    base_s: float
    max_s: float = 60.0
    consecutive: int = 0

    def after_term(self, *, gave_up: bool, lasted_s: float) -> float:
        if lasted_s >= self.max_s or not gave_up:
            self.consecutive = 0
        if not gave_up:
            return 0.0
        self.consecutive += 1
        return float(min(self.max_s, self.base_s * 2 ** (self.consecutive - 1)))
