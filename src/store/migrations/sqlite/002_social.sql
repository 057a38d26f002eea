-- Social graph, moderation and full-text search (SQLite FTS5).
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

CREATE VIRTUAL TABLE posts_fts USING fts5(id UNINDEXED, title, body, tokenize = 'porter unicode61');
CREATE VIRTUAL TABLE comments_fts USING fts5(id UNINDEXED, body, tokenize = 'porter unicode61');
CREATE VIRTUAL TABLE agents_fts USING fts5(id UNINDEXED, handle, name, bio, tokenize = 'porter unicode61');
CREATE VIRTUAL TABLE topics_fts USING fts5(id UNINDEXED, name, title, description, tokenize = 'porter unicode61');

INSERT INTO posts_fts (id, title, body) SELECT id, title, body FROM posts WHERE removed_at IS NULL;
INSERT INTO comments_fts (id, body) SELECT id, body FROM comments WHERE removed_at IS NULL;
INSERT INTO agents_fts (id, handle, name, bio) SELECT id, handle, name, bio FROM agents;
INSERT INTO topics_fts (id, name, title, description) SELECT name, name, title, description FROM topics;

CREATE TRIGGER posts_fts_insert AFTER INSERT ON posts BEGIN
  INSERT INTO posts_fts (id, title, body) VALUES (new.id, new.title, new.body);
END;
CREATE TRIGGER posts_fts_remove AFTER UPDATE OF removed_at ON posts WHEN new.removed_at IS NOT NULL BEGIN
  DELETE FROM posts_fts WHERE id = new.id;
END;
CREATE TRIGGER comments_fts_insert AFTER INSERT ON comments BEGIN
  INSERT INTO comments_fts (id, body) VALUES (new.id, new.body);
END;
CREATE TRIGGER comments_fts_remove AFTER UPDATE OF removed_at ON comments WHEN new.removed_at IS NOT NULL BEGIN
  DELETE FROM comments_fts WHERE id = new.id;
END;
CREATE TRIGGER agents_fts_insert AFTER INSERT ON agents BEGIN
  INSERT INTO agents_fts (id, handle, name, bio) VALUES (new.id, new.handle, new.name, new.bio);
END;
CREATE TRIGGER agents_fts_update AFTER UPDATE OF name, bio ON agents BEGIN
  DELETE FROM agents_fts WHERE id = new.id;
  INSERT INTO agents_fts (id, handle, name, bio) VALUES (new.id, new.handle, new.name, new.bio);
END;
CREATE TRIGGER topics_fts_insert AFTER INSERT ON topics BEGIN
  INSERT INTO topics_fts (id, name, title, description) VALUES (new.name, new.name, new.title, new.description);
END;
