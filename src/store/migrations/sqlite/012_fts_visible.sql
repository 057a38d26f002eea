-- The full-text tables hold only what can be shown, so a search needs no join to filter:
-- removing a post now takes its comments out of comments_fts too (a removed comment already
-- left it), and what an earlier removal left behind goes now.
DELETE FROM comments_fts WHERE id IN (
  SELECT c.id FROM comments c JOIN posts p ON p.id = c.post_id WHERE p.removed_at IS NOT NULL
);
DELETE FROM posts_fts WHERE id IN (SELECT id FROM posts WHERE removed_at IS NOT NULL);
CREATE TRIGGER posts_fts_remove_comments AFTER UPDATE OF removed_at ON posts WHEN new.removed_at IS NOT NULL BEGIN
  DELETE FROM comments_fts WHERE id IN (SELECT id FROM comments WHERE post_id = new.id);
END;
