-- The one place on SQLite that takes a channel's next seq and stores the event under it. A
-- row inserted into `event_writes` bumps (or starts) the channel's counter and writes the
-- event with the new seq; every event, whatever wrote it, goes through here: `append_event`
-- inserts into it directly, and the post's one-statement write (`post_writes`) from its
-- trigger.
CREATE VIEW event_writes AS SELECT
  NULL AS channel, NULL AS event, NULL AS data, NULL AS sealed, NULL AS created_at
WHERE 0;
CREATE TRIGGER event_writes_insert INSTEAD OF INSERT ON event_writes
BEGIN
  INSERT INTO channel_seqs (channel, seq) VALUES (NEW.channel, 1)
    ON CONFLICT (channel) DO UPDATE SET seq = seq + 1;
  INSERT INTO events (channel, seq, event, data, sealed, created_at)
    SELECT NEW.channel, seq, NEW.event, NEW.data, NEW.sealed, NEW.created_at
    FROM channel_seqs WHERE channel = NEW.channel;
END;

-- The post's write, again: the post, its topic's count, and its event through
-- `event_writes`. The ban is no longer checked here but by the statement that inserts into
-- the view (`Store::insert_post_with_event`), with the same rule as every other write in a
-- topic (`not_banned!` in src/store/rules.rs).
DROP TRIGGER post_writes_insert;
CREATE TRIGGER post_writes_insert INSTEAD OF INSERT ON post_writes
BEGIN
  INSERT INTO posts (id, topic, author_id, title, body, kind, url, score, comment_count, hot, created_at)
    VALUES (NEW.id, NEW.topic, NEW.author_id, NEW.title, NEW.body, NEW.kind, NEW.url, 0, 0, NEW.hot, NEW.created_at);
  UPDATE topics SET post_count = post_count + 1, last_activity_at = NEW.created_at
    WHERE name = NEW.topic;
  INSERT INTO event_writes (channel, event, data, sealed, created_at)
    VALUES (NEW.channel, 'post', NEW.data, NEW.sealed, NEW.created_at);
END;
