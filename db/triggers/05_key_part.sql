-- Key rendering in SQL, the twin of pgbust/templates.py (a test checks that both agree on
-- every value): pgbust.key_part escapes one value, pgbust.render_key fills a template such as
-- 'line:{order_id}:{number}' from a jsonb object of text values. For operators who want
-- to see, in psql, which cache entry a row maps to; capture itself sends the raw values.

-- '%', ':', '{', '}', the ASCII space and control characters become %XX (upper-case hex).
CREATE OR REPLACE FUNCTION pgbust.key_part(value text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(string_agg(
               CASE WHEN c IN ('%', ':', '{', '}') OR ascii(c) <= 32 OR ascii(c) = 127
                    THEN '%' || lpad(upper(to_hex(ascii(c))), 2, '0')
                    ELSE c END,
               '' ORDER BY n), '')
    FROM unnest(string_to_array(value, NULL)) WITH ORDINALITY AS t(c, n)
$$;

-- NULL when a placeholder's value is missing or NULL (the row names no such entry).
CREATE OR REPLACE FUNCTION pgbust.render_key(template text, value_of jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    out text := '';
    rest text := template;
    m text[];
BEGIN
    LOOP
        m := regexp_match(rest, '^(.*?)\{([A-Za-z_][A-Za-z0-9_]*)\}(.*)$');
        EXIT WHEN m IS NULL;
        IF value_of ->> m[2] IS NULL THEN
            RETURN NULL;
        END IF;
        out := out || m[1] || pgbust.key_part(value_of ->> m[2]);
        rest := m[3];
    END LOOP;
    RETURN out || rest;
END
$$;
