//! Social graph, discovery and moderation through the protocol and the HTTP API: follows and
//! joins feeding the personal feed in every order, search with ranking and removal, and
//! remove / ban / report from allowed and not-allowed identities.

mod common;

use carapace::config::RateLimitMode;
use carapace_client::Client;
use common::post;
use serde_json::{Value, json};
use std::time::Duration;

/// The store each case runs on: the embedded SQLite, or a fresh database on the machine's
/// PostgreSQL (kept alive by the returned guard).
#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

async fn start(
    backend: Backend,
    limits: RateLimitMode,
) -> (common::TestHub, Option<common::infra::PgDb>) {
    let pg = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(common::infra::PgDb::create("social").await),
    };
    let url = pg.as_ref().map(|p| p.url.clone());
    let hub = common::start_with(|c| {
        c.rate_limits = limits;
        if let Some(u) = url {
            c.database_url = u;
        }
    })
    .await;
    (hub, pg)
}

async fn topic(c: &mut Client, name: &str) {
    c.command(
        "topic.create",
        json!({"name": name, "title": name, "description": format!("all about {name}")}),
    )
    .await
    .unwrap();
}

fn ids(page: &Value) -> Vec<String> {
    page["posts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect()
}

/// Walks every page of a feed with `limit` 1 and returns the ids in order.
async fn walk_feed(c: &mut Client, sort: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..20 {
        let mut f = json!({"sort": sort, "limit": 1});
        if let Some(cur) = &cursor {
            f["cursor"] = cur.clone().into();
        }
        let page = c.command("feed", f).await.unwrap();
        out.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(n) => cursor = Some(n.to_string()),
            None => break,
        }
    }
    out
}

#[tokio::test]
async fn feed_sqlite() {
    follows_and_joins_shape_the_feed_in_every_order(Backend::Sqlite).await;
}

#[tokio::test]
async fn feed_postgres() {
    follows_and_joins_shape_the_feed_in_every_order(Backend::Postgres).await;
}

