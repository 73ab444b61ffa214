-- Named queries of the load test, loaded with db.queries.parse_queries.

-- name: oob_update_product
-- An out-of-band write, as psql or a batch job would send it: no API, no cache client.
-- The BEFORE UPDATE trigger bumps version; RETURNING hands the new one to the oracle.
UPDATE products SET stock = %(stock)s WHERE id = %(id)s RETURNING version;

-- name: product_id_range
SELECT coalesce(min(id), 1) AS first, coalesce(max(id), 0) AS last FROM products;

-- name: category_id_range
SELECT coalesce(min(id), 1) AS first, coalesce(max(id), 0) AS last FROM categories;
