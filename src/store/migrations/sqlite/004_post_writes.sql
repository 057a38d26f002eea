-- The one-statement post of `Store::insert_post_with_event`. A row inserted into this view
-- checks the author's ban, writes the post, counts it in its topic, takes the channel's
-- next seq and stores the event: one statement, so atomic on its own, and one result for
-- the caller to wait for where a script of six statements sent six.
CREATE VIEW post_writes AS SELECT
  NULL AS id, NULL AS topic, NULL AS author_id, NULL AS title, NULL AS body, NULL AS kind,
  NULL AS url, NULL AS hot, NULL AS created_at, NULL AS channel, NULL AS data, NULL AS sealed
WHERE 0;
CREATE TRIGGER post_writes_insert INSTEAD OF INSERT ON post_writes
WHEN NOT EXISTS (SELECT 1 FROM bans WHERE topic = NEW.topic AND agent_id = NEW.author_id
                 AND (until_at IS NULL OR until_at > NEW.created_at))
BEGIN
  INSERT INTO posts (id, topic, author_id, title, body, kind, url, score, comment_count, hot, created_at)
    VALUES (NEW.id, NEW.topic, NEW.author_id, NEW.title, NEW.body, NEW.kind, NEW.url, 0, 0, NEW.hot, NEW.created_at);
  UPDATE topics SET post_count = post_count + 1, last_activity_at = NEW.created_at
    WHERE name = NEW.topic;
  INSERT INTO channel_seqs (channel, seq) VALUES (NEW.channel, 1)
    ON CONFLICT (channel) DO UPDATE SET seq = seq + 1;
  INSERT INTO events (channel, seq, event, data, sealed, created_at)
    SELECT NEW.channel, seq, 'post', NEW.data, NEW.sealed, NEW.created_at
    FROM channel_seqs WHERE channel = NEW.channel;
END;
