-- The blog's schema: three keys of three kinds (uuid, text, composite), none a bigint.
CREATE SCHEMA IF NOT EXISTS blog;

CREATE TABLE blog.authors (
    id   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200)
);

CREATE TABLE blog.posts (
    -- any text: slugs with ':', '{', spaces or unicode must render unambiguously
    slug      text PRIMARY KEY CHECK (length(slug) BETWEEN 1 AND 200),
    author_id uuid NOT NULL REFERENCES blog.authors (id) ON DELETE CASCADE,
    title     text NOT NULL CHECK (length(title) BETWEEN 1 AND 500),
    body      text NOT NULL DEFAULT ''
);
-- an author's post count
CREATE INDEX posts_author_id_idx ON blog.posts (author_id);

CREATE TABLE blog.comments (
    -- a renamed post takes its comments along (a cascaded UPDATE: captured like any other)
    post_slug text    NOT NULL REFERENCES blog.posts (slug) ON UPDATE CASCADE ON DELETE CASCADE,
    number    integer NOT NULL CHECK (number > 0),
    author    text    NOT NULL CHECK (length(author) BETWEEN 1 AND 200),
    body      text    NOT NULL,
    PRIMARY KEY (post_slug, number)
);
