-- products.version is bumped by the database on every UPDATE, whoever writes (API, psql,
-- a batch job), so readers and the load-test oracle can order versions without trusting clients.
CREATE FUNCTION pgbust.bump_product_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END
$$;

CREATE TRIGGER products_bump_version
    BEFORE UPDATE ON products
    FOR EACH ROW EXECUTE FUNCTION pgbust.bump_product_version();
