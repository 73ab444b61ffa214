"""The invalidator daemon: change events from Postgres NOTIFY to Redis deletions."""
