"""Settings of the staleness load test (python -m loadtest); env names PGBUST_LOADTEST_*."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from pgbust.settings import CaptureSettings


class Settings(CaptureSettings):
    """The load a run generates and the stack it starts (the cdc mode captures as
    PGBUST_CAPTURE says); CLI flags override these."""

    api_token: str = Field(
        default="",
        validation_alias=AliasChoices("API_TOKEN", "api_token"),
        description="bearer token for API writes; empty = a random one per run",
    )
    loadtest_users: int = Field(default=40, ge=4, le=2_000, description="Locust users in all")
    loadtest_write_rps: float = Field(
        default=120.0, ge=0, description="target writes per second (API + out-of-band)"
    )
    loadtest_oob_fraction: float = Field(
        default=1 / 3, ge=0, le=1, description="share of writes sent straight to Postgres"
    )
    loadtest_read_ratio: float = Field(
        default=0.9, gt=0, lt=1, description="target share of reads in all requests"
    )
    loadtest_page_share: float = Field(
        default=0.1, ge=0, le=1, description="share of reads that are category pages"
    )
    loadtest_summary_share: float = Field(
        default=0.1, ge=0, le=1, description="share of reads that are category summaries"
    )
    loadtest_zipf_s: float = Field(
        default=1.0, ge=0, le=3, description="Zipf exponent of the product-id skew (0 = uniform)"
    )
    loadtest_warmup_s: float = Field(
        default=5.0, ge=0, description="first seconds of each run left out of the numbers"
    )
    loadtest_write_zipf_s: float | None = Field(
        default=None, ge=0, le=3, description="skew of written ids; unset = same as reads"
    )
    loadtest_api_instances: int = Field(default=2, ge=1, le=8)
    loadtest_ttl_s: float = Field(default=30.0, gt=0, description="cache TTL of the ttl mode")
    loadtest_seed_products: int = Field(default=100_000, ge=1)
    loadtest_seed_categories: int = Field(default=20, ge=1)
    loadtest_worker: bool = Field(
        default=True, description="start a Celery worker in cdc mode (warming, retries)"
    )
    loadtest_warm_top: int = Field(
        default=0,
        ge=0,
        description="PGBUST_WARM_TOP of the cdc mode's invalidator: hot entries the worker "
        "re-warms after an invalidation (0 = off: measured to cost more than it saves here)",
    )
    loadtest_startup_timeout_s: float = Field(default=60.0, gt=0)
