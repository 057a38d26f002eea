//! Identity end to end over real HTTP: owners, agents, keys, tokens, rotation, revocation,
//! the access review, JWT attacks, the stolen-database test and the audit chain.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use carapace::auth::keyring::KeyRing;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::time::Duration;

const PASSWORD: &str = "correct horse battery staple";

/// Verifies an EdDSA JWT against a JWKS document with ed25519-dalek directly, independent of
/// the hub's own verification path.
fn verify_with_jwks(token: &str, jwks: &Value) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "EdDSA");
    let kid = header["kid"].as_str().unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .expect("kid published in JWKS");
    assert_eq!(jwk["kty"], "OKP");
    assert_eq!(jwk["crv"], "Ed25519");
    let x: [u8; 32] = URL_SAFE_NO_PAD
        .decode(jwk["x"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let vk = VerifyingKey::from_bytes(&x).unwrap();
    let sig: [u8; 64] = URL_SAFE_NO_PAD
        .decode(parts[2])
        .unwrap()
        .try_into()
        .unwrap();
    vk.verify(
        format!("{}.{}", parts[0], parts[1]).as_bytes(),
        &Signature::from_bytes(&sig),
    )
    .expect("signature verifies with the published key");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap()
}

#[tokio::test]
async fn owner_agent_key_token_rotation_revocation_and_review() {
    let hub = common::start().await;
    // Signup and its refusals.
    let r = hub
        .http(
            "POST",
            "/api/v1/owners",
            None,
            Some(&json!({"handle": "alice", "email": "alice@example.com", "password": PASSWORD})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["handle"], "alice");
    let r = hub
        .http(
            "POST",
            "/api/v1/owners",
            None,
            Some(&json!({"handle": "bob", "email": "bob@example.com", "password": "short"})),
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let r = hub
        .http(
            "POST",
            "/api/v1/owners",
            None,
            Some(&json!({"handle": "alice2", "email": "ALICE@example.com", "password": PASSWORD})),
        )
        .await;
    // A registered email (any case) is answered like a new account, and nothing is made.
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (201, None));

    // Login: wrong password and unknown email look the same.
    let bad1 = hub
        .http(
            "POST",
            "/api/v1/owners/login",
            None,
            Some(&json!({"email": "alice@example.com", "password": "wrong password!!"})),
        )
        .await;
    let bad2 = hub
        .http(
            "POST",
            "/api/v1/owners/login",
            None,
            Some(&json!({"email": "nobody@example.com", "password": "wrong password!!"})),
        )
        .await;
    assert_eq!(bad1.status, 401);
    assert_eq!(bad1.body, bad2.body);
    let login = hub
        .http(
            "POST",
            "/api/v1/owners/login",
            None,
            Some(&json!({"email": "alice@example.com", "password": PASSWORD})),
        )
        .await;
    assert_eq!(login.status, 200);
    let owner = login.body["token"].as_str().unwrap().to_string();

    // Agent creation: the key is shown once, in the spec's format.
    let r = hub
        .http(
            "POST",
            "/api/v1/agents",
            Some(&owner),
            Some(&json!({"handle": "sage", "name": "Sage", "bio": "a patient philosopher", "scopes": ["read", "post"], "topics": ["general"]})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let key1 = r.body["api_key"]["key"].as_str().unwrap().to_string();
    let key1_id = r.body["api_key"]["id"].as_str().unwrap().to_string();
    assert!(carapace::auth::api_key::well_formed(&key1));
    assert_eq!(r.body["agent"]["scopes"], json!(["read", "post"]));
    assert_eq!(r.body["agent"]["keys"][0]["id"], key1_id.as_str());
    assert!(
        r.body["agent"]["keys"][0].get("key").is_none(),
        "the listing never holds the key"
    );

    // Token exchange, verified independently through the JWKS.
    let t = hub.http("POST", "/api/v1/token", Some(&key1), None).await;
    assert_eq!(t.status, 200, "{:?}", t.body);
    assert_eq!(t.body["token_type"], "Bearer");
    let token1 = t.body["token"].as_str().unwrap().to_string();
    let jwks = hub
        .http("GET", "/.well-known/jwks.json", None, None)
        .await
        .body;
    let claims = verify_with_jwks(&token1, &jwks);
    assert_eq!(claims["iss"], "carapace");
    assert_eq!(claims["aud"], "carapace-hub");
    assert_eq!(claims["handle"], "sage");
    assert_eq!(claims["scopes"], json!(["read", "post"]));
    assert_eq!(claims["topics"], json!(["general"]));
    assert_eq!(claims["cred"], key1_id.as_str());
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        600
    );
    for c in ["sub", "jti", "nbf"] {
        assert!(!claims[c].is_null(), "claim {c}");
    }

    // Rotation: a second key; a third is refused while two are active.
    let r = hub
        .http("POST", "/api/v1/agents/sage/keys", Some(&owner), None)
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let key2 = r.body["key"].as_str().unwrap().to_string();
    let r = hub
        .http("POST", "/api/v1/agents/sage/keys", Some(&owner), None)
        .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (409, Some("conflict"))
    );

    // Revoking key 1: its key and its token stop working; key 2 still works.
    let mut session = hub.connect(Some(&token1)).await;
    assert!(session.command("ping", json!({})).await.is_ok());
    let r = hub
        .http(
            "DELETE",
            &format!("/api/v1/agents/sage/keys/{key1_id}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        session.closed_with(Duration::from_secs(2)).await,
        Some(4003)
    );
    assert_eq!(
        hub.http("POST", "/api/v1/token", Some(&key1), None)
            .await
            .status,
        401
    );
    let ws = carapace_client::Client::connect(&hub.ws, Some(&token1)).await;
    assert!(ws.is_err(), "a token from a revoked key is refused at /ws");
    let t2 = hub.http("POST", "/api/v1/token", Some(&key2), None).await;
    assert_eq!(t2.status, 200);

    // The access review shows both keys, one revoked, and a live session count.
    let token2 = t2.body["token"].as_str().unwrap().to_string();
    let _live = hub.connect(Some(&token2)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = hub
        .http("GET", "/api/v1/owners/me/agents", Some(&owner), None)
        .await;
    assert_eq!(r.status, 200);
    let a = &r.body["agents"][0];
    assert_eq!(a["handle"], "sage");
    assert_eq!(a["keys"].as_array().unwrap().len(), 2);
    assert_eq!(a["live_sessions"], 1);
    assert!(
        a["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["active"] == false)
    );
    assert!(
        a["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k.get("key").is_none())
    );

    // Another owner can neither see nor touch sage.
    let other = hub.owner("mallory").await;
    let r = hub
        .http("POST", "/api/v1/agents/sage/suspend", Some(&other), None)
        .await;
    assert_eq!(r.status, 404);
    let r = hub
        .http("GET", "/api/v1/owners/me/agents", Some(&other), None)
        .await;
    assert_eq!(r.body["agents"], json!([]));

    // Suspension refuses token exchange; the public profile never shows the email.
    let r = hub
        .http("POST", "/api/v1/agents/sage/suspend", Some(&owner), None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        hub.http("POST", "/api/v1/token", Some(&key2), None)
            .await
            .status,
        401
    );
    let p = hub.http("GET", "/api/v1/agents/sage", None, None).await;
    assert_eq!(p.body["owner"], "alice");
    assert!(!p.body.to_string().contains("alice@example.com"));
}

#[tokio::test]
async fn hostile_http_input_gets_clear_4xx() {
    let hub = common::start().await;
    let owner = hub.owner("olga").await;
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, Option<Value>, u16);
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/api/v1/owners",
            None,
            Some(json!({"handle": 5, "email": "x@y.z", "password": PASSWORD})),
            400,
        ),
        (
            "POST",
            "/api/v1/owners",
            None,
            Some(json!({"handle": "ok_handle", "email": "not-an-email", "password": PASSWORD})),
            400,
        ),
        (
            "POST",
            "/api/v1/owners",
            None,
            Some(json!({"handle": "Bad Handle", "email": "b@y.z", "password": PASSWORD})),
            400,
        ),
        (
            "POST",
            "/api/v1/owners",
            None,
            Some(
                json!({"handle": "extra", "email": "e@y.z", "password": PASSWORD, "role": "admin"}),
            ),
            400,
        ),
        (
            "POST",
            "/api/v1/agents",
            Some(owner.as_str()),
            Some(json!({"handle": "x", "name": "X"})),
            400,
        ),
        (
            "POST",
            "/api/v1/agents",
            Some(owner.as_str()),
            Some(json!({"handle": "good_one", "name": "X", "scopes": ["admin"]})),
            400,
        ),
        (
            "POST",
            "/api/v1/agents",
            Some(owner.as_str()),
            Some(json!({"handle": "good_two", "name": "X", "topics": ["../etc"]})),
            400,
        ),
        (
            "POST",
            "/api/v1/agents",
            None,
            Some(json!({"handle": "good_three", "name": "X"})),
            401,
        ),
        (
            "POST",
            "/api/v1/agents",
            Some("not-a-token"),
            Some(json!({"handle": "good_four", "name": "X"})),
            401,
        ),
        (
            "POST",
            "/api/v1/token",
            Some("cpk_notavalidkeyatallnotavalidkey123456"),
            None,
            401,
        ),
        ("POST", "/api/v1/token", None, None, 401),
        (
            "GET",
            "/api/v1/admin/agents",
            Some(owner.as_str()),
            None,
            403,
        ),
        ("GET", "/api/v1/agents/nobody_here", None, None, 404),
        (
            "GET",
            "/api/v1/topics/general/posts?limit=abc",
            None,
            None,
            400,
        ),
        ("PUT", "/api/v1/topics", None, None, 405),
        ("DELETE", "/api/v1/owners/login", None, None, 405),
        (
            "GET",
            "/api/v1/topics/general/posts?sort=sideways",
            None,
            None,
            400,
        ),
        (
            "GET",
            "/api/v1/topics/general/posts?limit=100000",
            None,
            None,
            400,
        ),
        (
            "GET",
            "/api/v1/topics/general/posts?cursor=%21%21",
            None,
            None,
            400,
        ),
        ("GET", "/api/v1/nope", None, None, 404),
    ];
    for (method, path, bearer, body, status) in cases {
        let r = hub.http(method, path, bearer, body.as_ref()).await;
        assert_eq!(r.status, status, "{method} {path} {body:?} -> {:?}", r.body);
        assert!(
            r.body["error"]["code"].is_string(),
            "{method} {path}: error shape {:?}",
            r.body
        );
    }
    // Malformed JSON and an oversize body.
    let base = hub.base.trim_start_matches("http://").to_string();
    let raw = |body: String| {
        let base = base.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(&base).await.unwrap();
            let req = format!(
                "POST /api/v1/owners HTTP/1.1\r\nHost: {base}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }
    };
    let out = raw("{\"handle\": ".into()).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("bad_request"));
    let out = raw(format!("{{\"handle\": \"{}\"}}", "a".repeat(100_000))).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    // The hub still serves.
    assert_eq!(hub.http("GET", "/healthz", None, None).await.status, 200);
}

fn encode(header: &Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(header, claims, key).unwrap()
}

#[tokio::test]
async fn jwt_attacks_are_refused() {
    let hub = common::start().await;
    let (_, good) = hub.agent("target").await;
    // The genuine token works.
    let mut c = hub.connect(None).await;
    assert!(c.command("auth", json!({"token": good})).await.is_ok());

    let ring = KeyRing::load(&hub.dir.join("secrets")).unwrap();
    let real = ring.current_signing();
    let parts: Vec<&str> = good.split('.').collect();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let now = carapace::clock::now_ms() / 1000;
    let with = |patch: Value| {
        let mut c = claims.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let mut eddsa = Header::new(Algorithm::EdDSA);
    eddsa.kid = Some(real.kid.clone());

    let mut attacks: Vec<(&str, String)> = Vec::new();
    // alg none
    let none_header =
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT", "kid": real.kid}).to_string());
    attacks.push(("alg none", format!("{none_header}.{}.", parts[1])));
    // HS256 keyed with the public key bytes
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(real.kid.clone());
    let public = URL_SAFE_NO_PAD.decode(&real.public_x).unwrap();
    attacks.push((
        "HS256 with public key",
        encode(&hs, &claims, &EncodingKey::from_secret(&public)),
    ));
    attacks.push((
        "HS256 with public x",
        encode(
            &hs,
            &claims,
            &EncodingKey::from_secret(real.public_x.as_bytes()),
        ),
    ));
    // A key the hub never had, under its own kid and under the real kid.
    let stranger_dir = common::temp_dir("stranger");
    let stranger = KeyRing::load_or_init(&stranger_dir).unwrap();
    let sk = stranger.current_signing();
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some(sk.kid.clone());
    attacks.push(("unknown key", encode(&h, &claims, &sk.encoding)));
    attacks.push((
        "forged under real kid",
        encode(&eddsa, &claims, &sk.encoding),
    ));
    // Tampered payload with the original signature.
    let tampered = URL_SAFE_NO_PAD.encode(with(json!({"scopes": ["read","post","comment","vote","dm","topic:create"], "handle": "admin"})).to_string());
    attacks.push((
        "tampered payload",
        format!("{}.{}.{}", parts[0], tampered, parts[2]),
    ));
    // Properly signed but invalid claims.
    attacks.push((
        "expired beyond leeway",
        encode(
            &eddsa,
            &with(json!({"exp": now - 31, "iat": now - 700, "nbf": now - 700})),
            &real.encoding,
        ),
    ));
    attacks.push((
        "not yet valid",
        encode(&eddsa, &with(json!({"nbf": now + 120})), &real.encoding),
    ));
    attacks.push((
        "wrong aud",
        encode(
            &eddsa,
            &with(json!({"aud": "carapace-owner"})),
            &real.encoding,
        ),
    ));
    attacks.push((
        "wrong iss",
        encode(&eddsa, &with(json!({"iss": "evil"})), &real.encoding),
    ));
    let mut no_exp = claims.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    attacks.push(("missing exp", encode(&eddsa, &no_exp, &real.encoding)));
    for kid in [
        "../../etc/passwd",
        "https://evil.example/jwks.json",
        "/dev/null",
    ] {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(kid.into());
        attacks.push(("kid path or URL", encode(&h, &claims, &real.encoding)));
    }
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = None;
    attacks.push(("no kid", encode(&h, &claims, &real.encoding)));
    attacks.push(("garbage", "not.a.jwt".into()));

    for (name, token) in attacks {
        // As a header on the upgrade: refused before any session exists.
        assert!(
            carapace_client::Client::connect(&hub.ws, Some(&token))
                .await
                .is_err(),
            "{name}: upgrade accepted"
        );
        // As an auth frame: unauthorized, then closed with 4001.
        let mut c = hub.connect(None).await;
        let e = c
            .command("auth", json!({"token": token}))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("unauthorized"), "{name}: {e}");
        assert_eq!(
            c.closed_with(Duration::from_secs(2)).await,
            Some(4001),
            "{name}"
        );
    }
    // An owner token is not an agent token, and an agent token is not an owner token.
    let owner = hub.owner("owner_x").await;
    let mut c = hub.connect(None).await;
    assert!(c.command("auth", json!({"token": owner})).await.is_err());
    let r = hub
        .http("GET", "/api/v1/owners/me/agents", Some(&good), None)
        .await;
    assert_eq!(r.status, 401);
    let _ = std::fs::remove_dir_all(stranger_dir);
}

/// Every file of the database (the main file and its write-ahead log), concatenated.
fn database_bytes(hub: &common::TestHub) -> Vec<u8> {
    let mut all = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let p = format!("{}{suffix}", hub.db_path().display());
        if let Ok(b) = std::fs::read(&p) {
            all.extend_from_slice(&b);
        }
    }
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn a_stolen_database_betrays_nothing() {
    let hub = common::start().await;
    let mut secrets: Vec<String> = Vec::new();
    let mut tokens = Vec::new();
    for (i, handle) in ["victor", "wendy"].iter().enumerate() {
        let email = format!("{handle}.secret{i}@private-mail.example");
        let password = format!("super secret passphrase {i}");
        let owner =
            carapace_client::owner_token(&hub.base, &format!("o_{handle}"), &email, &password)
                .await
                .unwrap();
        let key = carapace_client::create_agent(
            &hub.base,
            &owner,
            &json!({"handle": handle, "name": handle, "bio": "x"}),
        )
        .await
        .unwrap();
        let rotated = hub
            .http(
                "POST",
                &format!("/api/v1/agents/{handle}/keys"),
                Some(&owner),
                None,
            )
            .await;
        let key2 = rotated.body["key"].as_str().unwrap().to_string();
        let token = carapace_client::agent_token(&hub.base, &key).await.unwrap();
        secrets.extend([
            email,
            password,
            key.clone(),
            key[4..36].to_string(),
            key2,
            owner,
            token.clone(),
        ]);
        tokens.push(token);
    }
    // Private messages both ways.
    let mut a = hub.connect(Some(&tokens[0])).await;
    let mut b = hub.connect(Some(&tokens[1])).await;
    let dm1 = "the launch code is swordfish-4471";
    let dm2 = "meet me behind the reef at dawn 8812";
    a.command("dm", json!({"to": "wendy", "body": dm1}))
        .await
        .unwrap();
    b.command("dm", json!({"to": "victor", "body": dm2}))
        .await
        .unwrap();
    secrets.extend([dm1.to_string(), dm2.to_string()]);
    // Let the hub's writes land, then read the files as a thief would.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bytes = database_bytes(&hub);
    assert!(bytes.len() > 10_000, "database files were read");
    assert!(
        contains(&bytes, "victor"),
        "sanity: public data is there in clear"
    );
    for s in &secrets {
        assert!(
            !contains(&bytes, s),
            "the database holds a secret in clear: {}",
            &s[..s.len().min(24)]
        );
    }
    // Yet the recipients read their DMs through the hub (history replay decrypts).
    let mut b2 = hub.connect(Some(&tokens[1])).await;
    b2.subscribe("agent:wendy", Some(0)).await.unwrap();
    let p = b2.next_push(Duration::from_secs(2)).await.unwrap();
    assert_eq!(p.event, "dm");
    assert_eq!(p.data["body"], dm1);
}

#[tokio::test]
async fn tampering_with_the_audit_log_is_detected() {
    let mut hub = common::start().await;
    let owner = hub.owner("auditee").await;
    carapace_client::create_agent(
        &hub.base,
        &owner,
        &json!({"handle": "audited", "name": "A"}),
    )
    .await
    .unwrap();
    hub.http("POST", "/api/v1/agents/audited/suspend", Some(&owner), None)
        .await;
    hub.stop().await;
    let run = |args: &[&str]| {
        hub.admin_command()
            .arg("audit")
            .args(args)
            .output()
            .unwrap()
    };
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let ok = run(&["verify"]);
    assert!(ok.status.success(), "{}", text(&ok));
    let out = text(&ok);
    assert!(out.contains("intact"), "{out}");
    // The head as the hub logged it (here read from verify's answer).
    let head = out
        .split("head ")
        .nth(1)
        .and_then(|h| h.split_whitespace().next())
        .unwrap()
        .to_string();

    let url = format!("sqlite://{}", hub.db_path().display());
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    // Alter one byte of one row's content.
    sqlx::query("UPDATE audit_log SET subject = 'agent:someone_else' WHERE id = 3")
        .execute(&pool)
        .await
        .unwrap();
    let bad = run(&["verify"]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(text(&bad).contains("row 3 was altered"), "{}", text(&bad));

    // Covering it up by re-chaining every row, without the key: still refused.
    common::rechain_audit_unkeyed(&pool, 1).await;
    let bad = run(&["verify"]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(text(&bad).contains("unkeyed"), "{}", text(&bad));
    // An operator talked into resealing that: the logged head still gives it away.
    let sealed = run(&["reseal"]);
    assert!(sealed.status.success(), "{}", text(&sealed));
    assert!(run(&["verify"]).status.success());
    let bad = run(&["verify", "--head", &head]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(text(&bad).contains("rewritten"), "{}", text(&bad));

    // Removing a row is detected too.
    sqlx::query("DELETE FROM audit_log WHERE id = 2")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert_eq!(run(&["verify"]).status.code(), Some(1));
    let refused = run(&["reseal"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("not resealed"),
        "{}",
        text(&refused)
    );
}

#[tokio::test]
async fn admin_inventory_and_audit_endpoints() {
    let hub = common::start().await;
    // An admin made by the operator command, password on stdin.
    let admin = hub.admin_token("root_admin").await;
    hub.agent("inventoried").await;
    let r = hub
        .http("GET", "/api/v1/admin/agents", Some(&admin), None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(
        r.body["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["handle"] == "inventoried")
    );
    // Fresh keys are not stale at 1 day; every key is stale at 0 days.
    let r = hub
        .http(
            "GET",
            "/api/v1/admin/agents?stale_days=1",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(
        r.body["agents"].as_array().unwrap().len(),
        0,
        "{:?}",
        r.body
    );
    let r = hub
        .http(
            "GET",
            "/api/v1/admin/agents?stale_days=0",
            Some(&admin),
            None,
        )
        .await;
    assert!(!r.body["agents"].as_array().unwrap().is_empty());
    let r = hub
        .http("GET", "/api/v1/admin/audit?limit=100", Some(&admin), None)
        .await;
    let actions: Vec<&str> = r.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in ["owner.signup", "owner.login", "agent.create", "key.create"] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    assert!(!r.body.to_string().contains("root_admin@example.com"));
    // The CLI inventory lists the agent too.
    let out = hub.admin_command().args(["agents"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("inventoried"));
}

/// A replica or an admin command pointed at a secrets dir without keys (mistyped, not mounted)
/// for a database already in use refuses to start, instead of making keys of its own that no
/// other replica shares and under which nothing already stored opens.
#[tokio::test]
async fn a_database_in_use_never_gets_new_keys() {
    let mut hub = common::start().await;
    hub.owner("keeper").await;
    hub.stop().await;
    let empty = common::temp_dir("nokeys");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_carapace"))
        .args([
            "admin",
            "--database-url",
            &hub.database_url,
            "--secrets-dir",
        ])
        .arg(&empty)
        .arg("agents")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("point --secrets-dir at the replicas' secrets"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&empty).unwrap().count(),
        0,
        "keys were made"
    );
    // With its own secrets dir the database still opens.
    let ok = hub.admin_command().arg("agents").output().unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let _ = std::fs::remove_dir_all(&empty);
}

/// Signing out ends every owner token the owner holds (not the agents' keys); an operator
/// can sign an owner out too; both are in the audit log.
#[tokio::test]
async fn sign_out_ends_every_owner_token() {
    let hub = common::start().await;
    let first = hub.owner("leaver").await;
    let second = hub.owner("leaver").await;
    let (key, _) = hub.agent_for(&first, "leavers_bot", json!(["read"])).await;
    let h = &hub;
    let review = |token: String| async move {
        h.http("GET", "/api/v1/owners/me/agents", Some(&token), None)
            .await
    };
    assert_eq!(review(first.clone()).await.status, 200);
    let out = hub
        .http("POST", "/api/v1/owners/logout", Some(&second), None)
        .await;
    assert_eq!(out.status, 204, "{:?}", out.body);
    for t in [&first, &second] {
        let r = review(t.clone()).await;
        assert_eq!(r.status, 401, "{:?}", r.body);
        assert_eq!(r.body["error"]["code"], "unauthorized", "{:?}", r.body);
    }
    let again = hub
        .http("POST", "/api/v1/owners/logout", Some(&first), None)
        .await;
    assert_eq!(again.status, 401);
    // The agent's key is the agent's credential, not the owner's session: it still works.
    carapace_client::agent_token(&hub.base, &key)
        .await
        .expect("the agent's key outlives its owner's sign-out");
    // The next login works.
    let third = hub.owner("leaver").await;
    assert_eq!(review(third.clone()).await.status, 200);

    // The operator's sign-out, for a stolen owner token.
    let cli = hub
        .admin_command()
        .args(["sign-out-owner", "leaver"])
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert_eq!(review(third).await.status, 401);
    let unknown = hub
        .admin_command()
        .args(["sign-out-owner", "nobody_here"])
        .output()
        .unwrap();
    assert!(!unknown.status.success());

    let admin = hub.admin_token("sign_out_admin").await;
    let r = hub
        .http("GET", "/api/v1/admin/audit?limit=100", Some(&admin), None)
        .await;
    let sign_outs: Vec<(&str, &str)> = r.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "owner.sign_out")
        .map(|e| (e["actor"].as_str().unwrap(), e["subject"].as_str().unwrap()))
        .collect();
    assert_eq!(
        sign_outs,
        [("owner:leaver", "owner:leaver"), ("cli", "owner:leaver")]
    );
}

#[tokio::test]
async fn key_rotation_keeps_old_tokens_and_sealed_data_readable() {
    let mut hub = common::start().await;
    let (key, old_token) = hub.agent("rotor").await;
    let (_, other) = hub.agent("pen_pal").await;
    let mut pal = hub.connect(Some(&other)).await;
    pal.command(
        "dm",
        json!({"to": "rotor", "body": "sealed before rotation"}),
    )
    .await
    .unwrap();
    let old_kid = hub
        .http("GET", "/.well-known/jwks.json", None, None)
        .await
        .body["keys"][0]["kid"]
        .clone();
    hub.stop().await;

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_carapace"))
        .args(["keys", "generate", "--dir"])
        .arg(hub.dir.join("secrets"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    hub.restart().await;

    let jwks = hub
        .http("GET", "/.well-known/jwks.json", None, None)
        .await
        .body;
    assert_eq!(
        jwks["keys"].as_array().unwrap().len(),
        2,
        "old and new public keys published"
    );
    // New tokens are signed with the new key; the old token still verifies.
    let new_token = carapace_client::agent_token(&hub.base, &key).await.unwrap();
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(new_token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_ne!(header["kid"], old_kid);
    verify_with_jwks(&new_token, &jwks);
    verify_with_jwks(&old_token, &jwks);
    let mut c = hub.connect(Some(&old_token)).await;
    // What was sealed with the old data key still opens, and new DMs flow.
    c.subscribe("agent:rotor", Some(0)).await.unwrap();
    let p = c.next_push(Duration::from_secs(2)).await.unwrap();
    assert_eq!(p.data["body"], "sealed before rotation");
    let mut pal = hub.connect(Some(&other)).await;
    pal.command(
        "dm",
        json!({"to": "rotor", "body": "sealed after rotation"}),
    )
    .await
    .unwrap();
    let p = c.next_push(Duration::from_secs(2)).await.unwrap();
    assert_eq!(p.data["body"], "sealed after rotation");
    // Owners still log in: the blind index key is not rotated.
    hub.owner("own_rotor").await;
}

/// Runs a `carapace` command to its end: (success, stdout, stderr).
fn run_cli(cmd: &mut std::process::Command, env: &[(&str, &str)]) -> (bool, String, String) {
    cmd.env_remove("CARAPACE_API_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("carapace runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

// Several threads: the CLI runs as a blocking child process while the hub serves it here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_new_creates_an_agent_from_the_cli_and_carapace_token_exchanges_its_key() {
    let hub = common::start().await;
    let owner = hub.owner("cli_owner").await;
    let bin = || std::process::Command::new(env!("CARGO_BIN_EXE_carapace"));

    // An operator creates the agent on the hub's own database; least privilege by default.
    let (ok, out, err) = run_cli(
        hub.store_command(&["agent", "new"]).args([
            "--owner",
            "cli_owner@example.com",
            "--handle",
            "cli_agent",
        ]),
        &[],
    );
    assert!(ok, "{err}");
    let created: Value = serde_json::from_str(&out).expect("JSON on stdout");
    let key = created["api_key"]["key"].as_str().expect("the key, once");
    assert_eq!(
        created["agent"]["scopes"],
        json!(["read", "post", "comment", "vote", "dm"])
    );
    assert_eq!(created["agent"]["owner"], "cli_owner");
    assert!(err.contains("shown this once"), "{err}");
    // The owner sees it in its access review; the audit log says the CLI did it.
    let review = hub
        .http("GET", "/api/v1/owners/me/agents", Some(&owner), None)
        .await;
    assert_eq!(review.body["agents"][0]["handle"], "cli_agent");
    let admin = hub.admin_token("cli_root").await;
    let audit = hub
        .http("GET", "/api/v1/admin/audit?limit=1000", Some(&admin), None)
        .await;
    assert!(
        audit.body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"] == "cli"
                && e["action"] == "agent.create"
                && e["subject"] == "agent:cli_agent"),
        "{}",
        audit.body
    );

    // Bad input is refused with what is wrong, and nothing is created.
    for (args, why) in [
        (
            ["--owner", "nobody@example.com", "--handle", "cli_b"],
            "no owner",
        ),
        (
            ["--owner", "cli_owner@example.com", "--handle", "X!"],
            "'handle'",
        ),
        (
            ["--owner", "cli_owner@example.com", "--handle", "cli_agent"],
            "taken",
        ),
    ] {
        let (ok, _, err) = run_cli(hub.store_command(&["agent", "new"]).args(args), &[]);
        assert!(!ok && err.contains(why), "{args:?}: {err}");
    }
    let (ok, _, err) = run_cli(
        hub.store_command(&["agent", "new"]).args([
            "--owner",
            "cli_owner@example.com",
            "--handle",
            "cli_c",
            "--scopes",
            "read,admin",
        ]),
        &[],
    );
    assert!(!ok && err.contains("admin"), "{err}");

    // `carapace token` reads the key from the environment or a file, never from argv.
    let (ok, out, err) = run_cli(
        bin().args(["token", "--hub", &hub.base]),
        &[("CARAPACE_API_KEY", key)],
    );
    assert!(ok, "{err}");
    let t: Value = serde_json::from_str(&out).expect("JSON token");
    assert_eq!(t["token_type"], "Bearer");
    let token = t["token"].as_str().unwrap();
    let mut c = hub.connect(Some(token)).await;
    let post = c
        .command(
            "post",
            json!({"topic": "general", "title": "From the CLI", "body": "hello"}),
        )
        .await
        .expect("the token works");
    assert_eq!(post["post"]["author"]["handle"], "cli_agent");
    let file = hub.dir.join("key.txt");
    std::fs::write(&file, format!("{key}\n")).unwrap();
    let (ok, out, _) = run_cli(
        bin()
            .args(["token", "--hub", &hub.base, "--key-file"])
            .arg(&file),
        &[],
    );
    assert!(ok && out.contains("\"token\""));
    let (ok, _, err) = run_cli(bin().args(["token", "--hub", &hub.base, "--key", key]), &[]);
    assert!(
        !ok && err.contains("--key"),
        "a key on the command line is refused: {err}"
    );
    let (ok, _, err) = run_cli(bin().args(["token", "--hub", &hub.base]), &[]);
    assert!(!ok && err.contains("CARAPACE_API_KEY"), "{err}");
    let (ok, _, err) = run_cli(
        bin().args(["token", "--hub", &hub.base]),
        &[("CARAPACE_API_KEY", "cpk_not_a_real_key")],
    );
    assert!(!ok && err.contains("invalid, expired or revoked"), "{err}");
}

#[tokio::test]
async fn bad_fields_are_explained_in_the_apis_words_not_serdes() {
    let hub = common::start().await;
    let owner = hub.owner("words").await;
    let serde_words = [
        "line 1",
        "column",
        "struct ",
        "i8",
        "sequence",
        "Failed to",
        "`",
    ];
    let cases = [
        (json!({"handle": "w_one", "bio": "x"}), "'name' is required"),
        (
            json!({"handle": "w_two", "name": "W", "colour": "red"}),
            "'colour' is not accepted here",
        ),
        (
            json!({"handle": "w_three", "name": "W", "scopes": "read"}),
            "'scopes' must be a list",
        ),
        (
            json!({"handle": 7, "name": "W"}),
            "'handle' must be a string",
        ),
    ];
    for (body, want) in cases {
        let r = hub
            .http("POST", "/api/v1/agents", Some(&owner), Some(&body))
            .await;
        assert_eq!(r.status, 400, "{body}");
        let msg = r.body["error"]["message"].as_str().unwrap();
        assert!(msg.contains(want), "{body}: {msg}");
        assert!(!serde_words.iter().any(|w| msg.contains(w)), "{msg}");
    }
    let r = hub
        .http("GET", "/api/v1/topics/general/posts?limit=many", None, None)
        .await;
    assert_eq!(r.status, 400);
    let msg = r.body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("'limit'"), "{msg}");
    assert!(!serde_words.iter().any(|w| msg.contains(w)), "{msg}");

    let (_, token) = hub.agent("words_agent").await;
    let mut c = hub.connect(Some(&token)).await;
    for (op, fields, want) in [
        (
            "vote",
            json!({"target": "x", "value": "up"}),
            "'value' must be an integer in range",
        ),
        (
            "post",
            json!({"topic": "general", "body": "b"}),
            "'title' is required",
        ),
        (
            "dm",
            json!({"to": "some_one", "body": 5}),
            "invalid 'dm' command: 'body' must be a string",
        ),
    ] {
        let e = c.command(op, fields).await.expect_err("refused");
        let carapace_client::ClientError::Api { message, .. } = e else {
            panic!("{op}: {e:?}");
        };
        assert!(message.contains(want), "{op}: {message}");
        assert!(
            !serde_words.iter().any(|w| message.contains(w)),
            "{message}"
        );
    }
}
