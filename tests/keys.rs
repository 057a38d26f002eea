//! The secrets and the database on disk: owner-only modes whatever the umask, and every key,
//! the blind-index key included, rotating under live replicas.

mod common;

use common::infra::Replica;
use common::temp_dir;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The real binary under umask 000, once on a data dir it creates and once on one left with
/// loose modes (the dir 0777, an empty database file 0666): the data dir, the database, its
/// WAL and shared-memory files, the secrets dir and every key end up the owner's alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_owner_only_whatever_the_umask() {
    let root = temp_dir("modes");
    let loose = root.join("loose");
    std::fs::create_dir(&loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o777)).unwrap();
    let db = loose.join("carapace.db");
    std::fs::File::create(&db).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o666)).unwrap();

    for id in ["fresh", "loose"] {
        let r = Replica::start_with_umask(id, &root, &[], "000");
        // A write, so the WAL and shared-memory files exist while the replica runs.
        carapace_client::owner_token(
            &r.base(),
            &format!("own_{id}"),
            &format!("{id}@example.com"),
            common::ADMIN_PASSWORD,
        )
        .await
        .expect("signup and login");
        let data = root.join(id);
        let secrets = data.join("secrets");
        let mut checked = vec![
            (data.clone(), 0o700),
            (data.join("carapace.db"), 0o600),
            (data.join("carapace.db-wal"), 0o600),
            (data.join("carapace.db-shm"), 0o600),
            (secrets.clone(), 0o700),
        ];
        let keys: Vec<_> = std::fs::read_dir(&secrets)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(keys.len(), 3, "signing, data and blind-index key: {keys:?}");
        checked.extend(keys.into_iter().map(|k| (k, 0o600)));
        for (path, want) in checked {
            assert_eq!(
                mode(&path),
                want,
                "{} is {:o}, not {want:o}",
                path.display(),
                mode(&path)
            );
        }
        if id == "loose" {
            assert!(
                r.logs().contains("tightened"),
                "the loose modes found are logged"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}

use carapace::auth::keyring::KeyRing;
use carapace::auth::sealed;
use carapace::store::{SealedKind, Store};
use carapace_client::{self as client, Client, ClientError};
use common::infra::Cluster;
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);
const PW: &str = common::ADMIN_PASSWORD;

/// Runs a `carapace` command to its end; its stdout, or its stderr when it failed.
async fn run(cmd: std::process::Command) -> Result<String, String> {
    let out = tokio::process::Command::from(cmd)
        .output()
        .await
        .expect("carapace runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(format!("{}{}", text(&out.stdout), text(&out.stderr)))
    }
}

async fn login(base: &str, email: &str) -> bool {
    client::http(
        base,
        "POST",
        "/api/v1/owners/login",
        None,
        Some(&json!({"email": email, "password": PW})),
    )
    .await
    .is_ok_and(|r| r.status == 200)
}

async fn verify(cl: &Cluster, head: Option<&str>) -> Result<String, String> {
    let mut cmd = cl.replicas[0].admin_command();
    cmd.args(["audit", "verify"]);
    if let Some(h) = head {
        cmd.args(["--head", h]);
    }
    run(cmd).await
}

/// The `ID:HASH` following `after` in a command's output.
fn head_in(out: &str, after: &str) -> String {
    let rest = &out[out
        .find(after)
        .unwrap_or_else(|| panic!("{after} in {out}"))
        + after.len()..];
    rest.split_whitespace().next().unwrap().to_string()
}

/// An agent listening on its private channel on one replica, following to the next one
/// (resuming with `since`) when its replica drains with 1012.
struct Listener {
    handle: String,
    token: String,
    at: usize,
    client: Client,
}

impl Listener {
    async fn start(cl: &Cluster, at: usize, handle: &str, token: &str) -> Listener {
        let mut client = cl.replicas[at].connect(Some(token)).await;
        client
            .subscribe(&format!("agent:{handle}"), None)
            .await
            .unwrap();
        Listener {
            handle: handle.into(),
            token: token.into(),
            at,
            client,
        }
    }

    async fn expect_dm(&mut self, cl: &Cluster, body: &str) {
        let channel = format!("agent:{}", self.handle);
        loop {
            match self.client.next_push(WAIT).await {
                Ok(p) if p.event == "dm" && p.data["body"] == body => return,
                Ok(_) => {}
                Err(ClientError::Closed { code, .. }) => {
                    assert_eq!(code, Some(1012), "only a draining replica closes a session");
                    let since = self.client.last_seq.get(&channel).copied().unwrap_or(0);
                    self.at = (self.at + 1) % cl.replicas.len();
                    self.client = Client::connect(&cl.replicas[self.at].ws, Some(&self.token))
                        .await
                        .expect("the token still verifies on another replica");
                    self.client.subscribe(&channel, Some(since)).await.unwrap();
                }
                Err(e) => panic!("waiting for the dm '{body}': {e}"),
            }
        }
    }
}

/// At one step of the runbook, through every replica: the owner logs in, and a DM sealed
/// there reaches the listener (wherever it lives now).
async fn every_replica_works(cl: &Cluster, step: &str, ann: &str, bob: &mut Listener) {
    for (i, r) in cl.replicas.iter().enumerate() {
        assert!(
            login(&r.base, "alice@example.com").await,
            "{step}: login on r{i}"
        );
        let body = format!("{step} via r{i}");
        let mut c = r.connect(Some(ann)).await;
        c.command("dm", json!({"to": bob.handle, "body": body}))
            .await
            .unwrap_or_else(|e| panic!("{step}: dm on r{i}: {e}"));
        c.close().await;
        bob.expect_dm(cl, &body).await;
    }
}

/// The rotation runbook of docs/OPERATIONS.md, end to end, on three replicas with live
/// sessions: new keys generated and rolled out, the blind-index key rotated while owners log
/// in, sealed data re-sealed, the old keys deleted and every replica restarted. At every step
/// owners log in and DMs flow; at the end DMs from before and after open, owners' emails
/// open, the audit chain verifies, and a head logged before the rotation is still checkable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_key_rotates_under_three_live_replicas() {
    let mut cl = Cluster::start(3, |_| {}).await;
    cl.ready().await;
    let secrets = cl.secrets.clone();
    let owner = client::owner_token(&cl.replicas[0].base, "alice", "alice@example.com", PW)
        .await
        .expect("owner");
    let scopes = json!(["read", "post", "dm"]);
    let (ann_key, ann) = cl.replicas[0]
        .agent_for(&owner, "ann", scopes.clone())
        .await;
    let (bob_key, bob_tok) = cl.replicas[0].agent_for(&owner, "bob", scopes).await;
    let mut bob = Listener::start(&cl, 2, "bob", &bob_tok).await;
    every_replica_works(&cl, "before", &ann, &mut bob).await;
    let first_keys: Vec<_> = std::fs::read_dir(&secrets)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(first_keys.len(), 3);

    // 1. New signing, data and blind-index keys; every replica restarted onto them in turn.
    let mut generate = std::process::Command::new(env!("CARGO_BIN_EXE_carapace"));
    generate.args(["keys", "generate", "--dir"]).arg(&secrets);
    let out = run(generate).await.expect("keys generate");
    assert_eq!(out.lines().count(), 3, "{out}");
    for i in 0..3 {
        cl.restart(i).await;
        every_replica_works(&cl, &format!("rolled r{i}"), &ann, &mut bob).await;
    }
    let ann_new = client::agent_token(&cl.replicas[1].base, &ann_key)
        .await
        .unwrap();
    every_replica_works(&cl, "new token", &ann_new, &mut bob).await;

    // 2. The blind-index key rotates while owners log in on every replica.
    let logged_before = head_in(&verify(&cl, None).await.expect("verify"), "head ");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bases: Vec<String> = cl.replicas.iter().map(|r| r.base.clone()).collect();
    let logins = tokio::spawn({
        let stop = stop.clone();
        async move {
            let (mut ok, mut failed) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for b in &bases {
                    if login(b, "alice@example.com").await {
                        ok += 1;
                    } else {
                        failed += 1;
                    }
                }
            }
            (ok, failed)
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rotated = run(cl.replicas[0].keys_command("rotate-index"))
        .await
        .expect("rotate-index");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = logins.await.unwrap();
    assert!(
        ok > 3 && failed == 0,
        "logins during the rotation: {ok} ok, {failed} failed"
    );
    assert!(rotated.contains("1 owners re-indexed"), "{rotated}");
    let old_head = head_in(&rotated, "(recorded in the chain): ");
    // A new owner signs up under the new key on a replica started before the rotation.
    client::owner_token(&cl.replicas[1].base, "carol", "carol@example.com", PW)
        .await
        .expect("signup after the rotation");
    every_replica_works(&cl, "rotated", &ann_new, &mut bob).await;
    for r in &cl.replicas {
        let mine = r
            .http("GET", "/api/v1/owners/me/agents", Some(&owner), None)
            .await;
        assert_eq!(mine.status, 200, "the first owner token, old signing key");
    }
    verify(&cl, None)
        .await
        .expect("chain intact after the rotation");
    verify(&cl, Some(&old_head))
        .await
        .expect("the recorded old head");
    verify(&cl, Some(&logged_before))
        .await
        .expect("an older head, while the old key is kept");
    let (id, _) = logged_before.split_once(':').unwrap();
    let forged = verify(&cl, Some(&format!("{id}:{}", "ab".repeat(32))))
        .await
        .expect_err("a head the old chain never had");
    assert!(forged.contains("is not the recorded head"), "{forged}");

    // 3. Everything sealed is re-sealed under the new data key.
    let resealed = run(cl.replicas[0].keys_command("reseal-data"))
        .await
        .expect("reseal-data");
    assert!(resealed.contains("blobs re-sealed"), "{resealed}");

    // 4. The old keys go (the token TTL having passed), every replica restarts.
    let bob_new = client::agent_token(&cl.replicas[2].base, &bob_key)
        .await
        .unwrap();
    bob.token = bob_new;
    for k in &first_keys {
        std::fs::remove_file(k).unwrap();
    }
    for i in 0..3 {
        cl.restart(i).await;
        every_replica_works(&cl, &format!("retired r{i}"), &ann_new, &mut bob).await;
    }
    let old_token = Client::connect(&cl.replicas[0].ws, Some(&ann)).await;
    assert!(
        old_token.is_err(),
        "a token of the deleted signing key is refused"
    );
    let mine = cl.replicas[0]
        .http("GET", "/api/v1/owners/me/agents", Some(&owner), None)
        .await;
    assert_eq!(mine.status, 401, "so is an owner token");
    let fresh = client::agent_token(&cl.replicas[0].base, &ann_key)
        .await
        .expect("the API key still gets a token");
    every_replica_works(&cl, "fresh token", &fresh, &mut bob).await;
    for r in &cl.replicas {
        assert!(
            login(&r.base, "carol@example.com").await,
            "the owner made after"
        );
    }

    // Every DM, from before the first step on, reads back; every email opens.
    let mut replay = cl.replicas[1].connect(Some(&bob.token)).await;
    replay.subscribe("agent:bob", Some(0)).await.unwrap();
    let bodies: Vec<String> = replay
        .pushes(100, Duration::from_secs(2))
        .await
        .into_iter()
        .filter(|p| p.event == "dm")
        .map(|p| p.data["body"].as_str().unwrap_or("").to_string())
        .collect();
    for want in ["before via r0", "rotated via r2", "retired r2 via r2"] {
        assert!(bodies.iter().any(|b| b == want), "{want} in {bodies:?}");
    }
    let ring = KeyRing::load(&secrets).unwrap();
    assert_eq!(ring.index_keys().count(), 1);
    let store = Store::connect(&cl.db.url).await.unwrap();
    let dms = store
        .sealed_page(SealedKind::DmBody, ("", -1), 1000)
        .await
        .unwrap();
    assert_eq!(dms.len(), bodies.len());
    for d in &dms {
        sealed::open(&ring, &d.context, &d.blob).expect("a DM opens with the new keys");
    }
    let emails = store
        .sealed_page(SealedKind::OwnerEmail, ("", -1), 1000)
        .await
        .unwrap();
    let mut opened: Vec<String> = emails
        .iter()
        .map(|e| sealed::open_string(&ring, &e.context, &e.blob).unwrap())
        .collect();
    opened.sort();
    assert_eq!(opened, ["alice@example.com", "carol@example.com"]);
    store.close().await;

    // The chain verifies under the new key alone, with the head the rotation recorded; an
    // older head from before it can no longer be checked, and verify says which one can.
    verify(&cl, None).await.expect("chain intact at the end");
    verify(&cl, Some(&old_head))
        .await
        .expect("the recorded old head, the old key gone");
    let older = verify(&cl, Some(&logged_before))
        .await
        .expect_err("an older head without the old key");
    assert!(older.contains(&format!("--head {old_head}")), "{older}");
    cl.stop().await;
}

/// `rotate-index` changes nothing when it cannot finish: with no newer blind-index key, and
/// on a chain that does not verify under the key in use (owners still log in, the chain is
/// still under the old key). Once it has run, a secrets dir without the new key is refused
/// by an operator command, instead of finding no owner and chaining nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_index_refuses_rather_than_half_rotating() {
    let mut hub = common::start().await;
    client::owner_token(&hub.base, "dora", "dora@example.com", PW)
        .await
        .expect("owner");
    let copy = temp_dir("old-secrets");
    for e in std::fs::read_dir(&hub.secrets_dir).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }

    let none = run(hub.keys_command("rotate-index")).await.unwrap_err();
    assert!(none.contains("no blind-index key newer"), "{none}");

    let mut generate = std::process::Command::new(env!("CARGO_BIN_EXE_carapace"));
    generate
        .args(["keys", "generate", "--dir"])
        .arg(&hub.secrets_dir);
    run(generate).await.expect("keys generate");
    hub.restart().await;
    let pool = sqlx::AnyPool::connect(&hub.database_url).await.unwrap();
    let detail: String = sqlx::query_scalar("SELECT detail FROM audit_log WHERE id = 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET detail = '{\"role\":\"admin\"}' WHERE id = 1")
        .execute(&pool)
        .await
        .unwrap();
    let broken = run(hub.keys_command("rotate-index")).await.unwrap_err();
    assert!(
        broken.contains("BROKEN") && broken.contains("row 1"),
        "{broken}"
    );
    let named: Option<String> =
        sqlx::query_scalar("SELECT value FROM cluster_meta WHERE name = 'index_key'")
            .fetch_optional(&pool)
            .await
            .unwrap();
    assert_eq!(named, None, "nothing rotated");
    assert!(login(&hub.base, "dora@example.com").await);

    sqlx::query("UPDATE audit_log SET detail = $1 WHERE id = 1")
        .bind(&detail)
        .execute(&pool)
        .await
        .unwrap();
    let done = run(hub.keys_command("rotate-index"))
        .await
        .expect("rotates");
    assert!(done.contains("from blind-index to index-"), "{done}");
    assert!(login(&hub.base, "dora@example.com").await);
    pool.close().await;

    let mut stale = hub.admin_command();
    let args: Vec<_> = stale.get_args().map(|a| a.to_owned()).collect();
    let at = args.iter().position(|a| a == "--secrets-dir").unwrap();
    stale = std::process::Command::new(env!("CARGO_BIN_EXE_carapace"));
    stale
        .args(&args[..=at])
        .arg(&copy)
        .args(["audit", "verify"]);
    let refused = run(stale).await.unwrap_err();
    assert!(
        refused.contains("blind-index key 'index-") && refused.contains("is not in"),
        "{refused}"
    );
    let _ = std::fs::remove_dir_all(&copy);
}
