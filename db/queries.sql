-- Named queries, loaded by db/queries.py. Each block starts with "-- name: <name>".
-- Parameters use psycopg's %(name)s style.

-- name: seed_reset
TRUNCATE products, categories RESTART IDENTITY;

-- name: seed_categories
INSERT INTO categories (name)
SELECT 'Category ' || i FROM generate_series(1, %(categories)s) AS i;

-- name: seed_products
-- Deterministic pseudo-random values so every run of the demo sees the same catalogue.
INSERT INTO products (category_id, name, price_cents, stock)
SELECT 1 + (i %% %(categories)s),
       'Product ' || i,
       100 + (i * 7919) %% 99900,
       (i * 104729) %% 1000
FROM generate_series(1::bigint, %(products)s) AS i;

-- name: count_catalogue
SELECT (SELECT count(*) FROM categories) AS categories, (SELECT count(*) FROM products) AS products;
