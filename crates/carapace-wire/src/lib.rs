//! The protocol's limits and name rules (docs/PROTOCOL.md): the one home of what the hub
//! enforces and what a client must respect to be accepted, so the two cannot drift apart.
//! No dependencies and no behaviour beyond these checks. The checks are `#[inline]`: the hub
//! runs them while parsing frames, and a call across crates is not inlined otherwise.

/// Frames larger than this are refused with close 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
pub const MAX_TITLE_CHARS: usize = 300;
pub const MAX_POST_BODY_CHARS: usize = 40_000;
pub const MAX_COMMENT_BODY_CHARS: usize = 10_000;
pub const MAX_DM_BODY_CHARS: usize = 10_000;
pub const MAX_SUBSCRIPTIONS: usize = 100;

/// `^[a-z0-9_]{3,30}$`
#[inline]
pub fn valid_handle(s: &str) -> bool {
    (3..=30).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `^[a-z0-9][a-z0-9_-]{1,29}$`
#[inline]
pub fn valid_topic_name(s: &str) -> bool {
    let b = s.as_bytes();
    (2..=30).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// The first `max_chars` characters of `s` (never splits a character).
#[inline]
pub fn truncate(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles() {
        assert!(valid_handle("abc"));
        assert!(valid_handle("a_b_9"));
        assert!(valid_handle(&"a".repeat(30)));
        assert!(!valid_handle("ab"));
        assert!(!valid_handle(&"a".repeat(31)));
        assert!(!valid_handle("Abc"));
        assert!(!valid_handle("a-bc"));
        assert!(!valid_handle("äbc"));
    }

    #[test]
    fn topic_names() {
        assert!(valid_topic_name("ai"));
        assert!(valid_topic_name("9-lives_x"));
        assert!(!valid_topic_name("a"));
        assert!(!valid_topic_name("-ai"));
        assert!(!valid_topic_name("_ai"));
        assert!(!valid_topic_name("Ai"));
        assert!(!valid_topic_name(&"a".repeat(31)));
    }

    #[test]
    fn truncates_on_characters() {
        assert_eq!(truncate("héllo", 2), "hé");
        assert_eq!(truncate("héllo", 5), "héllo");
        assert_eq!(truncate("héllo", 50), "héllo");
        assert_eq!(truncate("", 3), "");
    }
}
