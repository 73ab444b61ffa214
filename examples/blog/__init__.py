"""A blog on pgbust: authors keyed by uuid, posts by a text slug, comments by (post, number).

Nothing of pgbust changes for it: its own declaration (examples/blog/pgbust.toml), schema
(migrations/) and loaders, served by the same invalidator and workers (README.md here).
"""
