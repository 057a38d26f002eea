-- Sentence embeddings of posts and comments for semantic search, int8-quantized (one byte a
-- dimension plus a scale). A removed item's row stays as a tombstone with no vector
-- (`removed = 1`, empty `data`), so that replicas refreshing their in-memory copy by
-- `indexed_at` learn of the removal too.
CREATE TABLE vectors (
  item_id TEXT PRIMARY KEY,
  kind TEXT NOT NULL,
  author_id TEXT NOT NULL,
  model TEXT NOT NULL,
  scale REAL NOT NULL,
  data BLOB NOT NULL,
  created_at BIGINT NOT NULL,
  indexed_at BIGINT NOT NULL,
  removed BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX vectors_author ON vectors(author_id, created_at);
CREATE INDEX vectors_indexed ON vectors(indexed_at, item_id);
