//! The Store conformance suite: the same test functions run against SQLite (a fresh file) and
//! PostgreSQL (a fresh database on the machine's server, dropped at the end), so the two
//! backends behind one code path cannot drift apart.

mod common;

use carapace::audit::{self, Break, Entry};
use carapace::auth::keyring::KeyRing;
use carapace::store::{
    Cursor, ItemKind, NewAgent, NewComment, NewKey, NewOwner, NewPost, NewVector, PostFilter, Sort,
    Store, StoreError, VoteTarget,
};
use common::infra::PgDb;
use serde_json::json;
use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;

/// One backend under test and what must be cleaned up after it.
struct Backend {
    store: Store,
    url: String,
    _pg: Option<PgDb>,
    dir: Option<PathBuf>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

async fn sqlite() -> Backend {
    let dir = common::temp_dir("conf");
    let url = format!("sqlite://{}/carapace.db", dir.display());
    Backend {
        store: Store::connect(&url).await.expect("sqlite store"),
        url,
        _pg: None,
        dir: Some(dir),
    }
}

async fn postgres() -> Backend {
    let pg = PgDb::create("conf").await;
    let url = pg.url.clone();
    Backend {
        store: Store::connect(&url).await.expect("postgres store"),
        url,
        _pg: Some(pg),
        dir: None,
    }
}

async fn run<F, Fut>(b: Backend, f: F)
where
    F: FnOnce(Store, String) -> Fut,
    Fut: Future<Output = ()>,
{
    f(b.store.clone(), b.url.clone()).await;
    b.store.close().await;
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::run(super::sqlite().await, super::$name).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::run(super::postgres().await, super::$name).await;
                }
            )*
        }
    };
}

conformance!(
    owners,
    agents,
    keys_at_most_two_active,
    keys_concurrent_inserts_keep_the_limit,
    keys_revoked_as_leaked_say_where,
    audit_chain_appends_and_verifies,
    topics,
    posts_pages_with_cursors,
    comments,
    votes_move_score_by_difference_and_karma,
    dms,
    events_sequence_per_channel,
    events_rollback_leaves_no_hole,
    events_concurrent_appends_get_distinct_contiguous_seqs,
    post_with_event_in_one_round_trip,
    post_with_event_concurrent_and_cancelled_writers,
    post_with_event_and_general_writers_share_the_lock_order,
    bans_refuse_every_write_in_the_topic,
    crossed_channel_locks_fail_as_unavailable,
    prune_keeps_last_n,
    removal_leaves_tombstones_in_history,
    search_ranks_only_the_newest_matches_of_common_words,
    vectors_pending_stored_and_buried,
    index_lock_is_held_by_one,
);

const T0: i64 = 1_700_000_000_000;

