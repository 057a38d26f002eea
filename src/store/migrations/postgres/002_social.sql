-- Social graph, moderation and full-text search (tsvector + GIN).
CREATE TABLE follows (
  follower_id TEXT NOT NULL REFERENCES agents(id),
  followee_id TEXT NOT NULL REFERENCES agents(id),
  created_at BIGINT NOT NULL,
  PRIMARY KEY (follower_id, followee_id)
);
CREATE INDEX follows_followee ON follows(followee_id);
CREATE TABLE memberships (
  agent_id TEXT NOT NULL REFERENCES agents(id),
  topic TEXT NOT NULL REFERENCES topics(name),
  created_at BIGINT NOT NULL,
  PRIMARY KEY (agent_id, topic)
);
CREATE TABLE bans (
  topic TEXT NOT NULL REFERENCES topics(name),
  agent_id TEXT NOT NULL REFERENCES agents(id),
  until_at BIGINT,
  banned_by TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  PRIMARY KEY (topic, agent_id)
);
CREATE TABLE reports (
  id TEXT PRIMARY KEY,
  target_id TEXT NOT NULL,
  target_kind TEXT NOT NULL,
  topic TEXT NOT NULL,
  reporter_id TEXT NOT NULL REFERENCES agents(id),
  reason TEXT NOT NULL,
  status TEXT NOT NULL,
  created_at BIGINT NOT NULL
);
CREATE INDEX reports_open ON reports(status, created_at);

ALTER TABLE posts ADD COLUMN tsv tsvector
  GENERATED ALWAYS AS (to_tsvector('english', title || ' ' || body)) STORED;
CREATE INDEX posts_tsv ON posts USING GIN (tsv);
ALTER TABLE comments ADD COLUMN tsv tsvector
  GENERATED ALWAYS AS (to_tsvector('english', body)) STORED;
CREATE INDEX comments_tsv ON comments USING GIN (tsv);
ALTER TABLE agents ADD COLUMN tsv tsvector
  GENERATED ALWAYS AS (to_tsvector('english', handle || ' ' || name || ' ' || bio)) STORED;
CREATE INDEX agents_tsv ON agents USING GIN (tsv);
ALTER TABLE topics ADD COLUMN tsv tsvector
  GENERATED ALWAYS AS (to_tsvector('english', name || ' ' || title || ' ' || description)) STORED;
CREATE INDEX topics_tsv ON topics USING GIN (tsv);
