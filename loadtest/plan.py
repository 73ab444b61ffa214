"""The plan of one run (pure): how many Locust users of each kind, at what rates, where.

The runner builds it from the settings and the database, and hands it to the locustfile as
JSON in PGBUST_LOADTEST_PLAN; nothing in the locustfile reads other settings.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import orjson

from loadtest.settings import Settings
from pgbust.errors import ConfigError

PLAN_ENV = "PGBUST_LOADTEST_PLAN"
# A writer user sends at most this many writes per second (keeps each one well below its
# round-trip time so the target rate is reached even when the API slows down).
WRITES_PER_WRITER = 8.0


class PlanError(ConfigError):
    """Settings that cannot make a run (exit 2 with one line, like every config error)."""


@dataclass(frozen=True)
class Plan:
    mode: str
    api_urls: tuple[str, ...]
    api_token: str
    database_url: str
    raw_out: str
    users: int
    readers: int
    api_writers: int
    oob_writers: int
    read_rps: float
    api_write_rps: float
    oob_write_rps: float
    page_share: float
    summary_share: float
    zipf_s: float
    write_zipf_s: float
    product_ids: tuple[int, int]  # first, last
    category_ids: tuple[int, int]

    @property
    def user_classes(self) -> list[str]:
        """Locust user classes to run (the ones with users)."""
        names = ["ReaderUser"]
        if self.api_writers:
            names.append("ApiWriterUser")
        if self.oob_writers:
            names.append("OobWriterUser")
        return names

    def to_json(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def from_json(cls, text: str) -> Plan:
        body = orjson.loads(text)
        body["api_urls"] = tuple(body["api_urls"])
        body["product_ids"] = tuple(body["product_ids"])
        body["category_ids"] = tuple(body["category_ids"])
        return cls(**body)


def make_plan(
    settings: Settings,
    *,
    mode: str,
    api_urls: list[str],
    api_token: str,
    raw_out: str,
    product_ids: tuple[int, int],
    category_ids: tuple[int, int],
) -> Plan:
    write_rps = settings.loadtest_write_rps
    oob_rps = write_rps * settings.loadtest_oob_fraction
    api_rps = write_rps - oob_rps
    api_writers = math.ceil(api_rps / WRITES_PER_WRITER) if api_rps > 0 else 0
    oob_writers = math.ceil(oob_rps / WRITES_PER_WRITER) if oob_rps > 0 else 0
    readers = settings.loadtest_users - api_writers - oob_writers
    if readers < 1:
        raise PlanError(
            f"PGBUST_LOADTEST_USERS={settings.loadtest_users} leaves no reader: "
            f"{api_writers + oob_writers} users write; raise it or lower the write rate"
        )
    ratio = settings.loadtest_read_ratio
    read_rps = write_rps * ratio / (1.0 - ratio) if write_rps > 0 else 100.0 * readers
    if product_ids[1] < product_ids[0] or category_ids[1] < category_ids[0]:
        raise PlanError("the catalogue is empty: run python -m db seed first")
    return Plan(
        mode=mode,
        api_urls=tuple(api_urls),
        api_token=api_token,
        database_url=settings.database_url,
        raw_out=raw_out,
        users=settings.loadtest_users,
        readers=readers,
        api_writers=api_writers,
        oob_writers=oob_writers,
        read_rps=read_rps,
        api_write_rps=api_rps,
        oob_write_rps=oob_rps,
        page_share=settings.loadtest_page_share,
        summary_share=settings.loadtest_summary_share,
        zipf_s=settings.loadtest_zipf_s,
        write_zipf_s=(
            settings.loadtest_zipf_s
            if settings.loadtest_write_zipf_s is None
            else settings.loadtest_write_zipf_s
        ),
        product_ids=product_ids,
        category_ids=category_ids,
    )
