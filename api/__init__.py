"""The FastAPI service: routes, the two-tier cache, the invalidation subscriber."""
