"""The staleness oracle (pure, no I/O): which reads were stale, and by how much.

The load generator tells the oracle, for every write it makes, which version of a product the
database gave that write and the moment the write's commit was acknowledged to the writer
(the API's response, or psycopg's return from an autocommit UPDATE). Every read is then judged
against that history, with the definition of DESIGN.md:

    a read is stale when the version it returns is older than the newest version whose commit
    had been acknowledged before the read was sent; its staleness is the time from the
    acknowledgement of the first newer version to the sending of the read.

"Before" is strict: a read sent at exactly the acknowledgement time is not judged stale (the
writer could not have told anyone yet). Writes whose acknowledgement never arrived are unknown
to the oracle, so a read that returns them is fresh. Acknowledgements may arrive out of version
order (two writers racing on one row); the first newer version to be *acknowledged* is the one
that made the read's version outdated, whatever its number.

Every time is in seconds on one clock (the load generator uses time.time()).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Judgement:
    stale: bool
    staleness_s: float = 0.0  # 0 when fresh
    newest_acked: int | None = None  # the newest version acknowledged before the read
    cause: str = ""  # who wrote the first newer version (the writer's label given to record_ack)


FRESH = Judgement(stale=False)


@dataclass(slots=True)
class _History:
    """Acknowledged versions of one product, ordered by acknowledgement time."""

    times: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    # running_max[i] = max(versions[: i + 1]); non-decreasing, so bisect finds "first newer"
    running_max: list[int] = field(default_factory=list)
    writers: list[str] = field(default_factory=list)

    def add(self, version: int, ack_time: float, writer: str) -> None:
        index = bisect_right(self.times, ack_time)
        if index == len(self.times):  # the usual case: acks arrive in time order
            self.times.append(ack_time)
            self.versions.append(version)
            self.writers.append(writer)
            previous = self.running_max[-1] if self.running_max else version
            self.running_max.append(max(previous, version))
            return
        insort(self.times, ack_time)
        self.versions.insert(index, version)
        self.writers.insert(index, writer)
        self.running_max.insert(index, 0)
        running = self.running_max[index - 1] if index else version
        for i in range(index, len(self.versions)):
            running = max(running, self.versions[i])
            self.running_max[i] = running

    def judge(self, version: int, sent_at: float) -> Judgement:
        known = bisect_left(self.times, sent_at)  # acks strictly before the read was sent
        if known == 0:
            return FRESH
        newest = self.running_max[known - 1]
        if version >= newest:
            return Judgement(stale=False, newest_acked=newest)
        first_newer = bisect_right(self.running_max, version)  # < known, since newest > version
        return Judgement(
            stale=True,
            staleness_s=sent_at - self.times[first_newer],
            newest_acked=newest,
            cause=self.writers[first_newer],
        )


class Oracle:
    """Per-product write history and the judge of reads. Not thread-safe (one gevent loop)."""

    def __init__(self) -> None:
        self._histories: dict[int, _History] = {}
        self.acks = 0

    def record_ack(self, product_id: int, version: int, ack_time: float, writer: str = "") -> None:
        """A write of product_id produced `version`; its commit was acknowledged at ack_time.

        `writer` labels who wrote it ("api", "oob"); a stale read names it as its cause."""
        history = self._histories.get(product_id)
        if history is None:
            history = self._histories[product_id] = _History()
        history.add(version, ack_time, writer)
        self.acks += 1

    def judge(self, product_id: int, version: int, sent_at: float) -> Judgement:
        """Judge a read of product_id, sent at sent_at, that returned `version`."""
        history = self._histories.get(product_id)
        if history is None:
            return FRESH
        return history.judge(version, sent_at)

    def judge_many(self, observed: list[tuple[int, int]], sent_at: float) -> Judgement:
        """Judge a read that returned several products (a category page): stale if any item
        is, with the largest staleness among its items."""
        worst = FRESH
        for product_id, version in observed:
            verdict = self.judge(product_id, version, sent_at)
            if verdict.stale and (not worst.stale or verdict.staleness_s > worst.staleness_s):
                worst = verdict
        return worst