async fn follows_and_joins_shape_the_feed_in_every_order(backend: Backend) {
    let (hub, _pg) = start(backend, RateLimitMode::Off).await;
    let (_, reader_t) = hub.agent("reader").await;
    let (_, followed_t) = hub.agent("followed").await;
    let (_, other_t) = hub.agent("other").await;
    let mut reader = hub.connect(Some(&reader_t)).await;
    let mut followed = hub.connect(Some(&followed_t)).await;
    let mut other = hub.connect(Some(&other_t)).await;
    topic(&mut other, "joined").await;
    topic(&mut other, "elsewhere").await;

    reader
        .command("follow", json!({"handle": "followed"}))
        .await
        .unwrap();
    reader
        .command("join", json!({"topic": "joined"}))
        .await
        .unwrap();
    let e = reader
        .command("follow", json!({"handle": "reader"}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("bad_request"), "no following oneself");
    let e = reader
        .command("follow", json!({"handle": "ghost_agent"}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("not_found"));

    let a = post(
        &mut followed,
        "elsewhere",
        "followed elsewhere",
        "by a followed agent",
    )
    .await;
    let b = post(&mut other, "joined", "other in joined", "in a joined topic").await;
    let _c = post(
        &mut other,
        "elsewhere",
        "other elsewhere",
        "neither followed nor joined",
    )
    .await;
    let d = post(&mut followed, "joined", "followed in joined", "both").await;
    // Votes make `top` differ from `new`: b gets 2, a gets 1.
    reader
        .command("vote", json!({"target": b, "value": 1}))
        .await
        .unwrap();
    followed
        .command("vote", json!({"target": b, "value": 1}))
        .await
        .unwrap();
    reader
        .command("vote", json!({"target": a, "value": 1}))
        .await
        .unwrap();

    let new = walk_feed(&mut reader, "new").await;
    assert_eq!(
        new,
        vec![d.clone(), b.clone(), a.clone()],
        "exactly the right posts, newest first"
    );
    let top = walk_feed(&mut reader, "top").await;
    assert_eq!(top, vec![b.clone(), a.clone(), d.clone()]);
    let mut hot = walk_feed(&mut reader, "hot").await;
    assert_eq!(hot.len(), 3);
    assert_eq!(hot[0], b, "two votes lift b to the top of hot");
    hot.sort();
    let mut expect = vec![a.clone(), b.clone(), d.clone()];
    expect.sort();
    assert_eq!(hot, expect);
    let rising = walk_feed(&mut reader, "rising").await;
    assert_eq!(rising, vec![b.clone(), a.clone(), d.clone()]);

    // The HTTP feed with the agent's JWT says the same.
    let r = hub
        .http(
            "GET",
            "/api/v1/feed?sort=new&limit=10",
            Some(&reader_t),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(ids(&r.body), vec![d.clone(), b.clone(), a.clone()]);
    assert_eq!(
        hub.http("GET", "/api/v1/feed", None, None).await.status,
        401
    );
    // Spectators have no feed.
    let mut spectator = hub.connect(None).await;
    let e = spectator.command("feed", json!({})).await.unwrap_err();
    assert_eq!(e.code(), Some("forbidden"));

    // Unfollow and leave empty the feed; topic pages also rank by rising.
    reader
        .command("unfollow", json!({"handle": "followed"}))
        .await
        .unwrap();
    reader
        .command("leave", json!({"topic": "joined"}))
        .await
        .unwrap();
    assert!(walk_feed(&mut reader, "new").await.is_empty());
    let r = hub
        .http("GET", "/api/v1/topics/joined/posts?sort=rising", None, None)
        .await;
    assert_eq!(ids(&r.body)[0], b);

    // Profiles count followers and following.
    followed
        .command("follow", json!({"handle": "other"}))
        .await
        .unwrap();
    reader
        .command("follow", json!({"handle": "other"}))
        .await
        .unwrap();
    let p = hub.http("GET", "/api/v1/agents/other", None, None).await;
    assert_eq!(
        (p.body["followers"].as_i64(), p.body["following"].as_i64()),
        (Some(2), Some(0))
    );
}

#[tokio::test]
async fn search_sqlite() {
    search_ranks_finds_and_forgets_removed_content(Backend::Sqlite).await;
}

#[tokio::test]
async fn search_postgres() {
    search_ranks_finds_and_forgets_removed_content(Backend::Postgres).await;
}

async fn search_ranks_finds_and_forgets_removed_content(backend: Backend) {
    let (hub, _pg) = start(backend, RateLimitMode::Off).await;
    let (_, mod_t) = hub.agent("moderator").await;
    let (_, writer_t) = hub.agent("writer").await;
    let mut moder = hub.connect(Some(&mod_t)).await;
    let mut writer = hub.connect(Some(&writer_t)).await;
    topic(&mut moder, "kitchen").await;
    let close = post(
        &mut writer,
        "kitchen",
        "Kelp soup",
        "A kelp soup recipe: kelp, more kelp, and a soup pot.",
    )
    .await;
    let loose = post(
        &mut writer,
        "kitchen",
        "Dinner",
        "I once had soup. Also some kelp on the side, and bread.",
    )
    .await;
    post(&mut writer, "kitchen", "Unrelated", "Barnacles and tides.").await;

    let r = hub
        .http("GET", "/api/v1/search?q=kelp%20soup&type=posts", None, None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let found: Vec<&str> = r.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["item"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        found,
        vec![close.as_str(), loose.as_str()],
        "the closer match ranks first"
    );
    let snippet = r.body["results"][0]["snippet"].as_str().unwrap();
    assert!(snippet.contains("«"), "highlighted: {snippet}");
    // The op gives the same answer; agents and topics are searchable too.
    let op = writer
        .command("search", json!({"q": "kelp soup"}))
        .await
        .unwrap();
    assert_eq!(op["results"][0]["item"]["id"], close.as_str());
    let r = hub
        .http("GET", "/api/v1/search?q=writer&type=agents", None, None)
        .await;
    assert_eq!(r.body["results"][0]["item"]["handle"], "writer");
    let r = hub
        .http("GET", "/api/v1/search?q=kitchen&type=topics", None, None)
        .await;
    assert_eq!(r.body["results"][0]["item"]["name"], "kitchen");

    let orphan = writer
        .command(
            "comment",
            json!({"post_id": close, "body": "seaweed broth forever"}),
        )
        .await
        .unwrap()["comment"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = hub
        .http(
            "GET",
            "/api/v1/search?q=seaweed%20broth&type=comments",
            None,
            None,
        )
        .await;
    assert_eq!(r.body["results"][0]["item"]["id"], orphan.as_str());
    // Removal: gone from search, from reads and from the viewer (a `removed` event).
    let mut spectator = hub.connect(None).await;
    spectator.subscribe("topic:kitchen", None).await.unwrap();
    moder
        .command(
            "remove",
            json!({"target": close, "reason": "too much kelp"}),
        )
        .await
        .unwrap();
    let ev = spectator.next_push(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (ev.event.as_str(), ev.data["target"].as_str()),
        ("removed", Some(close.as_str()))
    );
    let r = hub
        .http("GET", "/api/v1/search?q=kelp%20soup", None, None)
        .await;
    let found: Vec<&str> = r.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["item"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(found, vec![loose.as_str()]);
    // Comments under a removed post are gone with it.
    let r = hub
        .http(
            "GET",
            "/api/v1/search?q=seaweed%20broth&type=comments",
            None,
            None,
        )
        .await;
    assert_eq!(r.body["results"], json!([]));
    let e = moder
        .command("remove", json!({"target": orphan, "reason": "again"}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("not_found"));
    assert_eq!(
        hub.http("GET", &format!("/api/v1/posts/{close}"), None, None)
            .await
            .status,
        404
    );

    // Hostile queries never reach the engine as syntax.
    for q in [
        "\"",
        "\"unbalanced",
        "(((",
        "kelp AND",
        "OR NOT",
        "*",
        "kelp*",
        "title:kelp",
        "NEAR(kelp soup)",
        "-kelp",
        "^kelp",
        "'; DROP TABLE posts; --",
        "\u{0}",
        "%",
        "🦀",
    ] {
        let path = format!("/api/v1/search?q={}", urlencode(q));
        let r = hub.http("GET", &path, None, None).await;
        assert!(
            r.status == 200 || r.status == 400,
            "{q:?} -> {} {:?}",
            r.status,
            r.body
        );
        let op = writer.command("search", json!({"q": q})).await;
        if let Err(e) = op {
            assert_eq!(e.code(), Some("bad_request"), "{q:?}");
        }
    }
    for (q, code) in [("", 400), ("   ", 400)] {
        assert_eq!(
            hub.http("GET", &format!("/api/v1/search?q={q}"), None, None)
                .await
                .status,
            code
        );
    }
    let huge = "kelp ".repeat(2000);
    let e = writer
        .command("search", json!({"q": huge}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("bad_request"));
    assert_eq!(
        hub.http("GET", "/api/v1/search?q=kelp&type=secrets", None, None)
            .await
            .status,
        400
    );
    assert_eq!(hub.http("GET", "/healthz", None, None).await.status, 200);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn moderation_sqlite() {
    remove_ban_and_report_respect_who_may_do_them(Backend::Sqlite).await;
}

#[tokio::test]
async fn moderation_postgres() {
    remove_ban_and_report_respect_who_may_do_them(Backend::Postgres).await;
}

async fn remove_ban_and_report_respect_who_may_do_them(backend: Backend) {
    let (hub, _pg) = start(backend, RateLimitMode::Default).await;
    let (_, creator_t) = hub.agent("creator").await;
    let (_, member_t) = hub.agent("member").await;
    let (_, troll_t) = hub.agent("troll").await;
    let mut creator = hub.connect(Some(&creator_t)).await;
    let mut member = hub.connect(Some(&member_t)).await;
    let mut troll = hub.connect(Some(&troll_t)).await;
    topic(&mut creator, "garden").await;
    topic(&mut troll, "trollhouse").await;
    let p = post(&mut member, "garden", "Roses", "red").await;
    let bad = post(&mut troll, "garden", "Spam", "buy now").await;
    let comment = troll
        .command("comment", json!({"post_id": p, "body": "spam comment"}))
        .await
        .unwrap()["comment"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Not allowed: a member or the troll removing in garden; garden's creator in trollhouse.
    let e = member
        .command("remove", json!({"target": bad, "reason": "x"}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("forbidden"));
    let e = troll
        .command("remove", json!({"target": p, "reason": "x"}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("forbidden"));
    let tp = post(&mut troll, "trollhouse", "Mine", "mine").await;
    let e = creator
        .command("remove", json!({"target": tp, "reason": "x"}))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some("forbidden"),
        "a moderator cannot moderate a topic it does not own"
    );
    // Allowed: the creator removes a post and a comment.
    creator
        .command("remove", json!({"target": bad, "reason": "spam"}))
        .await
        .unwrap();
    creator
        .command("remove", json!({"target": comment, "reason": "spam"}))
        .await
        .unwrap();
    let thread = hub
        .http("GET", &format!("/api/v1/posts/{p}"), None, None)
        .await;
    assert_eq!(thread.body["comments"], json!([]));
    assert_eq!(thread.body["post"]["comment_count"], 0);
    let page = hub
        .http("GET", "/api/v1/topics/garden/posts?sort=new", None, None)
        .await;
    assert_eq!(ids(&page.body), vec![p.clone()]);

    // Ban: not allowed from a member; allowed from the creator, and the troll's live session
    // gets `forbidden` on its next write there (but may still write elsewhere).
    let e = member
        .command("ban", json!({"topic": "garden", "handle": "troll"}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("forbidden"));
    creator
        .command("ban", json!({"topic": "garden", "handle": "troll"}))
        .await
        .unwrap();
    let e = troll
        .command(
            "post",
            json!({"topic": "garden", "title": "again", "body": "spam"}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("forbidden"));
    let e = troll
        .command("comment", json!({"post_id": p, "body": "spam"}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("forbidden"));
    // Whatever the write: a post with a mention (written with its mention events) or a vote.
    let e = troll
        .command(
            "post",
            json!({"topic": "garden", "title": "hey @member", "body": "spam"}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("forbidden"));
    let e = troll
        .command("vote", json!({"target": p, "value": 1}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("forbidden"));
    post(&mut troll, "trollhouse", "Still here", "elsewhere is fine").await;
    // A ban that has expired no longer applies.
    creator
        .command(
            "ban",
            json!({"topic": "garden", "handle": "troll", "until": "2001-01-01T00:00:00Z"}),
        )
        .await
        .unwrap();
    post(&mut troll, "garden", "Reformed", "sorry").await;
    let e = creator
        .command(
            "ban",
            json!({"topic": "garden", "handle": "troll", "until": "tomorrow"}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("bad_request"));

    // Report: any agent may; spectators may not; admins list open reports; owners may not.
    member
        .command(
            "report",
            json!({"target": p, "reason": "it is actually a fake rose"}),
        )
        .await
        .unwrap();
    let mut spectator = hub.connect(None).await;
    let e = spectator
        .command("report", json!({"target": p, "reason": "x"}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("forbidden"));
    let e = member
        .command("report", json!({"target": "no-such-id", "reason": "x"}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("not_found"));
    let owner = hub.owner("plain_owner").await;
    assert_eq!(
        hub.http("GET", "/api/v1/admin/reports", Some(&owner), None)
            .await
            .status,
        403
    );
    let admin = hub.admin_token("mod_admin").await;
    let r = hub
        .http("GET", "/api/v1/admin/reports", Some(&admin), None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["reports"][0]["target"], p.as_str());
    assert_eq!(r.body["reports"][0]["reporter"], "member");

    // An admin's agent moderates everywhere.
    let (_, admin_agent_t) = hub
        .agent_for(
            &admin,
            "admin_bot",
            json!(["read", "post", "comment", "vote"]),
        )
        .await;
    let mut admin_bot = hub.connect(Some(&admin_agent_t)).await;
    admin_bot
        .command("remove", json!({"target": tp, "reason": "admin"}))
        .await
        .unwrap();

    // Every moderation act is in the audit log.
    let audit = hub
        .http("GET", "/api/v1/admin/audit?limit=1000", Some(&admin), None)
        .await;
    let actions: Vec<&str> = audit.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == "moderation.remove")
            .count(),
        3
    );
    assert_eq!(
        actions.iter().filter(|a| **a == "moderation.ban").count(),
        2
    );
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == "moderation.report")
            .count(),
        1
    );
}

#[tokio::test]
async fn tombstones_sqlite() {
    removed_content_is_never_replayed(Backend::Sqlite).await;
}

#[tokio::test]
async fn tombstones_postgres() {
    removed_content_is_never_replayed(Backend::Postgres).await;
}

async fn comment(c: &mut Client, post_id: &str, body: &str) -> String {
    c.command("comment", json!({"post_id": post_id, "body": body}))
        .await
        .unwrap()["comment"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Subscribes with `since: 0` and returns the whole replayed history, checking that it has
/// every seq from 1 to the channel's last.
async fn replay(c: &mut Client, channel: &str) -> Vec<carapace_client::Push> {
    let r = c.subscribe(channel, Some(0)).await.unwrap();
    let last = r["seq"].as_u64().unwrap();
    let pushes = c.pushes(last as usize, Duration::from_secs(5)).await;
    let seqs: Vec<u64> = pushes.iter().map(|p| p.seq).collect();
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "{channel}: no gap");
    pushes
}

/// What a moderator removes is never served again, to anyone, by any path: a spectator
/// replaying the topic's history gets tombstones where the post and comments were (same
/// seq, ids only), the agents it reached privately (mention, reply) replay tombstones too,
/// and reads, search, profiles, pages and feeds do not have it.
async fn removed_content_is_never_replayed(backend: Backend) {
    let (hub, _pg) = start(backend, RateLimitMode::Off).await;
    let (_, warden_t) = hub.agent("warden").await;
    let (_, writer_t) = hub.agent("writer").await;
    let (_, reader_t) = hub.agent("reader").await;
    let mut warden = hub.connect(Some(&warden_t)).await;
    let mut writer = hub.connect(Some(&writer_t)).await;
    let mut reader = hub.connect(Some(&reader_t)).await;
    topic(&mut warden, "vault").await;
    reader
        .command("join", json!({"topic": "vault"}))
        .await
        .unwrap();
    // A link post that mentions `reader` (a private copy), answered by `reader` (a private
    // reply to `writer` quoting its title); a plain post kept, with one comment removed.
    let secret = writer
        .command(
            "post",
            json!({"topic": "vault", "title": "Launch codes",
                "body": "The launch code is marmoset 4417, ask @reader.",
                "url": "https://leak.example/marmoset-4417"}),
        )
        .await
        .unwrap()["post"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let answer = comment(&mut reader, &secret, "Confirmed: marmoset 4417 opens it.").await;
    // And answered back: a private reply to `reader`, quoting the title too.
    let thanks = writer
        .command(
            "comment",
            json!({"post_id": secret, "parent_id": answer, "body": "Thanks, marmoset it is."}),
        )
        .await
        .unwrap()["comment"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let kept = post(&mut writer, "vault", "Tide tables", "High water at six.").await;
    let rude = comment(&mut reader, &kept, "Ocelot password is hunter2, @writer.").await;
    let fine = comment(&mut reader, &kept, "Thanks for the tides.").await;

    for target in [&rude, &secret] {
        warden
            .command("remove", json!({"target": target, "reason": "leak"}))
            .await
            .unwrap();
    }
    let leaked = |p: &carapace_client::Push| {
        let text = p.data.to_string();
        [
            "marmoset",
            "4417",
            "Ocelot",
            "hunter2",
            "leak.example",
            "Launch codes",
        ]
        .into_iter()
        .find(|s| text.contains(s))
    };

    // A spectator replays the topic from the start.
    let mut spectator = hub.connect(None).await;
    let history = replay(&mut spectator, "topic:vault").await;
    for p in &history {
        assert_eq!(leaked(p), None, "#{} {}: {}", p.seq, p.event, p.data);
    }
    let find = |id: &str| {
        history
            .iter()
            .find(|p| p.data["id"] == id)
            .unwrap_or_else(|| panic!("no event for {id}"))
    };
    let p = find(&secret);
    assert_eq!(p.event, "post");
    assert_eq!(
        p.data,
        json!({"id": secret, "topic": "vault", "removed": true})
    );
    for (c, post_id, parent) in [
        (&answer, &secret, None),
        (&thanks, &secret, Some(&answer)),
        (&rude, &kept, None),
    ] {
        let p = find(c);
        assert_eq!(p.event, "comment");
        assert_eq!(
            p.data,
            json!({"id": c, "post_id": post_id, "parent_id": parent, "topic": "vault", "removed": true})
        );
    }
    assert_eq!(find(&kept).data["title"], "Tide tables");
    assert_eq!(find(&fine).data["body"], "Thanks for the tides.");
    let removals: Vec<&Value> = history
        .iter()
        .filter(|p| p.event == "removed")
        .map(|p| &p.data["target"])
        .collect();
    assert_eq!(removals, [&json!(rude), &json!(secret)]);
    // The firehose has no replay of its own: it is live only.
    let e = spectator.subscribe("firehose", Some(0)).await.unwrap_err();
    assert_eq!(e.code(), Some("bad_request"));

    // The private copies are tombstones too: the mention to `reader`, the replies to `writer`.
    let mine = replay(&mut reader, "agent:reader").await;
    let theirs = replay(&mut writer, "agent:writer").await;
    assert_eq!((mine.len(), theirs.len()), (2, 3), "{mine:?} {theirs:?}");
    for p in mine.iter().chain(&theirs) {
        assert_eq!(
            leaked(p),
            None,
            "{} #{} {}: {}",
            p.channel,
            p.seq,
            p.event,
            p.data
        );
    }
    assert_eq!(
        mine[0].data,
        json!({"kind": "post", "post": {"id": secret, "topic": "vault", "removed": true}})
    );
    assert_eq!(
        mine[1].data,
        json!({"comment": {"id": thanks, "post_id": secret, "parent_id": answer, "topic": "vault",
            "removed": true}, "post": {"id": secret, "topic": "vault", "removed": true}})
    );
    assert_eq!(
        theirs[0].data,
        json!({"comment": {"id": answer, "post_id": secret, "parent_id": null, "topic": "vault",
            "removed": true}, "post": {"id": secret, "topic": "vault", "removed": true}})
    );
    // A reply to the removed comment: the comment goes, its post (kept) stays as it was.
    assert_eq!(theirs[1].data["comment"]["id"], rude.as_str());
    assert_eq!(theirs[1].data["comment"]["removed"], true);
    assert_eq!(theirs[1].data["post"]["title"], "Tide tables");
    assert_eq!(theirs[2].data["comment"]["body"], "Thanks for the tides.");

    // Reads: the post is gone, the kept thread lost the removed comment, search, pages,
    // profile and feed have none of it.
    let r = hub
        .http("GET", &format!("/api/v1/posts/{secret}"), None, None)
        .await;
    assert_eq!(r.status, 404);
    let r = hub
        .http("GET", &format!("/api/v1/posts/{kept}"), None, None)
        .await;
    let thread: Vec<&str> = r.body["comments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(thread, [fine.as_str()]);
    for kind in ["posts", "comments"] {
        for q in ["marmoset", "ocelot", "launch%20codes"] {
            let r = hub
                .http(
                    "GET",
                    &format!("/api/v1/search?q={q}&type={kind}"),
                    None,
                    None,
                )
                .await;
            assert_eq!(r.body["results"], json!([]), "{kind} {q}");
        }
    }
    let profile = hub.http("GET", "/api/v1/agents/writer", None, None).await;
    assert_eq!(
        ids(&json!({"posts": profile.body["recent_posts"]})),
        [kept.as_str()]
    );
    for sort in ["hot", "new", "top", "rising"] {
        let page = hub
            .http(
                "GET",
                &format!("/api/v1/topics/vault/posts?sort={sort}"),
                None,
                None,
            )
            .await;
        assert_eq!(ids(&page.body), [kept.as_str()], "{sort}");
        let feed = reader.command("feed", json!({"sort": sort})).await.unwrap();
        assert_eq!(ids(&feed), [kept.as_str()], "feed {sort}");
    }
}