async fn owner(s: &Store, n: u32) -> String {
    let id = format!("owner-{n}");
    let mut tx = s.begin().await.unwrap();
    tx.insert_owner(&NewOwner {
        id: &id,
        handle: &format!("owner{n}"),
        email_sealed: &[1, 2, 3, n as u8],
        email_index: &[9, 9, n as u8],
        password_hash: "$argon2id$hash",
        role: "owner",
        created_at: T0,
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    id
}

async fn agent(s: &Store, owner_id: &str, handle: &str) -> String {
    let id = format!("agent-{handle}");
    let mut tx = s.begin().await.unwrap();
    tx.insert_agent(&NewAgent {
        id: &id,
        handle,
        name: &handle.to_uppercase(),
        bio: "bio",
        owner_id,
        scopes: "read post",
        topics: "*",
        created_at: T0,
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    id
}

async fn post(s: &Store, id: &str, topic: &str, author: &str, hot: f64, at: i64) {
    let p = NewPost {
        id,
        topic,
        author_id: author,
        title: &format!("title {id}"),
        body: "body",
        kind: "text",
        url: None,
        hot,
        created_at: at,
    };
    let channel = format!("topic:{topic}");
    let seq = s.insert_post_with_event(&p, &channel, b"{}").await.unwrap();
    assert!(seq.is_some(), "post {id} refused");
}

async fn owners(s: Store, _url: String) {
    let id = owner(&s, 1).await;
    let o = s.owner_by_id(&id).await.unwrap().expect("by id");
    assert_eq!(o.handle, "owner1");
    assert_eq!(o.email_sealed, vec![1, 2, 3, 1]);
    assert_eq!(o.role, "owner");
    assert_eq!(o.created_at, T0);
    let o = s
        .owner_by_email_index(&[9, 9, 1])
        .await
        .unwrap()
        .expect("by index");
    assert_eq!(o.id, id);
    assert!(s.owner_by_email_index(&[0]).await.unwrap().is_none());
    assert!(s.owner_by_id("nobody").await.unwrap().is_none());

    // Same handle, and separately same email index: both conflicts.
    let mut tx = s.begin().await.unwrap();
    let e = tx
        .insert_owner(&NewOwner {
            id: "x1",
            handle: "owner1",
            email_sealed: &[0],
            email_index: &[7],
            password_hash: "h",
            role: "owner",
            created_at: T0,
        })
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
    drop(tx);
    let mut tx = s.begin().await.unwrap();
    let e = tx
        .insert_owner(&NewOwner {
            id: "x2",
            handle: "other",
            email_sealed: &[0],
            email_index: &[9, 9, 1],
            password_hash: "h",
            role: "owner",
            created_at: T0,
        })
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
}

async fn agents(s: Store, _url: String) {
    let o1 = owner(&s, 1).await;
    let o2 = owner(&s, 2).await;
    let b = agent(&s, &o1, "bravo").await;
    agent(&s, &o1, "alpha").await;
    agent(&s, &o2, "charlie").await;

    let a = s
        .agent_by_handle("bravo")
        .await
        .unwrap()
        .expect("by handle");
    assert_eq!(
        (a.id.as_str(), a.owner_handle.as_str(), a.status.as_str()),
        (b.as_str(), "owner1", "active")
    );
    assert_eq!((a.karma, a.last_seen_at), (0, None));
    assert_eq!(s.agent_by_id(&b).await.unwrap().unwrap().handle, "bravo");
    assert!(s.agent_by_handle("zulu").await.unwrap().is_none());

    let mine: Vec<String> = s
        .agents(Some(&o1))
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.handle)
        .collect();
    assert_eq!(mine, ["alpha", "bravo"]);
    let all: Vec<String> = s
        .agents(None)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.handle)
        .collect();
    assert_eq!(all, ["alpha", "bravo", "charlie"]);

    let mut tx = s.begin().await.unwrap();
    tx.update_agent(&b, "Bravo II", "new bio", "read", "general")
        .await
        .unwrap();
    tx.set_agent_status(&b, "suspended", Some(""), Some("spam wave"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    s.touch_agent_seen(&b, T0 + 5).await.unwrap();
    let a = s.agent_by_id(&b).await.unwrap().unwrap();
    assert_eq!(
        (
            a.name.as_str(),
            a.bio.as_str(),
            a.scopes.as_str(),
            a.topics.as_str()
        ),
        ("Bravo II", "new bio", "read", "general")
    );
    assert_eq!(
        (a.status.as_str(), a.last_seen_at),
        ("suspended", Some(T0 + 5))
    );
    assert_eq!(
        (a.owner_hold.as_deref(), a.operator_hold.as_deref()),
        (Some(""), Some("spam wave"))
    );

    let mut tx = s.begin().await.unwrap();
    let e = tx
        .insert_agent(&NewAgent {
            id: "dup",
            handle: "alpha",
            name: "A",
            bio: "",
            owner_id: &o2,
            scopes: "read",
            topics: "*",
            created_at: T0,
        })
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
}

fn key<'a>(id: &'a str, agent: &'a str, hash: &'a [u8], at: i64, exp: i64) -> NewKey<'a> {
    NewKey {
        id,
        agent_id: agent,
        prefix: "cpk_abcd",
        hash,
        created_at: at,
        expires_at: exp,
    }
}

async fn keys_revoked_as_leaked_say_where(s: Store, _url: String) {
    let o = owner(&s, 1).await;
    let a = agent(&s, &o, "alpha").await;
    let mut tx = s.begin().await.unwrap();
    tx.insert_key(&key("k1", &a, &[1; 32], T0, T0 + 1_000_000), 2)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = s.begin().await.unwrap();
    assert!(tx.revoke_leaked_key("k1", "post:p1", T0 + 1).await.unwrap());
    // Already revoked: nothing changes, the first place stays.
    assert!(
        !tx.revoke_leaked_key("k1", "comment:c1", T0 + 2)
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
    let (k, _) = s.key_by_hash(&[1; 32]).await.unwrap().unwrap();
    assert_eq!(k.revoked_at, Some(T0 + 1));
    assert_eq!(k.revoked_reason.as_deref(), Some("leaked"));
    assert_eq!(k.leaked_in.as_deref(), Some("post:p1"));
    assert!(!k.is_active(T0 + 2));
}

async fn keys_at_most_two_active(s: Store, _url: String) {
    let o = owner(&s, 1).await;
    let a = agent(&s, &o, "alpha").await;
    let far = T0 + 1_000_000;
    for (id, h) in [("k1", [1u8; 32]), ("k2", [2u8; 32])] {
        let mut tx = s.begin().await.unwrap();
        tx.insert_key(&key(id, &a, &h, T0 + 1, far), 2)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let mut tx = s.begin().await.unwrap();
    let e = tx
        .insert_key(&key("k3", &a, &[3; 32], T0 + 2, far), 2)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
    drop(tx);

    let mut tx = s.begin().await.unwrap();
    tx.revoke_key(&a, "k1", T0 + 3).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = s.begin().await.unwrap();
    assert!(matches!(
        tx.revoke_key(&a, "k1", T0 + 4).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        tx.revoke_key("agent-x", "k2", T0 + 4).await,
        Err(StoreError::NotFound)
    ));
    drop(tx);

    let mut tx = s.begin().await.unwrap();
    tx.insert_key(&key("k3", &a, &[3; 32], T0 + 5, far), 2)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // An expired key does not count against the limit.
    let b = agent(&s, &o, "bravo").await;
    let mut tx = s.begin().await.unwrap();
    tx.insert_key(&key("b1", &b, &[4; 32], T0, T0 + 10), 2)
        .await
        .unwrap();
    tx.insert_key(&key("b2", &b, &[5; 32], T0 + 20, far), 2)
        .await
        .unwrap();
    tx.insert_key(&key("b3", &b, &[6; 32], T0 + 20, far), 2)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let ks = s.keys_of_agent(&a).await.unwrap();
    let ids: Vec<&str> = ks.iter().map(|k| k.id.as_str()).collect();
    assert_eq!(ids, ["k1", "k2", "k3"]);
    assert_eq!(ks[0].revoked_at, Some(T0 + 3));
    assert!(!ks[0].is_active(T0 + 10) && ks[1].is_active(T0 + 10));

    let (k, ag) = s.key_by_hash(&[2; 32]).await.unwrap().expect("by hash");
    assert_eq!((k.id.as_str(), ag.handle.as_str()), ("k2", "alpha"));
    assert!(s.key_by_hash(&[7; 32]).await.unwrap().is_none());
    s.touch_key("k2", &a, T0 + 99).await.unwrap();
    let k = s.key_by_id("k2").await.unwrap().unwrap();
    assert_eq!((k.last_used_at, k.expires_at), (Some(T0 + 99), far));
    assert_eq!(
        s.agent_by_id(&a).await.unwrap().unwrap().last_seen_at,
        Some(T0 + 99)
    );

    let mut tx = s.begin().await.unwrap();
    tx.revoke_all_keys(&a, T0 + 100).await.unwrap();
    tx.commit().await.unwrap();
    assert!(
        s.keys_of_agent(&a)
            .await
            .unwrap()
            .iter()
            .all(|k| k.revoked_at.is_some())
    );

    // The digest is unique: the same key cannot be stored twice.
    let mut tx = s.begin().await.unwrap();
    let e = tx
        .insert_key(&key("k9", &b, &[5; 32], T0 + 30, far), 9)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
}

/// Two owners rotating at once must not end with three active keys (PostgreSQL runs these
/// transactions truly concurrently; SQLite serialises them).
async fn keys_concurrent_inserts_keep_the_limit(s: Store, _url: String) {
    let o = owner(&s, 1).await;
    let a = agent(&s, &o, "alpha").await;
    let mut tasks = Vec::new();
    // Every writer holds an open transaction before any of them counts the active keys
    // (SQLite has one writer connection, so there they simply queue).
    let parties = if s.dialect() == carapace::store::Dialect::Postgres {
        8
    } else {
        1
    };
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(parties));
    for i in 0..8u8 {
        let (s, a, barrier) = (s.clone(), a.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("k{i}");
            let h = [i; 32];
            let mut tx = s.begin().await?;
            barrier.wait().await;
            tx.insert_key(&key(&id, &a, &h, T0, T0 + 1_000_000), 2)
                .await?;
            tx.commit().await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(ok, 2);
    assert_eq!(s.keys_of_agent(&a).await.unwrap().len(), 2);
}

/// A key ring in a directory of its own, removed on drop.
struct Ring {
    keys: KeyRing,
    dir: PathBuf,
}

impl Ring {
    fn new() -> Ring {
        let dir = common::temp_dir("ring");
        Ring {
            keys: KeyRing::load_or_init(&dir).expect("key ring"),
            dir,
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn audit_chain_appends_and_verifies(s: Store, url: String) {
    let ring = Ring::new();
    let k = &ring.keys;
    let rows = |n: u64| move |v: audit::Verified| v.rows == n;
    assert!(audit::verify(&s, k, None).await.unwrap().is_ok_and(rows(0)));
    for i in 0..5 {
        audit::record(
            &s,
            k,
            Entry {
                actor: "cli",
                action: "test.event",
                subject: &format!("agent:a{i}"),
                detail: json!({"i": i}),
            },
        )
        .await
        .unwrap();
    }
    // Concurrent appends from many writers still make one unbroken chain.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let s = s.clone();
        let dir = ring.dir.clone();
        tasks.push(tokio::spawn(async move {
            let k = KeyRing::load(&dir).unwrap();
            audit::record(
                &s,
                &k,
                Entry {
                    actor: "owner:x",
                    action: "test.concurrent",
                    subject: &format!("agent:c{i}"),
                    detail: json!({}),
                },
            )
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let v = audit::verify(&s, k, None).await.unwrap().unwrap();
    assert_eq!(v.rows, 15);
    let (head_id, head_hash) = v.head.clone().unwrap();
    assert_eq!(head_id, 15);
    let page = s.audit_page(0, 3).await.unwrap();
    assert_eq!(page.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(page[1].prev_hash, page[0].hash);
    assert_eq!(s.audit_page(13, 100).await.unwrap().len(), 2);

    // An entry appended inside a rolled-back transaction leaves no trace.
    let mut tx = s.begin().await.unwrap();
    audit::append(
        &mut tx,
        k,
        Entry {
            actor: "cli",
            action: "x",
            subject: "y",
            detail: json!({}),
        },
        T0,
    )
    .await
    .unwrap();
    drop(tx);
    assert_eq!(audit::verify(&s, k, None).await.unwrap(), Ok(v));

    // Another key (a forger's) does not verify the chain.
    let other = Ring::new();
    assert_eq!(
        audit::verify(&s, &other.keys, None).await.unwrap(),
        Err(Break::Altered(1))
    );

    // A known head: still there, and the wrong hash for it is caught.
    let head = Some((head_id, head_hash.as_str()));
    assert!(
        audit::verify(&s, k, head)
            .await
            .unwrap()
            .is_ok_and(rows(15))
    );
    let wrong = "ab".repeat(32);
    assert_eq!(
        audit::verify(&s, k, Some((15, &wrong))).await.unwrap(),
        Err(Break::HeadMismatch(15))
    );

    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    // Rows cut off the end leave a valid shorter chain: only a head kept elsewhere shows it.
    sqlx::query("DELETE FROM audit_log WHERE id >= 14")
        .execute(&pool)
        .await
        .unwrap();
    assert!(
        audit::verify(&s, k, None)
            .await
            .unwrap()
            .is_ok_and(rows(13))
    );
    assert_eq!(
        audit::verify(&s, k, head).await.unwrap(),
        Err(Break::Truncated { head: 15, last: 13 })
    );

    // Altering a row is found out; so is re-chaining every row with an unkeyed hash, which
    // leaves a chain `verify` refuses until an operator reseals it under the key.
    sqlx::query("UPDATE audit_log SET subject = 'agent:evil' WHERE id = 7")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        audit::verify(&s, k, None).await.unwrap(),
        Err(Break::Altered(7))
    );
    sqlx::query("UPDATE audit_log SET subject = 'agent:c3' WHERE id = 7")
        .execute(&pool)
        .await
        .unwrap();
    common::rechain_audit_unkeyed(&pool, 1).await;
    assert_eq!(
        audit::verify(&s, k, None).await.unwrap(),
        Err(Break::Unkeyed(13))
    );
    // Keyed rows may follow unkeyed ones (an upgraded install), never the other way round.
    for subject in ["agent:a0", "agent:a1"] {
        let e = Entry {
            actor: "cli",
            action: "test.after_upgrade",
            subject,
            detail: json!({}),
        };
        audit::record(&s, k, e).await.unwrap();
    }
    assert_eq!(
        audit::verify(&s, k, None).await.unwrap(),
        Err(Break::Unkeyed(13))
    );
    common::rechain_audit_unkeyed(&pool, 15).await;
    assert_eq!(
        audit::verify(&s, k, None).await.unwrap(),
        Err(Break::Altered(15))
    );
    sqlx::query("DELETE FROM audit_log WHERE id = 15")
        .execute(&pool)
        .await
        .unwrap();

    // A log begun before the keyed chain (unkeyed rows, then keyed ones) is resealed once,
    // recording that it was; a broken one is refused.
    assert_eq!(audit::reseal(&s, k).await.unwrap(), Ok(14));
    assert!(
        audit::verify(&s, k, None)
            .await
            .unwrap()
            .is_ok_and(rows(15))
    );
    let last = s.audit_page(14, 1).await.unwrap();
    assert_eq!(last[0].action, "audit.resealed");
    assert_eq!(last[0].detail, r#"{"rows":14,"unkeyed":13}"#);
    sqlx::query("UPDATE audit_log SET at = at + 1 WHERE id = 2")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(audit::reseal(&s, k).await.unwrap(), Err(Break::Altered(2)));
    assert_eq!(s.audit_page(0, 100).await.unwrap().len(), 15);
    pool.close().await;
}

async fn topics(s: Store, _url: String) {
    let o = owner(&s, 1).await;
    let a = agent(&s, &o, "alpha").await;
    let g = s.topic("general").await.unwrap().expect("seeded");
    assert_eq!((g.creator, g.post_count), (None, 0));
    // Existence is remembered once seen, never assumed before: a miss is not cached.
    assert!(!s.topic_exists("rust").await.unwrap());
    let mut tx = s.begin().await.unwrap();
    tx.insert_topic("rust", "Rust", "crabs", &a, T0)
        .await
        .unwrap();
    tx.insert_topic("zen", "Zen", "", &a, T0 + 10)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(s.topic_exists("rust").await.unwrap());
    assert!(s.topic_exists("rust").await.unwrap());
    let mut tx = s.begin().await.unwrap();
    tx.insert_topic("later", "Later", "", &a, T0).await.unwrap();
    drop(tx);
    assert!(!s.topic_exists("later").await.unwrap());
    let mut tx = s.begin().await.unwrap();
    let e = tx.insert_topic("rust", "R", "", &a, T0).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
    drop(tx);
    post(&s, "p1", "rust", &a, 1.0, T0 + 20).await;
    let t = s.topic("rust").await.unwrap().unwrap();
    assert_eq!(
        (
            t.title.as_str(),
            t.creator.as_deref(),
            t.post_count,
            t.last_activity_at
        ),
        ("Rust", Some("alpha"), 1, T0 + 20)
    );
    let names: Vec<String> = s
        .topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["rust", "zen", "general"]);
    assert!(s.topic("nope").await.unwrap().is_none());
}

/// Reads every page of `sort` and returns the ids in order.
async fn all_pages(s: &Store, sort: Sort, limit: i64) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<Cursor> = None;
    loop {
        let page = s
            .posts_page(&PostFilter::Topic("general"), sort, limit, cursor.as_ref())
            .await
            .unwrap();
        assert!(page.len() as i64 <= limit);
        let Some(last) = page.last() else { break };
        cursor = Some(match sort {
            Sort::Hot => Cursor::Hot(last.hot, last.id.clone()),
            Sort::New => Cursor::New(last.created_at, last.id.clone()),
            Sort::Top => Cursor::Top(last.score, last.id.clone()),
        });
        let n = page.len() as i64;
        out.extend(page.into_iter().map(|p| p.id));
        if n < limit {
            break;
        }
    }
    out
}

async fn posts_pages_with_cursors(s: Store, _url: String) {
    let o = owner(&s, 1).await;
    let a = agent(&s, &o, "alpha").await;
    let b = agent(&s, &o, "bravo").await;
    // 23 posts; ties on every ranking value so the id tie-break is exercised.
    for i in 0..23 {
        let id = format!("p{i:02}");
        let hot = (i % 5) as f64 + 0.5;
        post(&s, &id, "general", &a, hot, T0 + (i / 3) as i64).await;
        let target = s.vote_target(&id).await.unwrap().unwrap();
        let mut tx = s.begin().await.unwrap();
        tx.apply_vote(&b, &target, if i % 2 == 0 { 1 } else { -1 }, |_| hot, T0)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let posts: Vec<_> = {
        let mut v = Vec::new();
        for i in 0..23 {
            v.push(s.post(&format!("p{i:02}")).await.unwrap().unwrap());
        }
        v
    };
    let expect = |key: &dyn Fn(&carapace::store::PostRow) -> (f64, String)| {
        let mut v: Vec<_> = posts.iter().map(|p| (key(p), p.id.clone())).collect();
        v.sort_by(|x, y| y.0.partial_cmp(&x.0).unwrap());
        v.into_iter().map(|(_, id)| id).collect::<Vec<_>>()
    };
    let hot = expect(&|p| (p.hot, p.id.clone()));
    let new = expect(&|p| (p.created_at as f64, p.id.clone()));
    let top = expect(&|p| (p.score as f64, p.id.clone()));
    for limit in [1, 5, 10, 23, 50] {
        assert_eq!(all_pages(&s, Sort::Hot, limit).await, hot, "hot/{limit}");
        assert_eq!(all_pages(&s, Sort::New, limit).await, new, "new/{limit}");
        assert_eq!(all_pages(&s, Sort::Top, limit).await, top, "top/{limit}");
    }
    let p = s.post("p04").await.unwrap().unwrap();
    assert_eq!(
        (
            p.topic.as_str(),
            p.author_handle.as_str(),
            p.author_name.as_str(),
            p.score,
            p.url
        ),
        ("general", "alpha", "ALPHA", 1, None)
    );
    assert_eq!(s.topic("general").await.unwrap().unwrap().post_count, 23);
    let recent = s.recent_posts_by(&a, 4).await.unwrap();
    assert_eq!(recent.len(), 4);
    assert!(
        recent
            .windows(2)
            .all(|w| w[0].created_at >= w[1].created_at)
    );
    assert!(s.recent_posts_by(&b, 4).await.unwrap().is_empty());

    // A link post keeps its URL.
    let mut tx = s.begin().await.unwrap();
    let link = NewPost {
        id: "link",
        topic: "general",
        author_id: &a,
        title: "t",
        body: "",
        kind: "link",
        url: Some("https://example.com/x"),
        hot: 0.0,
        created_at: T0,
    };
    tx.insert_post_with_event(&link, "topic:general", b"{}")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        s.post("link").await.unwrap().unwrap().url.as_deref(),
        Some("https://example.com/x")
    );
}

async fn comments(s: Store, _url: String) {
    let o = owner(&s, 1).await;
    let a = agent(&s, &o, "alpha").await;
    let b = agent(&s, &o, "bravo").await;
    post(&s, "p1", "general", &a, 1.0, T0).await;
    let mut counts = Vec::new();
    for (i, (id, parent, author)) in [("c1", None, &b), ("c2", Some("c1"), &a), ("c3", None, &a)]
        .into_iter()
        .enumerate()
    {
        let mut tx = s.begin().await.unwrap();
        let n = tx
            .insert_comment(
                &NewComment {
                    id,
                    post_id: "p1",
                    parent_id: parent,
                    author_id: author,
                    body: &format!("body {id}"),
                    created_at: T0 + 10 + i as i64,
                },
                "general",
            )
            .await
            .unwrap();
        tx.commit().await.unwrap();
        counts.push(n);
    }
    assert_eq!(counts, [1, 2, 3]);
    let cs = s.comments_of_post("p1").await.unwrap();
    assert_eq!(
        cs.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["c1", "c2", "c3"]
    );
    assert_eq!(cs[1].parent_id.as_deref(), Some("c1"));
    assert_eq!(cs[0].parent_id, None);
    let c = s.comment("c1").await.unwrap().unwrap();
    assert_eq!(
        (c.topic.as_str(), c.author_handle.as_str(), c.body.as_str()),
        ("general", "bravo", "body c1")
    );
    assert_eq!(s.post("p1").await.unwrap().unwrap().comment_count, 3);
    assert_eq!(
        s.topic("general").await.unwrap().unwrap().last_activity_at,
        T0 + 12
    );
    assert!(matches!(
        s.vote_target("c2").await.unwrap(),
        Some(VoteTarget::Comment(_))
    ));
    assert!(matches!(
        s.vote_target("p1").await.unwrap(),
        Some(VoteTarget::Post(_))
    ));
    assert!(s.vote_target("zz").await.unwrap().is_none());
    assert!(s.comments_of_post("zz").await.unwrap().is_empty());
}

async fn votes_move_score_by_difference_and_karma(s: Store, _url: String) {
    let o = owner(&s, 1).await;
    let a = agent(&s, &o, "alpha").await;
    let b = agent(&s, &o, "bravo").await;
    let c = agent(&s, &o, "charlie").await;
    post(&s, "p1", "general", &a, 0.0, T0).await;
    let vote = |voter: String, target: &'static str, value: i64| {
        let s = s.clone();
        async move {
            let t = s.vote_target(target).await.unwrap().unwrap();
            let mut tx = s.begin().await.unwrap();
            let score = tx
                .apply_vote(&voter, &t, value, |score| score as f64 * 10.0, T0)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            score
        }
    };
    let karma = |id: String| {
        let s = s.clone();
        async move { s.agent_by_id(&id).await.unwrap().unwrap().karma }
    };
    assert_eq!(vote(b.clone(), "p1", 1).await, 1);
    assert_eq!(
        vote(b.clone(), "p1", 1).await,
        1,
        "same vote twice counts once"
    );
    assert_eq!(vote(c.clone(), "p1", 1).await, 2);
    assert_eq!(karma(a.clone()).await, 2);
    assert_eq!(vote(b.clone(), "p1", -1).await, 0, "+1 to -1 moves by 2");
    assert_eq!(karma(a.clone()).await, 0);
    assert_eq!(s.post("p1").await.unwrap().unwrap().hot, 0.0);
    assert_eq!(vote(c.clone(), "p1", 0).await, -1, "0 clears the vote");
    assert_eq!(
        vote(c.clone(), "p1", 0).await,
        -1,
        "clearing twice is a no-op"
    );
    assert_eq!(karma(a.clone()).await, -1);
    let p = s.post("p1").await.unwrap().unwrap();
    assert_eq!((p.score, p.hot), (-1, -10.0), "hot follows the score");

    let mut tx = s.begin().await.unwrap();
    tx.insert_comment(
        &NewComment {
            id: "c1",
            post_id: "p1",
            parent_id: None,
            author_id: &b,
            body: "x",
            created_at: T0,
        },
        "general",
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(vote(a.clone(), "c1", -1).await, -1);
    assert_eq!(vote(c.clone(), "c1", 1).await, 0);
    assert_eq!(vote(a.clone(), "c1", 1).await, 2);
    assert_eq!(karma(b.clone()).await, 2);
    assert_eq!(s.comment("c1").await.unwrap().unwrap().score, 2);
    assert_eq!(
        s.post("p1").await.unwrap().unwrap().score,
        -1,
        "comment votes stay on the comment"
    );
}

async fn dms(s: Store, _url: String) {
    let o = owner(&s, 1).await;
    let a = agent(&s, &o, "alpha").await;
    let b = agent(&s, &o, "bravo").await;
    let mut tx = s.begin().await.unwrap();
    tx.insert_dm("d1", &a, &b, &[0, 159, 146, 150, 255], T0)
        .await
        .unwrap();
    tx.insert_dm("d2", &b, &a, b"sealed", T0 + 1).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = s.begin().await.unwrap();
    let e = tx.insert_dm("d1", &a, &b, b"again", T0).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
    drop(tx);
    let mut tx = s.begin().await.unwrap();
    assert!(
        tx.insert_dm("d3", &a, "agent-nobody", b"x", T0)
            .await
            .is_err(),
        "recipient must exist"
    );
}

/// The seqs stored for `channel`, in order.
async fn seqs(s: &Store, channel: &str) -> Vec<u64> {
    let events = s.events_after(channel, 0, 1000).await.unwrap();
    events.iter().map(|e| e.seq).collect()
}

async fn append(s: &Store, channel: &str, n: usize) -> Vec<u64> {
    let mut tx = s.begin().await.unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let data = format!("{{\"n\":{i}}}");
        out.push(
            tx.append_event(channel, "post", data.as_bytes(), false, T0 + i as i64)
                .await
                .unwrap(),
        );
    }
    tx.commit().await.unwrap();
    out
}

async fn events_sequence_per_channel(s: Store, _url: String) {
    assert_eq!(s.last_seq("topic:a").await.unwrap(), 0);
    assert_eq!(s.first_seq("topic:a").await.unwrap(), None);
    assert!(s.events_after("topic:a", 0, 10).await.unwrap().is_empty());
    assert_eq!(append(&s, "topic:a", 3).await, [1, 2, 3]);
    assert_eq!(append(&s, "topic:b", 2).await, [1, 2]);
    assert_eq!(append(&s, "topic:a", 2).await, [4, 5]);
    let mut tx = s.begin().await.unwrap();
    let blob = vec![0u8, 1, 2, 255, 254];
    assert_eq!(
        tx.append_event("agent:x", "dm", &blob, true, T0)
            .await
            .unwrap(),
        1
    );
    tx.commit().await.unwrap();

    assert_eq!(s.last_seq("topic:a").await.unwrap(), 5);
    assert_eq!(s.last_seq("topic:b").await.unwrap(), 2);
    assert_eq!(s.first_seq("topic:a").await.unwrap(), Some(1));
    let ev = s.events_after("topic:a", 2, 2).await.unwrap();
    assert_eq!(ev.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
    assert_eq!(ev[0].channel, "topic:a");
    assert_eq!(ev[0].event, "post");
    assert_eq!(ev[0].data, b"{\"n\":2}");
    assert!(!ev[0].sealed);
    assert_eq!(s.events_after("topic:a", 5, 10).await.unwrap().len(), 0);
    let all = s.events_after("topic:a", 0, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    let dm = s.events_after("agent:x", 0, 10).await.unwrap();
    assert_eq!((dm[0].sealed, dm[0].data.clone()), (true, blob));
}

fn new_post<'a>(id: &'a str, topic: &'a str, author: &'a str, at: i64) -> NewPost<'a> {
    NewPost {
        id,
        topic,
        author_id: author,
        title: "title",
        body: "body",
        kind: "text",
        url: None,
        hot: 1.0,
        created_at: at,
    }
}

async fn post_with_event_in_one_round_trip(s: Store, _url: String) {
    let o = owner(&s, 1).await;
    let a = agent(&s, &o, "alpha").await;
    let b = agent(&s, &o, "beta").await;
    let ch = "topic:general";
    let seq = s
        .insert_post_with_event(&new_post("p1", "general", &a, T0), ch, b"{\"p\":1}")
        .await
        .unwrap();
    assert_eq!(seq, Some(1));
    // It shares the channel's counter with the general path.
    assert_eq!(append(&s, ch, 1).await, [2]);
    assert_eq!(
        s.insert_post_with_event(&new_post("p2", "general", &a, T0 + 5), ch, b"{\"p\":2}")
            .await
            .unwrap(),
        Some(3)
    );
    let ev = s.events_after(ch, 0, 10).await.unwrap();
    assert_eq!(ev.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!((ev[2].event.as_str(), ev[2].sealed), ("post", false));
    assert_eq!(ev[2].data, b"{\"p\":2}");
    let t = s.topic("general").await.unwrap().unwrap();
    assert_eq!((t.post_count, t.last_activity_at), (2, T0 + 5));
    assert_eq!(s.post("p2").await.unwrap().unwrap().author_handle, "alpha");

    // Banned: nothing is written, not even a seq.
    let mut tx = s.begin().await.unwrap();
    tx.upsert_ban("general", &b, None, &a, T0).await.unwrap();
    tx.commit().await.unwrap();
    let banned = new_post("p3", "general", &b, T0 + 10);
    assert_eq!(
        s.insert_post_with_event(&banned, ch, b"{}").await.unwrap(),
        None
    );
    assert!(s.post("p3").await.unwrap().is_none());
    assert_eq!(s.last_seq(ch).await.unwrap(), 3);
    assert_eq!(s.topic("general").await.unwrap().unwrap().post_count, 2);
    // A ban that has run out no longer stops anything.
    let mut tx = s.begin().await.unwrap();
    tx.upsert_ban("general", &b, Some(T0 + 20), &a, T0)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        s.insert_post_with_event(&banned, ch, b"{}").await.unwrap(),
        None
    );
    let late = new_post("p4", "general", &b, T0 + 20);
    assert_eq!(
        s.insert_post_with_event(&late, ch, b"{}").await.unwrap(),
        Some(4)
    );

    // A failed write leaves nothing behind and the next one goes through.
    let dup = new_post("p1", "general", &a, T0 + 30);
    s.insert_post_with_event(&dup, ch, b"{}").await.unwrap_err();
    assert_eq!(s.last_seq(ch).await.unwrap(), 4);
    assert_eq!(s.topic("general").await.unwrap().unwrap().post_count, 3);
    let next = new_post("p5", "general", &a, T0 + 40);
    assert_eq!(
        s.insert_post_with_event(&next, ch, b"{}").await.unwrap(),
        Some(5)
    );
}

/// Writers racing on one channel get contiguous seqs, and writers abandoned mid-write
/// (their caller gone) leave the store usable and the channel without holes.
async fn post_with_event_concurrent_and_cancelled_writers(s: Store, _url: String) {
    let o = owner(&s, 1).await;
    let a = agent(&s, &o, "alpha").await;
    let ch = "topic:general";
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (s, a) = (s.clone(), a.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..25 {
                let id = format!("w{w}-{i}");
                let p = new_post(&id, "general", &a, T0 + i);
                // Every fifth write is abandoned at its first wait.
                if i % 5 == 4 {
                    let _ = tokio::time::timeout(
                        std::time::Duration::ZERO,
                        s.insert_post_with_event(&p, ch, b"{}"),
                    )
                    .await;
                    continue;
                }
                mine.push(
                    s.insert_post_with_event(&p, ch, b"{}")
                        .await
                        .unwrap()
                        .unwrap(),
                );
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let mine = t.await.unwrap();
        assert!(mine.windows(2).all(|w| w[0] < w[1]));
        all.extend(mine);
    }
    // Abandoned writes either committed whole or left nothing: the channel has no hole and
    // every event has its post. On PostgreSQL an abandoned statement may still be running
    // on the server (and commit after a first agreeing read), so the three reads are retried
    // until they agree twice in a row on the same seq (a hole never would).
    let mut reads = (0, Vec::new(), 0);
    let mut agreed_at = None;
    for _ in 0..50 {
        let last = s.last_seq(ch).await.unwrap();
        let stored = seqs(&s, ch).await;
        let posts = s.topic("general").await.unwrap().unwrap().post_count as u64;
        reads = (last, stored, posts);
        let agree = reads.1 == (1..=last).collect::<Vec<_>>() && posts == last;
        if agree && agreed_at == Some(last) {
            break;
        }
        agreed_at = agree.then_some(last);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (last, stored, posts) = reads;
    assert!(last >= 80, "{last}");
    assert_eq!(stored, (1..=last).collect::<Vec<_>>());
    assert_eq!(posts, last);
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 80);
    let p = new_post("after", "general", &a, T0 + 100);
    assert_eq!(
        s.insert_post_with_event(&p, ch, b"{}").await.unwrap(),
        Some(last + 1)
    );
}

/// The one-statement post and a general write on the same topic (here a post with mentions:
/// topic row, then the channel's seq row) racing: both take the topic's locks in the same
/// order, so none of them deadlocks.
async fn post_with_event_and_general_writers_share_the_lock_order(s: Store, _url: String) {
    let o = owner(&s, 1).await;
    let a = agent(&s, &o, "alpha").await;
    let ch = "topic:general";
    let mut tasks = Vec::new();
    for w in 0..6 {
        let (s, a) = (s.clone(), a.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                let id = format!("w{w}-{i}");
                let p = new_post(&id, "general", &a, T0 + i);
                if w % 2 == 0 {
                    s.insert_post_with_event(&p, ch, b"{}").await?;
                } else {
                    // A post with a mention: the same statement in a transaction.
                    let mut tx = s.begin().await?;
                    tx.insert_post_with_event(&p, ch, b"{}").await?;
                    tx.append_event("agent:beta", "mention", b"{}", true, T0)
                        .await?;
                    tx.commit().await?;
                }
            }
            Ok::<(), StoreError>(())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(seqs(&s, ch).await, (1..=240).collect::<Vec<_>>());
    assert_eq!(s.topic("general").await.unwrap().unwrap().post_count, 240);
}

/// Every write in a topic checks the writer's ban in its own statement, whatever its kind:
/// refused with `Banned` and nothing written; elsewhere, or once the ban has run out, it goes.
async fn bans_refuse_every_write_in_the_topic(s: Store, _url: String) {
    let o = owner(&s, 1).await;
    let a = agent(&s, &o, "alpha").await;
    let b = agent(&s, &o, "beta").await;
    let ch = "topic:general";
    post(&s, "p1", "general", &a, 1.0, T0).await;
    let mut tx = s.begin().await.unwrap();
    let c1 = NewComment {
        id: "c1",
        post_id: "p1",
        parent_id: None,
        author_id: &a,
        body: "x",
        created_at: T0,
    };
    tx.insert_comment(&c1, "general").await.unwrap();
    tx.insert_topic("elsewhere", "Elsewhere", "", &a, T0)
        .await
        .unwrap();
    tx.upsert_ban("general", &b, Some(T0 + 20), &a, T0)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let is_ban = |e: StoreError| matches!(&e, StoreError::Banned { topic } if topic == "general");

    let at = T0 + 10;
    assert_eq!(
        s.insert_post_with_event(&new_post("p2", "general", &b, at), ch, b"{}")
            .await
            .unwrap(),
        None
    );
    let mut tx = s.begin().await.unwrap();
    let e = tx
        .insert_post_with_event(&new_post("p3", "general", &b, at), ch, b"{}")
        .await
        .unwrap_err();
    assert!(is_ban(e));
    drop(tx);
    let c2 = NewComment {
        id: "c2",
        author_id: &b,
        created_at: at,
        ..c1
    };
    let mut tx = s.begin().await.unwrap();
    let e = tx.insert_comment(&c2, "general").await.unwrap_err();
    assert!(is_ban(e));
    drop(tx);
    for target in ["p1", "c1"] {
        let t = s.vote_target(target).await.unwrap().unwrap();
        let mut tx = s.begin().await.unwrap();
        let e = tx.apply_vote(&b, &t, 1, |_| 0.0, at).await.unwrap_err();
        assert!(is_ban(e), "vote on {target}");
        drop(tx);
    }
    for id in ["p2", "p3"] {
        assert!(s.post(id).await.unwrap().is_none());
    }
    assert!(s.comment("c2").await.unwrap().is_none());
    let p1 = s.post("p1").await.unwrap().unwrap();
    assert_eq!((p1.score, p1.comment_count), (0, 1));
    assert_eq!(s.comment("c1").await.unwrap().unwrap().score, 0);
    assert_eq!(s.topic("general").await.unwrap().unwrap().post_count, 1);
    assert_eq!(s.last_seq(ch).await.unwrap(), 1, "p1's event only");

    // Elsewhere the banned agent writes as usual.
    let p4 = new_post("p4", "elsewhere", &b, at);
    let seq = s.insert_post_with_event(&p4, "topic:elsewhere", b"{}");
    assert_eq!(seq.await.unwrap(), Some(1));

    // At the ban's end, every kind of write goes through.
    let at = T0 + 20;
    let p2 = new_post("p2", "general", &b, at);
    assert_eq!(
        s.insert_post_with_event(&p2, ch, b"{}").await.unwrap(),
        Some(2)
    );
    let mut tx = s.begin().await.unwrap();
    let seq = tx
        .insert_post_with_event(&new_post("p3", "general", &b, at), ch, b"{}")
        .await
        .unwrap();
    assert_eq!(seq, 3);
    let c2 = NewComment {
        created_at: at,
        ..c2
    };
    assert_eq!(tx.insert_comment(&c2, "general").await.unwrap(), 2);
    let t = s.vote_target("c1").await.unwrap().unwrap();
    assert_eq!(tx.apply_vote(&b, &t, 1, |_| 0.0, at).await.unwrap(), 1);
    tx.commit().await.unwrap();
    assert_eq!(s.topic("general").await.unwrap().unwrap().post_count, 3);
    assert_eq!(s.events_after(ch, 0, 10).await.unwrap()[2].event, "post");
}

async fn events_rollback_leaves_no_hole(s: Store, _url: String) {
    append(&s, "topic:a", 2).await;
    let mut tx = s.begin().await.unwrap();
    assert_eq!(
        tx.append_event("topic:a", "post", b"{}", false, T0)
            .await
            .unwrap(),
        3
    );
    drop(tx);
    assert_eq!(s.last_seq("topic:a").await.unwrap(), 2);
    assert_eq!(append(&s, "topic:a", 1).await, [3]);
    assert_eq!(seqs(&s, "topic:a").await, [1, 2, 3]);
}

/// Writers racing on one channel each get a distinct seq, together exactly 1..=N, and the
/// history holds every one of them: the property the Hub's ordering rests on.
async fn events_concurrent_appends_get_distinct_contiguous_seqs(s: Store, _url: String) {
    const N: u64 = 200;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..N / 8 {
                let mut tx = s.begin().await.unwrap();
                // Another channel in the same transaction, as a post with a mention does.
                let seq = tx
                    .append_event(
                        "topic:race",
                        "post",
                        format!("{w}-{i}").as_bytes(),
                        false,
                        T0,
                    )
                    .await
                    .unwrap();
                tx.append_event(&format!("agent:w{w}"), "mention", b"{}", true, T0)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                mine.push(seq);
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let mine = t.await.unwrap();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "one writer's seqs grow"
        );
        all.extend(mine);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=N).collect::<Vec<_>>());
    let stored = seqs(&s, "topic:race").await;
    assert_eq!(stored, (1..=N).collect::<Vec<_>>());
    let distinct: HashSet<_> = s
        .events_after("topic:race", 0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(distinct.len() as u64, N);
    for w in 0..8 {
        assert_eq!(s.last_seq(&format!("agent:w{w}")).await.unwrap(), N / 8);
    }
}

async fn prune_keeps_last_n(s: Store, _url: String) {
    append(&s, "topic:a", 30).await; // created_at T0 .. T0+29
    append(&s, "topic:b", 5).await;
    // Nothing is old enough: nothing goes.
    assert_eq!(s.prune_events(10, T0 - 1).await.unwrap(), 0);
    // Old enough, but only beyond the last 10 of each channel.
    assert_eq!(s.prune_events(10, T0 + 1000).await.unwrap(), 20);
    assert_eq!(s.first_seq("topic:a").await.unwrap(), Some(21));
    assert_eq!(s.first_seq("topic:b").await.unwrap(), Some(1));
    assert_eq!(s.last_seq("topic:a").await.unwrap(), 30);
    // The age cutoff holds too: only events older than it go.
    assert_eq!(s.prune_events(2, T0 + 25).await.unwrap(), 5 + 3);
    assert_eq!(s.first_seq("topic:a").await.unwrap(), Some(26));
    assert_eq!(s.first_seq("topic:b").await.unwrap(), Some(4));
    // New events keep counting from where the channel was.
    assert_eq!(append(&s, "topic:a", 1).await, [31]);
}

/// Two writers taking two channels' counters in opposite orders: PostgreSQL picks one as
/// the deadlock victim and rolls it back whole; that must read as `Unavailable` (try
/// again), never as an internal error. SQLite's single writer never interleaves them.
async fn crossed_channel_locks_fail_as_unavailable(s: Store, _url: String) {
    let crossing = s.dialect() == carapace::store::Dialect::Postgres;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(if crossing { 2 } else { 1 }));
    let mut tasks = Vec::new();
    for (first, second) in [("agent:x", "agent:y"), ("agent:y", "agent:x")] {
        let (s, barrier) = (s.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut tx = s.begin().await?;
            tx.append_event(first, "mention", b"{}", true, T0).await?;
            barrier.wait().await;
            tx.append_event(second, "mention", b"{}", true, T0).await?;
            tx.commit().await
        }));
    }
    let results: Vec<_> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    for r in &results {
        assert!(
            matches!(r, Ok(()) | Err(StoreError::Unavailable(_))),
            "{r:?}"
        );
    }
    if crossing {
        assert_eq!(ok, 1, "exactly one deadlock victim");
    } else {
        assert_eq!(ok, 2);
    }
    // The victim left nothing behind: each counter moved once per committed writer.
    assert_eq!(s.last_seq("agent:x").await.unwrap(), ok as u64);
    assert_eq!(s.last_seq("agent:y").await.unwrap(), ok as u64);
    assert_eq!(s.events_after("agent:x", 0, 10).await.unwrap().len(), ok);
}

async fn sqlite_page_size(url: &str) -> i64 {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut c = sqlx::AnyConnection::connect(url).await.expect("open");
    let size = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&mut c)
        .await
        .expect("page_size");
    c.close().await.ok();
    size
}

/// SQLite only: a new file gets 2,048-byte pages (less WAL per post); a file made with
/// 4,096-byte pages before keeps them, and the store works on it all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_new_files_get_small_pages_and_old_files_keep_theirs() {
    let b = sqlite().await;
    assert_eq!(sqlite_page_size(&b.url).await, 2048);
    b.store.close().await;

    let dir = common::temp_dir("oldpages");
    let url = format!("sqlite://{}/carapace.db", dir.display());
    {
        use sqlx::{Connection, Executor};
        sqlx::any::install_default_drivers();
        let mut c = sqlx::AnyConnection::connect(&format!("{url}?mode=rwc"))
            .await
            .expect("create");
        c.execute("PRAGMA page_size=4096; PRAGMA journal_mode=WAL; CREATE TABLE made_before (a)")
            .await
            .expect("old file");
        c.close().await.ok();
    }
    let old = Backend {
        store: Store::connect(&url).await.expect("store on the old file"),
        url: url.clone(),
        _pg: None,
        dir: Some(dir),
    };
    assert_eq!(sqlite_page_size(&url).await, 4096);
    run(old, post_with_event_in_one_round_trip).await;
}

/// SQLite only: posts reach the database file itself within about a second, copied from the
/// WAL by the store's own checkpoints; no commit does it (the automatic checkpoint waits for
/// 20,000 frames).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wal_is_copied_into_the_database_file_beside_the_writer() {
    use sqlx::Connection;
    let b = sqlite().await;
    let s = b.store.clone();
    let o = owner(&s, 1).await;
    let a = agent(&s, &o, "ckpt").await;
    for i in 0..50 {
        post(&s, &format!("c{i:02}"), "general", &a, 1.0, T0 + i).await;
    }
    let dir = b.dir.clone().expect("sqlite dir");
    let copy = dir.join("copy.db");
    let mut found = 0i64;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        // The database file alone, without its WAL: what the checkpoints have copied so far.
        for f in ["copy.db", "copy.db-wal", "copy.db-shm"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        std::fs::copy(dir.join("carapace.db"), &copy).expect("copy");
        let url = format!("sqlite://{}", copy.display());
        let Ok(mut c) = sqlx::AnyConnection::connect(&url).await else {
            continue;
        };
        // A copy taken mid-checkpoint may be torn; the next one is not.
        found = sqlx::query_scalar("SELECT COUNT(*) FROM posts WHERE id LIKE 'c%'")
            .fetch_one(&mut c)
            .await
            .unwrap_or(0);
        c.close().await.ok();
        if found == 50 {
            break;
        }
    }
    assert_eq!(found, 50, "every post reached the database file");
    run(b, |_, _| async {}).await;
}

/// A post with its `post` event as the service writes them: the event's data is the post,
/// written at the post's `created_at`.
async fn post_with_text(s: &Store, id: &str, author: &str, title: &str, body: &str, at: i64) {
    let url = format!("https://example.com/{id}");
    let p = NewPost {
        title,
        body,
        kind: "link",
        url: Some(&url),
        ..new_post(id, "general", author, at)
    };
    let data = json!({"id": id, "topic": "general", "author": {"handle": "alpha"},
        "title": title, "body": body, "kind": "link", "url": url});
    s.insert_post_with_event(&p, "topic:general", data.to_string().as_bytes())
        .await
        .unwrap()
        .unwrap();
}

/// A comment with its `comment` event, written together as the service does.
async fn comment_with_text(s: &Store, id: &str, post_id: &str, author: &str, body: &str, at: i64) {
    let mut tx = s.begin().await.unwrap();
    tx.insert_comment(
        &NewComment {
            id,
            post_id,
            parent_id: None,
            author_id: author,
            body,
            created_at: at,
        },
        "general",
    )
    .await
    .unwrap();
    let data = json!({"id": id, "post_id": post_id, "parent_id": null, "topic": "general",
        "author": {"handle": "bravo"}, "body": body});
    tx.append_event(
        "topic:general",
        "comment",
        data.to_string().as_bytes(),
        false,
        at,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

fn event_json(e: &carapace::store::EventRow) -> serde_json::Value {
    serde_json::from_slice(&e.data).unwrap()
}

/// Removal turns the removed content's events into tombstones in the same transaction: the
/// same seq and kind, only ids and `removed: true`. A removed post takes its comments'
/// events with it; everything else in the history stays as it was, and no read (search,
/// pages, profiles, threads) finds the removed text.
async fn removal_leaves_tombstones_in_history(s: Store, url: String) {
    use carapace::store::SearchKind;
    let o = owner(&s, 1).await;
    let a = agent(&s, &o, "alpha").await;
    let b = agent(&s, &o, "bravo").await;
    let ch = "topic:general";
    post_with_text(
        &s,
        "p1",
        &a,
        "Zanzibar vault code",
        "The code is quokka 7741.",
        T0,
    )
    .await;
    // Another post and comment written at the very same instant: candidates, not matches.
    post_with_text(&s, "p2", &a, "Tide tables", "High water at six.", T0).await;
    comment_with_text(&s, "c1", "p1", &b, "I also know the quokka code.", T0 + 1).await;
    comment_with_text(&s, "c2", "p2", &b, "Thanks for the tides.", T0 + 1).await;
    comment_with_text(&s, "c3", "p2", &b, "Wombat insults here.", T0 + 2).await;
    let before = s.events_after(ch, 0, 100).await.unwrap();
    assert_eq!(before.len(), 5);
    assert!(
        !s.search(SearchKind::Posts, "quokka", 10)
            .await
            .unwrap()
            .is_empty()
    );

    // A comment alone.
    let c3 = s.comment("c3").await.unwrap().unwrap();
    let mut tx = s.begin().await.unwrap();
    let n = tx
        .remove(&VoteTarget::Comment(c3), ch, T0 + 10)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(n, 1);

    // A post: its event and its comments' events.
    let p1 = s.post("p1").await.unwrap().unwrap();
    let mut tx = s.begin().await.unwrap();
    let n = tx.remove(&VoteTarget::Post(p1), ch, T0 + 11).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(n, 2);

    let after = s.events_after(ch, 0, 100).await.unwrap();
    let shape = |v: &[carapace::store::EventRow]| {
        v.iter()
            .map(|e| (e.seq, e.event.clone(), e.sealed))
            .collect::<Vec<_>>()
    };
    assert_eq!(shape(&after), shape(&before), "same seqs, kinds: no gap");
    let by_id = |id: &str| {
        after
            .iter()
            .find(|e| event_json(e)["id"] == id)
            .unwrap_or_else(|| panic!("no event for {id}"))
    };
    assert_eq!(
        event_json(by_id("p1")),
        json!({"id": "p1", "topic": "general", "removed": true})
    );
    for (c, p) in [("c1", "p1"), ("c3", "p2")] {
        assert_eq!(
            event_json(by_id(c)),
            json!({"id": c, "post_id": p, "parent_id": null, "topic": "general", "removed": true})
        );
    }
    // Nothing of the removed text is left anywhere in the history.
    for e in &after {
        let text = String::from_utf8(e.data.clone()).unwrap();
        for secret in ["Zanzibar", "quokka", "Wombat", "example.com/p1"] {
            assert!(
                !text.contains(secret),
                "{secret} left in #{}: {text}",
                e.seq
            );
        }
    }
    // The rest is untouched.
    for (i, id) in [(1, "p2"), (3, "c2")] {
        assert_eq!(after[i].data, before[i].data, "{id} unchanged");
    }
    assert_eq!(event_json(by_id("p2"))["title"], "Tide tables");

    // No read finds the removed text.
    for (kind, q) in [
        (SearchKind::Posts, "quokka"),
        (SearchKind::Posts, "Zanzibar"),
        (SearchKind::Comments, "quokka"),
        (SearchKind::Comments, "Wombat"),
    ] {
        assert!(s.search(kind, q, 10).await.unwrap().is_empty(), "{q}");
    }
    assert_eq!(
        s.search(SearchKind::Posts, "tides", 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(s.post("p1").await.unwrap().is_none());
    assert!(s.comment("c1").await.unwrap().is_none());
    assert!(s.comment("c3").await.unwrap().is_none());
    // A page of search results is read in one query: the visible ones only.
    let posts = s.posts_by_ids(&["p1", "p2", "zz"]).await.unwrap();
    assert_eq!(
        posts.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["p2"]
    );
    let comments = s.comments_by_ids(&["c1", "c2", "c3"]).await.unwrap();
    assert_eq!(
        comments.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["c2"]
    );
    assert!(s.posts_by_ids(&[]).await.unwrap().is_empty());
    let listed = |v: Vec<carapace::store::PostRow>| v.into_iter().map(|p| p.id).collect::<Vec<_>>();
    for sort in [Sort::Hot, Sort::New, Sort::Top] {
        let page = s
            .posts_page(&PostFilter::Topic("general"), sort, 10, None)
            .await
            .unwrap();
        assert_eq!(listed(page), ["p2"]);
    }
    let mut tx = s.begin().await.unwrap();
    tx.set_membership(&b, "general", true, T0).await.unwrap();
    tx.commit().await.unwrap();
    let feed = s
        .posts_page(&PostFilter::Feed(&b), Sort::New, 10, None)
        .await
        .unwrap();
    assert_eq!(listed(feed), ["p2"]);
    let recent = s
        .recent_posts(&PostFilter::Topic("general"), 0, 10)
        .await
        .unwrap();
    assert_eq!(listed(recent), ["p2"]);
    assert_eq!(listed(s.recent_posts_by(&a, 10).await.unwrap()), ["p2"]);
    let thread: Vec<String> = s
        .comments_of_post("p2")
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(thread, ["c2"]);
    // The full-text index itself holds nothing of removed content, not only the searches:
    // SQLite deletes it from FTS5, PostgreSQL's GIN indexes cover only rows not removed.
    use sqlx::Row;
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let sql = match s.dialect() {
        // Of p1, p2 and c1 (under p1), c2, c3: only p2 and c2.
        carapace::store::Dialect::Sqlite => {
            "SELECT (SELECT COUNT(*) FROM posts_fts WHERE id IN ('p1', 'p2')) + \
             (SELECT COUNT(*) FROM comments_fts WHERE id IN ('c1', 'c2', 'c3')) AS n"
        }
        carapace::store::Dialect::Postgres => {
            "SELECT COUNT(*) AS n FROM pg_indexes WHERE indexname IN ('posts_tsv', 'comments_tsv') \
             AND indexdef LIKE '%WHERE (removed_at IS NULL)'"
        }
    };
    let n: i64 = sqlx::query(sql).fetch_one(&pool).await.unwrap().get("n");
    assert_eq!(n, 2, "the index leaves removed rows out");
    pool.close().await;
    // No comment lands under the removed post, even from a writer that found it before.
    let mut tx = s.begin().await.unwrap();
    let late = NewComment {
        id: "c4",
        post_id: "p1",
        parent_id: None,
        author_id: &b,
        body: "quokka again",
        created_at: T0 + 20,
    };
    assert!(matches!(
        tx.insert_comment(&late, "general").await,
        Err(StoreError::NotFound)
    ));
    drop(tx);
    assert!(s.comment("c4").await.unwrap().is_none());
    // What the service's search for private copies reads: a removed comment's author, and
    // the events written at given instants.
    assert_eq!(
        s.comment_author_handle("c3").await.unwrap().as_deref(),
        Some("bravo")
    );
    assert_eq!(s.comment_author_handle("zz").await.unwrap(), None);
    let mut tx = s.begin().await.unwrap();
    let at = |v: Vec<carapace::store::EventRow>| v.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(
        at(tx.events_written_at(ch, &[T0 + 1]).await.unwrap()),
        [3, 4]
    );
    assert_eq!(
        at(tx.events_written_at(ch, &[T0 + 2, T0]).await.unwrap()),
        [1, 2, 5]
    );
    assert!(tx.events_written_at(ch, &[]).await.unwrap().is_empty());
    tx.commit().await.unwrap();
}

fn vector(id: &str, kind: ItemKind, author: &str, model: &str, fill: i8) -> NewVector {
    NewVector {
        item_id: id.into(),
        kind,
        author_id: author.into(),
        model: model.into(),
        scale: 0.25,
        data: vec![fill, -128, 127, 0],
        created_at: T0,
    }
}

async fn pending_ids(s: &Store, kind: ItemKind, model: &str, after: &str) -> Vec<String> {
    s.pending_items(kind, model, after, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect()
}

/// A full-text search ranks at most `RANKED_MATCHES` matches, the newest: a query of common
/// words scores that many items, not every item holding them.
async fn search_ranks_only_the_newest_matches_of_common_words(s: Store, _url: String) {
    use carapace::store::{RANKED_MATCHES, SearchKind};
    let o = owner(&s, 1).await;
    let a = agent(&s, &o, "alpha").await;
    let found = |q: &'static str| {
        let s = s.clone();
        async move {
            let hits = s.search(SearchKind::Posts, q, 10).await.unwrap();
            hits.into_iter().map(|h| h.id).collect::<Vec<_>>()
        }
    };
    // The oldest post holds the word most often: the best match while it is ranked.
    let oldest = "Albatross albatross";
    post_with_text(&s, "p0000", &a, oldest, "albatross petrel albatross", T0).await;
    post_with_text(&s, "p0001", &a, "Sea birds", "an albatross glides", T0 + 1).await;
    assert_eq!(found("albatross").await, ["p0000", "p0001"]);
    for i in 2..=RANKED_MATCHES {
        let id = format!("p{i:04}");
        post_with_text(&s, &id, &a, "Sea birds", "an albatross glides", T0 + i).await;
    }
    // RANKED_MATCHES + 1 matches: the oldest is not among the newest RANKED_MATCHES.
    let hits = found("albatross").await;
    assert_eq!(hits.len(), 10);
    assert!(!hits.contains(&"p0000".to_string()), "{hits:?}");
    // Its rarer words still find it.
    assert_eq!(found("albatross petrel").await, ["p0000"]);
}

/// The vectors of semantic search: what lacks one (by model, in id order, from a floor),
/// the one write path (upsert, never over a removed item), the refresh feed by
/// `indexed_at`, an author's recent vectors, and removal leaving tombstones that take the
/// post's comments with it.
async fn vectors_pending_stored_and_buried(s: Store, _url: String) {
    let o = owner(&s, 1).await;
    let a = agent(&s, &o, "alpha").await;
    let b = agent(&s, &o, "bravo").await;
    post_with_text(&s, "p1", &a, "Hermit crabs", "They swap shells.", T0).await;
    post_with_text(&s, "p2", &a, "Tides", "High water at six.", T0 + 1).await;
    post_with_text(&s, "p3", &b, "Kelp", "Forests under the sea.", T0 + 2).await;
    comment_with_text(&s, "c1", "p1", &b, "Bigger shells each time.", T0 + 3).await;
    comment_with_text(&s, "c2", "p2", &a, "And at eighteen.", T0 + 4).await;
    let m = "model-a";
    assert_eq!(s.pending_count(m).await.unwrap(), 5);
    assert_eq!(s.indexed_count(m).await.unwrap(), 0);
    let items = s.pending_items(ItemKind::Post, m, "", 10).await.unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(
        (
            items[0].id.as_str(),
            items[0].text.as_str(),
            items[0].author_id.as_str()
        ),
        ("p1", "Hermit crabs\nThey swap shells.", a.as_str())
    );
    assert_eq!(items[0].created_at, T0);
    assert_eq!(
        pending_ids(&s, ItemKind::Comment, m, "").await,
        ["c1", "c2"]
    );
    let c1 = s
        .item_to_embed(ItemKind::Comment, "c1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c1.text, "Bigger shells each time.");

    let n = s
        .put_vectors(
            &[
                vector("p1", ItemKind::Post, &a, m, 5),
                vector("c1", ItemKind::Comment, &b, m, 6),
            ],
            T0 + 100,
        )
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(s.pending_count(m).await.unwrap(), 3);
    assert_eq!(s.indexed_count(m).await.unwrap(), 2);
    assert_eq!(pending_ids(&s, ItemKind::Post, m, "").await, ["p2", "p3"]);
    assert_eq!(pending_ids(&s, ItemKind::Post, m, "p2").await, ["p3"]);
    assert_eq!(pending_ids(&s, ItemKind::Comment, m, "").await, ["c2"]);
    // Another model's vectors are not this model's.
    assert_eq!(s.pending_count("model-b").await.unwrap(), 5);

    let rows = s.vectors_since(m, (i64::MIN, ""), 10).await.unwrap();
    assert_eq!(rows.len(), 2);
    let p1 = rows.iter().find(|r| r.item_id == "p1").unwrap();
    assert_eq!(p1.data, vec![5, -128, 127, 0]);
    assert_eq!(
        (p1.scale, p1.kind, p1.removed),
        (0.25, ItemKind::Post, false)
    );
    assert_eq!((p1.indexed_at, p1.created_at), (T0 + 100, T0));
    let after_first = (rows[0].indexed_at, rows[0].item_id.as_str());
    assert_eq!(s.vectors_since(m, after_first, 10).await.unwrap().len(), 1);
    assert!(
        s.vectors_since(m, (T0 + 100, "zz"), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.vectors_since("model-b", (i64::MIN, ""), 10)
            .await
            .unwrap()
            .is_empty()
    );

    let recent = s.recent_vectors_of(&a, m, T0, 50).await.unwrap();
    assert_eq!(
        recent
            .iter()
            .map(|r| r.item_id.as_str())
            .collect::<Vec<_>>(),
        ["p1"]
    );
    assert!(
        s.recent_vectors_of(&a, m, T0 + 1, 50)
            .await
            .unwrap()
            .is_empty()
    );

    // An upsert replaces the vector.
    let n = s
        .put_vectors(&[vector("p1", ItemKind::Post, &a, m, 9)], T0 + 200)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let rows = s.vectors_since(m, (T0 + 150, ""), 10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].data[0], 9);

    // Removing p1 buries its vector and its comment's.
    let post = s.post("p1").await.unwrap().unwrap();
    let mut tx = s.begin().await.unwrap();
    tx.remove(&VoteTarget::Post(post), "topic:general", T0 + 300)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let rows = s.vectors_since(m, (T0 + 250, ""), 10).await.unwrap();
    assert_eq!(rows.len(), 2, "both tombstones are in the refresh feed");
    assert!(rows.iter().all(|r| r.removed && r.data.is_empty()));
    assert_eq!(s.indexed_count(m).await.unwrap(), 0);
    assert!(s.recent_vectors_of(&a, m, T0, 50).await.unwrap().is_empty());
    // p2, p3 and c2 are pending; nothing of the removed post is.
    assert_eq!(s.pending_count(m).await.unwrap(), 3);
    assert!(
        s.item_to_embed(ItemKind::Post, "p1")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.item_to_embed(ItemKind::Comment, "c1")
            .await
            .unwrap()
            .is_none()
    );
    // A vector of a removed item is never written back, nor one of an unknown item.
    let n = s
        .put_vectors(
            &[
                vector("p1", ItemKind::Post, &a, m, 1),
                vector("c1", ItemKind::Comment, &b, m, 1),
                vector("nope", ItemKind::Post, &a, m, 1),
            ],
            T0 + 400,
        )
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert!(
        s.vectors_since(m, (T0 + 350, ""), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // A removed comment alone.
    s.put_vectors(&[vector("c2", ItemKind::Comment, &a, m, 2)], T0 + 500)
        .await
        .unwrap();
    let c2 = s.comment("c2").await.unwrap().unwrap();
    let mut tx = s.begin().await.unwrap();
    tx.remove(&VoteTarget::Comment(c2), "topic:general", T0 + 600)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let rows = s.vectors_since(m, (T0 + 550, ""), 10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].removed);
    assert_eq!(s.pending_count(m).await.unwrap(), 2);
}

/// One indexer at a time: on PostgreSQL the advisory lock is held by one connection until
/// it goes; SQLite (one replica per file) always grants it.
async fn index_lock_is_held_by_one(s: Store, url: String) {
    let mut first = s
        .try_index_lock()
        .await
        .unwrap()
        .expect("the first takes it");
    assert!(first.held().await);
    if url.starts_with("sqlite") {
        assert!(s.try_index_lock().await.unwrap().is_some());
        return;
    }
    // Another replica's store: a pool of its own.
    let other = Store::connect(&url).await.unwrap();
    assert!(other.try_index_lock().await.unwrap().is_none());
    drop(first);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(mut l) = other.try_index_lock().await.unwrap() {
            assert!(l.held().await);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lock was never released"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    other.close().await;
}
