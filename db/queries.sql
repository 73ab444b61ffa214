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

-- name: get_product
SELECT id, category_id, name, price_cents, stock, version, updated_at
FROM products WHERE id = %(id)s;

-- name: category_exists
SELECT 1 FROM categories WHERE id = %(id)s;

-- name: category_page
SELECT id, category_id, name, price_cents, stock, version, updated_at
FROM products WHERE category_id = %(category_id)s
ORDER BY id LIMIT %(limit)s OFFSET %(offset)s;

-- name: category_summary
-- The aggregate the summary endpoint serves (and caches): real work over every product of
-- the category, an index-only scan of products_category_id_id_idx.
SELECT count(*) AS count,
       coalesce(sum(stock), 0) AS total_stock,
       min(price_cents) AS min_price_cents,
       round(avg(price_cents), 2)::float8 AS avg_price_cents,
       max(price_cents) AS max_price_cents
FROM products WHERE category_id = %(category_id)s;
