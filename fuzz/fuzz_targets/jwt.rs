//! The JWT checks on hostile tokens. The target signs one genuine agent token at start, with
//! a key ring of its own; then, whatever the input:
//! - as a token, it verifies only if it carries exactly the genuine claims, and never as an
//!   owner token (the audiences keep the two apart);
//! - as a header and claims signed with the ring's real key (an attacker who found a signing
//!   oracle for arbitrary JSON), it verifies only with alg EdDSA, a known kid, our issuer and
//!   audience, and times that hold now.

#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use carapace::auth::jwt::{self, AGENT_AUDIENCE, AgentClaims, ISSUER, LEEWAY_SECS};
use carapace::auth::keyring::{self, KeyRing};
use jsonwebtoken::{Algorithm, Header};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

struct Fixture {
    ring: KeyRing,
    genuine: AgentClaims,
    token: String,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("carapace-fuzz-jwt-{}", std::process::id()));
    keyring::generate(&dir, false).expect("key ring");
    let ring = KeyRing::load(&dir).expect("key ring loads");
    let _ = std::fs::remove_dir_all(&dir);
    let now = now();
    let genuine = AgentClaims {
        iss: ISSUER.into(),
        aud: AGENT_AUDIENCE.into(),
        sub: "agt_genuine".into(),
        handle: "genuine".into(),
        scopes: vec!["read".into(), "post".into()],
        topics: vec![],
        cred: "key_genuine".into(),
        jti: "jti_genuine".into(),
        iat: now,
        nbf: now,
        exp: now + 3600,
    };
    let token = jwt::sign(&ring, &genuine).expect("signs");
    Fixture {
        ring,
        genuine,
        token,
    }
});

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// `header.claims.signature`, signed by the ring's current key whatever the header says.
fn signed_by_the_real_key(f: &Fixture, header: &[u8], claims: &[u8]) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = &f.ring.current_signing().encoding;
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), key, Algorithm::EdDSA).expect("signs");
    format!("{message}.{signature}")
}

fuzz_target!(|data: &[u8]| {
    let f = &*FIXTURE;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let Ok(token) = std::str::from_utf8(rest) else {
            return;
        };
        if let Ok(claims) = jwt::verify_agent(&f.ring, token) {
            assert_eq!(
                claims, f.genuine,
                "a token with other claims verified: {token}"
            );
        }
        assert!(
            jwt::verify_owner(&f.ring, token).is_err(),
            "an agent token (or a forgery) passed as an owner's"
        );
        // The genuine token with the input glued on never verifies as something else.
        let glued = format!("{}{token}", f.token);
        if let Ok(claims) = jwt::verify_agent(&f.ring, &glued) {
            assert_eq!(claims, f.genuine);
        }
        return;
    }
    // Header and claims, split where the input says.
    let at = rest.first().map_or(0, |&b| usize::from(b)).min(rest.len());
    let (header, claims) = rest.split_at(at);
    let token = signed_by_the_real_key(f, header, claims);
    if let Ok(c) = jwt::verify_agent(&f.ring, &token) {
        let h: Header = serde_json::from_slice(header).expect("verified, so the header parses");
        assert_eq!(h.alg, Algorithm::EdDSA);
        assert!(h.kid.is_some_and(|k| f.ring.signing_key(&k).is_some()));
        assert_eq!(c.iss, ISSUER);
        assert_eq!(c.aud, AGENT_AUDIENCE);
        // A second of slack: the clock moved on since the check.
        let (now, leeway) = (now(), LEEWAY_SECS as i64);
        assert!(
            c.exp >= now - leeway - 1,
            "expired claims verified: exp {}",
            c.exp
        );
        assert!(
            c.nbf <= now + leeway,
            "not-yet-valid claims verified: nbf {}",
            c.nbf
        );
    }
});
