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
-- the category, an index-only scan of products_category_id_id_idx. `found` says whether the
-- category exists, in the same round trip (a miss is one query, not two).
SELECT EXISTS (SELECT 1 FROM categories WHERE id = %(category_id)s) AS found,
       count(*) AS count,
       coalesce(sum(stock), 0) AS total_stock,
       min(price_cents) AS min_price_cents,
       round(avg(price_cents), 2)::float8 AS avg_price_cents,
       max(price_cents) AS max_price_cents
FROM products WHERE category_id = %(category_id)s;

-- name: insert_product
-- API write path (POST /products); the row comes back with its version.
INSERT INTO products (category_id, name, price_cents, stock)
VALUES (%(category_id)s, %(name)s, %(price_cents)s, %(stock)s)
RETURNING id, category_id, name, price_cents, stock, version, updated_at;

-- name: update_product
-- API write path (PATCH /products/{id}): NULL parameters keep the column; the old category
-- comes back too, so both the old and the new category are invalidated when it moves.
WITH old AS (
    SELECT id, category_id FROM products WHERE id = %(id)s FOR UPDATE
)
UPDATE products AS p
SET category_id = coalesce(%(category_id)s, p.category_id),
    name = coalesce(%(name)s, p.name),
    price_cents = coalesce(%(price_cents)s, p.price_cents),
    stock = coalesce(%(stock)s, p.stock)
FROM old
WHERE p.id = old.id
RETURNING p.id, p.category_id, p.name, p.price_cents, p.stock, p.version, p.updated_at,
          old.category_id AS old_category_id;

-- name: delete_product
-- API write path (DELETE /products/{id}).
DELETE FROM products WHERE id = %(id)s RETURNING id, category_id;
