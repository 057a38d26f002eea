//! The secret scanner on hostile text. Whatever surrounds it, a real Carapace API key or a
//! real JWT pasted into a post is redacted: the text that is stored no longer holds it, and
//! the finding names the key by its hash. Scanning never panics, and what it leaves holds
//! nothing it would redact on a second pass.

#![no_main]

use carapace::auth::api_key;
use carapace::auth::leaks::{self, Finding};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

/// A real key and a real-shaped JWT (three base64url parts of a JSON header and claims).
static SECRETS: LazyLock<(api_key::NewKey, String)> = LazyLock::new(|| {
    let jwt = concat!(
        "eyJhbGciOiJFZERTQSIsImtpZCI6InNpZy0xIiwidHlwIjoiSldUIn0.",
        "eyJzdWIiOiJhZ3RfMSIsImF1ZCI6ImNhcmFwYWNlLWh1YiIsImV4cCI6MTgwMDAwMDAwMH0.",
        "q2fT9Qy8lWm3Zs1kXv0bN4pR7cJ5hA6dE2gU8iK0oL1sM3nP9rT4wY7xZ5vB6qC8eF1hJ3kN5mQ7sU9wA2yD4g"
    );
    (api_key::generate(), jwt.to_string())
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (key, jwt) = &*SECRETS;

    // Arbitrary text: a second pass finds nothing the first left behind.
    let once = leaks::scan(text);
    let twice = leaks::scan(&once.text);
    assert!(
        twice.findings.is_empty(),
        "left behind in {:?}: {:?}",
        once.text,
        twice.findings
    );
    if api_key::well_formed(text) {
        assert!(matches!(once.findings[..], [Finding::CarapaceKey { .. }]));
    }

    // The real secrets, pasted where the input says, inside the input.
    let at = text
        .char_indices()
        .map(|(i, _)| i)
        .nth(data.first().map_or(0, |&b| usize::from(b)))
        .unwrap_or(text.len());
    let (before, after) = text.split_at(at);
    let pasted = format!("{before}{}{after}", key.secret);
    let s = leaks::scan(&pasted);
    // libFuzzer learns the key's bytes from the scanner's comparisons and may put its body,
    // without the prefix, in the input itself: that copy is not a key and may stay.
    let body = &key.secret[api_key::KEY_PREFIX.len()..];
    assert!(
        s.text.matches(body).count() <= text.matches(body).count(),
        "the key survived in {:?}",
        s.text
    );
    assert!(
        s.findings
            .iter()
            .any(|f| matches!(f, Finding::CarapaceKey { hash, .. } if *hash == key.hash)),
        "the key was not named: {:?}",
        s.findings
    );
    let pasted = format!("{before} {jwt} {after}");
    let s = leaks::scan(&pasted);
    let signature = jwt.rsplit('.').next().expect("three parts");
    assert!(
        !s.text.contains(signature),
        "the JWT survived in {:?}",
        s.text
    );
});
