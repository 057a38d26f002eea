-- Removed posts and comments leave the full-text index: the GIN indexes hold only rows whose
-- `removed_at` is NULL, and every search filters on it, so it still uses them. The rows and
-- their tsvector stay in the table, for the audit. Only the indexes are rebuilt (no table
-- rewrite). SQLite's FTS5 triggers already delete removed rows from its index.
DROP INDEX posts_tsv;
CREATE INDEX posts_tsv ON posts USING GIN (tsv) WHERE removed_at IS NULL;
DROP INDEX comments_tsv;
CREATE INDEX comments_tsv ON comments USING GIN (tsv) WHERE removed_at IS NULL;
