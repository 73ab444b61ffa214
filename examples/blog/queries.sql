-- The blog's named queries (db/queries.py's "-- name: x" format); %(name)s parameters.

-- name: author
SELECT id, name FROM blog.authors WHERE id = %(id)s;

-- name: post_count
-- one row, also for an author that does not exist (found = false: a 404)
SELECT EXISTS (SELECT 1 FROM blog.authors WHERE id = %(id)s) AS found,
       (SELECT count(*) FROM blog.posts WHERE author_id = %(id)s) AS posts;

-- name: post
SELECT slug, author_id, title, body FROM blog.posts WHERE slug = %(slug)s;

-- name: comments
SELECT post_slug, number, author, body FROM blog.comments
WHERE post_slug = %(slug)s ORDER BY number;

-- name: post_exists
SELECT true AS found FROM blog.posts WHERE slug = %(slug)s;

-- name: comment
SELECT post_slug, number, author, body FROM blog.comments
WHERE post_slug = %(post_slug)s AND number = %(number)s;

-- name: edit_post
-- the row before and after (for the cache's rules: which columns changed)
WITH old AS (SELECT slug, author_id, title, body FROM blog.posts
             WHERE slug = %(slug)s FOR UPDATE)
UPDATE blog.posts p SET title = %(title)s, body = %(body)s
FROM old WHERE p.slug = old.slug
RETURNING old.author_id AS old_author_id, old.title AS old_title, old.body AS old_body,
          p.slug, p.author_id, p.title, p.body;

-- name: add_comment
-- the next number of the post's comments; the post's row lock serialises two at once
WITH post AS (SELECT slug FROM blog.posts WHERE slug = %(slug)s FOR UPDATE)
INSERT INTO blog.comments (post_slug, number, author, body)
SELECT post.slug,
       coalesce((SELECT max(number) FROM blog.comments WHERE post_slug = post.slug), 0) + 1,
       %(author)s, %(body)s
FROM post
RETURNING post_slug, number, author, body;
