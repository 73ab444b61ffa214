-- The one place that says which tables are captured and which columns their cache keys
-- depend on. To watch another table: add a line here, add its rule in invalidator/rules.py,
-- and run `python -m db upgrade` (or `python -m db triggers install`).
SELECT pgbust.capture_table('public.products', ARRAY['id', 'category_id']);
SELECT pgbust.capture_table('public.categories', ARRAY['id']);
