"""Load for chaos tests: one writer mixing API PATCHes and out-of-band SQL, several readers.

The oracle is the product `version` (bumped by the database on every UPDATE) judged by the
load test's own oracle (loadtest/oracle.py, DESIGN.md's definition): the writer records each
version and the moment its commit was acknowledged; a read that returns a version older than
one acknowledged *before the read was sent* is stale, by the time since the first newer
version's acknowledgement. Reads and writes are counted separately while a fault is active
(`with load.fault():`).

A stale read by a few milliseconds is the asynchronous invalidation at work (an out-of-band
commit is acknowledged before its invalidation arrives): it happens with no fault at all. What
a fault must never do is serve, after it, a value that was outdated before it: `mark(label)`
records a moment (a server came back), and `stale_outdated_at[label]` counts the reads sent
after it that returned a version already superseded by a write acknowledged before it.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import psycopg

from loadtest.oracle import Oracle

INTERNALS = ("Traceback", 'File "/', "psycopg.", "redis.exceptions")


@dataclass
class LoadStats:
    reads: int = 0
    writes: int = 0
    api_writes: int = 0
    oob_writes: int = 0
    category_moves: int = 0
    read_errors: int = 0
    write_errors: int = 0
    stale_reads: int = 0
    reads_during_fault: int = 0
    writes_during_fault: int = 0
    stale_reads_during_fault: int = 0
    max_staleness_versions: int = 0
    x_cache: Counter[str] = field(default_factory=Counter)
    error_statuses: Counter[int] = field(default_factory=Counter)
    stale_by_tier: Counter[str] = field(default_factory=Counter)  # X-Cache of stale reads
    max_staleness_ms: float = 0.0
    # per mark: reads after it returning a version outdated before it (see the module doc)
    stale_outdated_at: Counter[str] = field(default_factory=Counter)
    stale_samples: list[StaleRead] = field(default_factory=list)  # diagnostics, the first 1,000
    leaked_internals: int = 0  # error bodies with a traceback or a driver's exception name

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["x_cache"] = dict(self.x_cache)
        data["error_statuses"] = dict(self.error_statuses)
        data["stale_by_tier"] = dict(self.stale_by_tier)
        data["stale_outdated_at"] = dict(self.stale_outdated_at)
        del data["stale_samples"]
        return data


@dataclass(frozen=True)
class StaleRead:
    sent_at: float  # time.monotonic()
    instance: str
    tier: str  # X-Cache
    product_id: int
    version: int
    newest_acked: int
    staleness_ms: float  # since the first newer version was acknowledged
    writer: str  # who wrote that version: api or oob
    outdated_at: tuple[str, ...]  # marks before which that version was already acknowledged
    after_mark: str = ""  # the latest mark before the read, and how long before it

    def __str__(self) -> str:
        return (
            f"product {self.product_id} v{self.version} < v{self.newest_acked} from "
            f"{self.instance} ({self.tier}), {self.staleness_ms:.1f} ms after a {self.writer} "
            f"write, {self.after_mark or 'before any mark'}; "
            f"outdated at {list(self.outdated_at) or 'no mark'}"
        )


class ReadJudge:
    """The oracle and the marks, counting into LoadStats: pure (no I/O, no clock, no threads:
    the driver calls it under its lock with time.monotonic() values)."""

    def __init__(self, stats: LoadStats) -> None:
        self.stats = stats
        self._oracle = Oracle()
        self._marks: list[tuple[str, float]] = []

    def record_write(self, product_id: int, version: int, acked_at: float, writer: str) -> None:
        self._oracle.record_ack(product_id, version, acked_at, writer)

    def mark(self, label: str, at: float) -> None:
        self._marks.append((label, at))

    def judge(
        self, base: str, tier: str, product_id: int, version: int, sent_at: float, in_fault: bool
    ) -> StaleRead | None:
        """Count a read as stale (or not); the stale read, or None when it was fresh."""
        verdict = self._oracle.judge(product_id, version, sent_at)
        if not verdict.stale:
            return None
        stats = self.stats
        stats.stale_reads += 1
        stats.stale_by_tier[tier] += 1
        newest = verdict.newest_acked or 0
        stats.max_staleness_versions = max(stats.max_staleness_versions, newest - version)
        stats.max_staleness_ms = max(stats.max_staleness_ms, verdict.staleness_s * 1000)
        if in_fault:
            stats.stale_reads_during_fault += 1
        outdated_since = sent_at - verdict.staleness_s  # the first newer version's ack
        outdated_at = tuple(label for label, at in self._marks if outdated_since < at <= sent_at)
        for label in set(outdated_at):
            stats.stale_outdated_at[label] += 1
        earlier = [(at, label) for label, at in self._marks if at <= sent_at]
        after_mark = ""
        if earlier:
            at, label = max(earlier)
            after_mark = f"sent {(sent_at - at) * 1000:.0f} ms after {label!r}"
        stale = StaleRead(
            sent_at,
            base,
            tier,
            product_id,
            version,
            newest,
            round(verdict.staleness_s * 1000, 3),
            verdict.cause,
            outdated_at,
            after_mark,
        )
        if len(stats.stale_samples) < 1000:
            stats.stale_samples.append(stale)
        return stale


class LoadDriver:
    """Background threads: one writer (API + SQL), `readers` readers over every API instance.

    Errors (a 503 while Redis is down, a dropped SQL connection while Postgres restarts) are
    counted, never raised: the load keeps going through the fault.
    """

    def __init__(
        self,
        api_urls: Sequence[str],
        database_url: str,
        token: str,
        product_ids: Sequence[int],
        category_ids: Sequence[int],
        *,
        write_rate: float = 40.0,
        readers: int = 2,
        oob_share: float = 0.5,
        move_share: float = 0.05,
        seed: int = 1,
    ) -> None:
        self.api_urls = list(api_urls)
        self.database_url = database_url
        self.token = token
        self.product_ids = list(product_ids)
        self.category_ids = list(category_ids)
        self.write_rate = write_rate
        self.readers = readers
        self.oob_share = oob_share
        self.move_share = move_share
        self.stats = LoadStats()
        self._judge = ReadJudge(self.stats)  # guarded by _lock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._in_fault = False
        self._threads: list[threading.Thread] = []
        self._random = random.Random(seed)

    # --- control ---------------------------------------------------------------------------

    def start(self) -> LoadDriver:
        self._stop.clear()
        self._threads = [threading.Thread(target=self._writer, daemon=True, name="load-writer")]
        for index in range(self.readers):
            self._threads.append(
                threading.Thread(
                    target=self._reader, args=(index,), daemon=True, name=f"load-reader-{index}"
                )
            )
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> LoadStats:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
        return self.stats

    @contextlib.contextmanager
    def fault(self) -> Iterator[None]:
        """Reads and writes inside this block are counted as happening during the fault."""
        self._in_fault = True
        try:
            yield
        finally:
            self._in_fault = False

    def wait_for_writes(self, count: int, timeout: float = 30.0) -> bool:
        """Block until the writer has done `count` more successful writes (pacing only)."""
        target = self.stats.writes + count
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            if self.stats.writes >= target:
                return True
            time.sleep(0.01)
        return self.stats.writes >= target

    def mark(self, label: str) -> None:
        """Remember this moment: reads after it must not return what was outdated before it."""
        with self._lock:
            self._judge.mark(label, time.monotonic())

    # --- the writer --------------------------------------------------------------------------

    def _record_write(self, product_id: int, version: int, *, oob: bool) -> None:
        acked_at = time.monotonic()  # the commit (or the API's response) just returned
        with self._lock:
            self._judge.record_write(product_id, version, acked_at, "oob" if oob else "api")
            self.stats.writes += 1
            if oob:
                self.stats.oob_writes += 1
            else:
                self.stats.api_writes += 1
            if self._in_fault:
                self.stats.writes_during_fault += 1

    def _writer(self) -> None:
        rng = random.Random(self._random.random())
        conn: psycopg.Connection[Any] | None = None
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(timeout=3.0, headers=headers) as http:
            while not self._stop.is_set():
                started = time.monotonic()
                product_id = rng.choice(self.product_ids)
                try:
                    if rng.random() < self.oob_share:
                        if conn is None or conn.closed:
                            conn = psycopg.connect(
                                self.database_url, autocommit=True, connect_timeout=3
                            )
                        self._write_sql(conn, rng, product_id)
                    else:
                        self._write_api(http, rng, product_id)
                except (psycopg.Error, httpx.HTTPError, OSError, ValueError, KeyError):
                    with self._lock:
                        self.stats.write_errors += 1
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            conn.close()
                        conn = None
                    self._stop.wait(0.05)
                pause = 1.0 / self.write_rate - (time.monotonic() - started)
                if pause > 0:
                    self._stop.wait(pause)
        if conn is not None:
            conn.close()

    def _write_sql(
        self, conn: psycopg.Connection[Any], rng: random.Random, product_id: int
    ) -> None:
        if rng.random() < self.move_share and len(self.category_ids) > 1:
            row = conn.execute(
                "UPDATE products SET category_id = %s WHERE id = %s RETURNING version",
                (rng.choice(self.category_ids), product_id),
            ).fetchone()
            self.stats.category_moves += 1
        else:
            row = conn.execute(
                "UPDATE products SET stock = %s, price_cents = %s WHERE id = %s RETURNING version",
                (rng.randrange(1000), 100 + rng.randrange(100_000), product_id),
            ).fetchone()
        if row is not None:
            self._record_write(product_id, int(row[0]), oob=True)

    def _write_api(self, http: httpx.Client, rng: random.Random, product_id: int) -> None:
        url = f"{rng.choice(self.api_urls)}/products/{product_id}"
        response = http.patch(url, json={"stock": rng.randrange(1000)})
        if response.status_code != 200:
            with self._lock:
                self._error_response(response)
            raise ValueError(f"PATCH {response.status_code}")
        self._record_write(product_id, int(response.json()["version"]), oob=False)

    def _error_response(self, response: httpx.Response) -> None:
        self.stats.error_statuses[response.status_code] += 1
        if any(marker in response.text for marker in INTERNALS):
            self.stats.leaked_internals += 1

    # --- the readers -------------------------------------------------------------------------

    def _reader(self, index: int) -> None:
        rng = random.Random(self._random.random() + index)
        with httpx.Client(timeout=3.0) as http:
            while not self._stop.is_set():
                product_id = rng.choice(self.product_ids)
                base = self.api_urls[rng.randrange(len(self.api_urls))]
                in_fault = self._in_fault
                sent_at = time.monotonic()
                try:
                    response = http.get(f"{base}/products/{product_id}")
                    ok = response.status_code == 200
                    version = int(response.json()["version"]) if ok else 0
                except (httpx.HTTPError, ValueError, KeyError):
                    ok, version, response = False, 0, None
                if not ok or response is None:
                    with self._lock:
                        self.stats.read_errors += 1
                        if response is not None:
                            self._error_response(response)
                    self._stop.wait(0.02)
                    continue
                tier = response.headers.get("x-cache", "?")
                with self._lock:
                    self.stats.reads += 1
                    self.stats.x_cache[tier] += 1
                    if in_fault:
                        self.stats.reads_during_fault += 1
                    self._judge.judge(base, tier, product_id, version, sent_at, in_fault)
