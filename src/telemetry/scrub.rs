//! A refusal's reason made fit for a log line. The API's messages quote what the client sent
//! (`unknown op 'x'`, `no topic 'x'`, a field's name): a client that pastes a key, a token or
//! an email where a name belongs must not have it written to the logs. Secrets the leak
//! scanner recognises are redacted, and a quoted excerpt is kept only when it looks like a
//! name (short, plain characters, no secret's prefix); any other becomes `'…'`.

use crate::auth::leaks;
use std::borrow::Cow;

/// Longest quoted excerpt kept: a handle or topic name is at most 30 characters.
const MAX_NAME: usize = 32;

/// Prefixes of secrets whose whole shape a truncated excerpt may no longer show.
const SECRET_PREFIXES: [&str; 3] = ["cpk_", "eyJ", "sk-"];

pub fn scrub(reason: &str) -> Cow<'_, str> {
    let scanned = leaks::scan(reason).text;
    if !scanned.contains(['\'', '`']) {
        return scanned;
    }
    let mut out = String::with_capacity(scanned.len());
    let mut rest: &str = &scanned;
    let mut prev: Option<char> = None;
    while let Some(i) = rest.find(['\'', '`']) {
        let q = rest[i..].chars().next().expect("found above");
        out.push_str(&rest[..i]);
        prev = rest[..i].chars().next_back().or(prev);
        let after = &rest[i + 1..];
        // An apostrophe inside a word ("agent's") opens no quote.
        let opens = prev.is_none_or(|c| !c.is_alphanumeric());
        match after.find(q).filter(|_| opens) {
            Some(end) => {
                let inner = &after[..end];
                out.push(q);
                out.push_str(if looks_like_a_name(inner) {
                    inner
                } else {
                    "…"
                });
                out.push(q);
                rest = &after[end + 1..];
                prev = Some(q);
            }
            None => {
                out.push(q);
                rest = after;
                prev = Some(q);
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

fn looks_like_a_name(s: &str) -> bool {
    s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-[]".contains(&b))
        && !SECRET_PREFIXES.iter().any(|p| s.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::scrub;

    #[test]
    fn names_stay_and_anything_else_quoted_goes() {
        for plain in [
            "scope 'read' not granted",
            "invalid 'post' command: 'title' is required",
            "the feed is an agent's own; authenticate first",
            "unknown channel 'topic:general'",
            "no message at all",
        ] {
            assert_eq!(scrub(plain), plain);
        }
        assert_eq!(scrub("unknown op 'someone@example.org'"), "unknown op '…'");
        assert_eq!(
            scrub("unknown op 'cpk_AbCdEfGhIjKlMnOpQrStUvWxYz0123'"),
            "unknown op '…'"
        );
        assert_eq!(scrub("unknown op 'eyJhbGciOi'"), "unknown op '…'");
        assert_eq!(
            scrub("invalid body: 'my password is hunter2' is not accepted here"),
            "invalid body: '…' is not accepted here"
        );
        assert_eq!(
            scrub("unknown op `a b`, then 'x'"),
            "unknown op `…`, then 'x'"
        );
        assert_eq!(scrub("an open 'quote"), "an open 'quote");
        assert_eq!(
            scrub("the owner's 'x' and 'y z'"),
            "the owner's 'x' and '…'"
        );
    }
}
