//! Secret scanning of agent-written text. `scan` finds credentials an agent pasted into a
//! post, comment, DM, topic or profile and replaces each with a marker `[redacted:<kind>]`
//! (`carapace-key`, `api-key`, `private-key`, `jwt`). It is a pure, total function of the
//! text: the service decides what to revoke and whom to tell.
//!
//! One multi-pattern search finds the places where a secret could start; text without any
//! (nearly all of it) costs that single pass and is returned borrowed. Each candidate is then
//! checked against its exact shape: a Carapace key only with a valid checksum, a provider key
//! only with its length and a random-looking body, a JWT only when its header decodes to a
//! JSON object naming `alg`.

use super::api_key;
use aho_corasick::{AhoCorasick, Input, MatchKind};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::borrow::Cow;
use std::sync::LazyLock;

pub const CARAPACE_KEY_MARKER: &str = "[redacted:carapace-key]";
pub const API_KEY_MARKER: &str = "[redacted:api-key]";
pub const PRIVATE_KEY_MARKER: &str = "[redacted:private-key]";
pub const JWT_MARKER: &str = "[redacted:jwt]";

/// Whose API key a third-party secret is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    OpenAi,
    Anthropic,
    Aws,
    GitHub,
    GitLab,
    Slack,
    Stripe,
    Google,
    HuggingFace,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Aws => "aws",
            Provider::GitHub => "github",
            Provider::GitLab => "gitlab",
            Provider::Slack => "slack",
            Provider::Stripe => "stripe",
            Provider::Google => "google",
            Provider::HuggingFace => "huggingface",
        }
    }
}

/// One secret found and redacted. It holds nothing of the secret beyond what revoking a
/// Carapace key needs: its public prefix and its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    CarapaceKey { prefix: String, hash: Vec<u8> },
    ProviderKey { provider: Provider },
    PrivateKey,
    Jwt,
}

impl Finding {
    /// The kind's name on the wire (`leak` notices, audit rows).
    pub fn kind(&self) -> &'static str {
        match self {
            Finding::CarapaceKey { .. } => "carapace_key",
            Finding::ProviderKey { .. } => "provider_key",
            Finding::PrivateKey => "private_key",
            Finding::Jwt => "jwt",
        }
    }

    pub fn marker(&self) -> &'static str {
        match self {
            Finding::CarapaceKey { .. } => CARAPACE_KEY_MARKER,
            Finding::ProviderKey { .. } => API_KEY_MARKER,
            Finding::PrivateKey => PRIVATE_KEY_MARKER,
            Finding::Jwt => JWT_MARKER,
        }
    }
}

/// The text with every secret replaced, and what was found, in order of appearance.
#[derive(Debug)]
pub struct Scanned<'a> {
    pub text: Cow<'a, str>,
    pub findings: Vec<Finding>,
}

/// Where a secret may start. The index of each pattern selects its detector.
const TRIGGERS: &[&str] = &[
    "cpk_",
    "sk-",
    "sk_live_",
    "rk_live_",
    "AKIA",
    "ASIA",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "xoxb-",
    "xoxp-",
    "xoxa-",
    "xoxr-",
    "xoxs-",
    "xapp-",
    "AIza",
    "hf_",
    "-----BEGIN ",
    "eyJ",
];

static SEARCH: LazyLock<AhoCorasick> = LazyLock::new(|| {
    AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostFirst)
        .build(TRIGGERS)
        .expect("the trigger patterns are valid")
});

/// Scans `text` and redacts every secret in it.
pub fn scan(text: &str) -> Scanned<'_> {
    let Some((mut out, mut findings)) = scan_once(text) else {
        return Scanned {
            text: Cow::Borrowed(text),
            findings: Vec::new(),
        };
    };
    // A marker can end a token that a secret-shaped neighbour needed ended (`AKIA…` glued to
    // a key): scan again until nothing changes. Markers hold no trigger, so each pass replaces
    // at least one trigger's bytes outside any marker and the loop would end by itself; the
    // cap keeps the cost linear whatever the input (real text needs one more pass at most).
    for _ in 0..MAX_PASSES {
        let Some((next, more)) = scan_once(&out) else {
            break;
        };
        out = next;
        findings.extend(more);
    }
    Scanned {
        text: Cow::Owned(out),
        findings,
    }
}

const MAX_PASSES: usize = 8;

/// One pass: the redacted text and what was found, or `None` if nothing was.
fn scan_once(text: &str) -> Option<(String, Vec<Finding>)> {
    let b = text.as_bytes();
    let mut findings = Vec::new();
    // Byte ranges to replace, in order, never overlapping.
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut pos = 0;
    // Where the last secret ended: a secret glued to it starts a token of its own, as it
    // will once the first is replaced by its marker, so it is found in this pass.
    let mut last_end = None;
    while pos < b.len() {
        let Some(m) = SEARCH.find(Input::new(b).span(pos..b.len())) else {
            break;
        };
        let trigger = TRIGGERS[m.pattern().as_usize()];
        let at_start = last_end == Some(m.start()) || boundary_before(b, m.start());
        match detect(text, m.start(), trigger, at_start) {
            Some((mut end, finding)) => {
                findings.push(finding);
                // A key of ours glued inside another token (`glpat-…cpk_…`) is named too, so
                // that it is revoked and not only hidden, and the span grows to cover all of
                // it where that token's alphabet stopped short of its end.
                for (key_end, key) in keys_inside(text, m.start() + 1, end) {
                    end = end.max(key_end);
                    findings.push(key);
                }
                spans.push((m.start(), end));
                pos = end;
                last_end = Some(end);
            }
            // Triggers are ASCII, so the byte after a trigger's first is still a place a
            // (byte-wise) search may resume from; slicing only ever happens at trigger starts
            // and after runs of ASCII.
            None => pos = m.start() + 1,
        }
    }
    if spans.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for ((start, end), f) in spans.iter().zip(&findings) {
        out.push_str(&text[last..*start]);
        out.push_str(f.marker());
        last = *end;
    }
    out.push_str(&text[last..]);
    Some((out, findings))
}

/// Checks the candidate at `start` (where `trigger` begins; `at_start`: not inside a word or
/// token); its end and what it is.
fn detect(text: &str, start: usize, trigger: &str, at_start: bool) -> Option<(usize, Finding)> {
    let b = text.as_bytes();
    let after = start + trigger.len();
    match trigger {
        "cpk_" => carapace_key(text, start),
        "sk-" => {
            if !at_start {
                return None;
            }
            let end = run(b, after, is_token_byte);
            let rest = &b[after..end];
            let (provider, body) = if let Some(r) = rest.strip_prefix(b"ant-") {
                (Provider::Anthropic, r)
            } else {
                let r = [&b"proj-"[..], b"svcacct-", b"admin-"]
                    .iter()
                    .find_map(|p| rest.strip_prefix(*p))
                    .unwrap_or(rest);
                (Provider::OpenAi, r)
            };
            random_looking(body, 20).then_some((end, Finding::ProviderKey { provider }))
        }
        "sk_live_" | "rk_live_" => token(b, at_start, after, 24, is_alnum, Provider::Stripe),
        "AKIA" | "ASIA" => {
            if !at_start {
                return None;
            }
            let end = run(b, after, |c| c.is_ascii_uppercase() || c.is_ascii_digit());
            let id = &b[after..end];
            let ok = id.len() == 16
                && !b.get(end).is_some_and(|c| c.is_ascii_alphanumeric())
                && id.iter().any(|c| *c != id[0]);
            ok.then_some((
                end,
                Finding::ProviderKey {
                    provider: Provider::Aws,
                },
            ))
        }
        "ghp_" | "gho_" | "ghu_" | "ghs_" | "ghr_" => {
            token(b, at_start, after, 36, is_alnum, Provider::GitHub)
        }
        "github_pat_" => token(b, at_start, after, 40, is_word_byte, Provider::GitHub),
        "glpat-" => token(b, at_start, after, 20, is_token_byte, Provider::GitLab),
        "xoxb-" | "xoxp-" | "xoxa-" | "xoxr-" | "xoxs-" | "xapp-" => {
            if !at_start {
                return None;
            }
            let end = run(b, after, |c| c.is_ascii_alphanumeric() || c == b'-');
            let body = &b[after..end];
            (body.len() >= 20 && body.iter().any(u8::is_ascii_digit)).then_some((
                end,
                Finding::ProviderKey {
                    provider: Provider::Slack,
                },
            ))
        }
        "AIza" => {
            if !at_start {
                return None;
            }
            let end = run(b, after, is_token_byte);
            (end - after == 35 && random_looking(&b[after..end], 35)).then_some((
                end,
                Finding::ProviderKey {
                    provider: Provider::Google,
                },
            ))
        }
        "hf_" => {
            // Hugging Face tokens are letters only: 34 of them, both cases.
            if !at_start {
                return None;
            }
            let end = run(b, after, is_alnum);
            let body = &b[after..end];
            (body.len() == 34
                && body.iter().any(u8::is_ascii_lowercase)
                && body.iter().any(u8::is_ascii_uppercase))
            .then_some((
                end,
                Finding::ProviderKey {
                    provider: Provider::HuggingFace,
                },
            ))
        }
        "-----BEGIN " => private_key(text, after),
        "eyJ" if at_start => jwt(text, start),
        _ => None,
    }
}

/// `cpk_` + 32 base62 + a 6-character checksum. The checksum makes a chance match about one
/// in 5·10^10, so no word boundary is asked for: a key glued to other text is still a key.
fn carapace_key(text: &str, start: usize) -> Option<(usize, Finding)> {
    let end = start + api_key::KEY_LEN;
    let candidate = text.get(start..end)?;
    if !api_key::well_formed(candidate) {
        return None;
    }
    Some((
        end,
        Finding::CarapaceKey {
            prefix: api_key::public_prefix(candidate),
            hash: api_key::hash(candidate),
        },
    ))
}

/// The well-formed Carapace keys that start in `text[from..to]` (their prefix may run past
/// `to`), with where each ends.
fn keys_inside(text: &str, from: usize, to: usize) -> Vec<(usize, Finding)> {
    let window = (to + api_key::KEY_PREFIX.len() - 1).min(text.len());
    memchr::memmem::find_iter(&text.as_bytes()[from..window], api_key::KEY_PREFIX)
        .filter_map(|i| carapace_key(text, from + i))
        .collect()
}

/// A prefixed token: at a word start, at least `min` bytes of `allowed` after the prefix,
/// random-looking.
fn token(
    b: &[u8],
    at_start: bool,
    after: usize,
    min: usize,
    allowed: fn(u8) -> bool,
    provider: Provider,
) -> Option<(usize, Finding)> {
    if !at_start {
        return None;
    }
    let end = run(b, after, allowed);
    random_looking(&b[after..end], min).then_some((end, Finding::ProviderKey { provider }))
}

/// `-----BEGIN <label> PRIVATE KEY-----` up to its `-----END … PRIVATE KEY-----`. A block cut
/// short (no END) runs over the base64 lines that follow, so a half-pasted key goes too.
fn private_key(text: &str, after: usize) -> Option<(usize, Finding)> {
    let b = text.as_bytes();
    let label_end = run(b, after, |c| c.is_ascii_uppercase() || c == b' ');
    let label = &b[after..label_end];
    if !private_label(label) || !b[label_end..].starts_with(b"-----") {
        return None;
    }
    let body = label_end + 5;
    // The END is looked for within a private key's size, so a text of many headers without
    // one costs a bounded search per header, not one to the end of the text each.
    let window = &b[body..b.len().min(body + MAX_PEM_BYTES)];
    let finder = memchr::memmem::find(window, b"-----END ");
    if let Some(i) = finder {
        let end_label = body + i + 9;
        let e = run(b, end_label, |c| c.is_ascii_uppercase() || c == b' ');
        if private_label(&b[end_label..e]) && b[e..].starts_with(b"-----") {
            return Some((e + 5, Finding::PrivateKey));
        }
    }
    // No END: the lines of base64 after the header, whether the line breaks are real or
    // written as `\n` inside a JSON string.
    let mut end = body;
    while let Some(next) = line_break(b, end) {
        let line_end = run(b, next, |c| {
            c.is_ascii_alphanumeric() || b"+/=".contains(&c)
        });
        if line_end == next {
            break;
        }
        end = line_end;
    }
    Some((end, Finding::PrivateKey))
}

/// Larger than any PEM or PGP private key block in use (an RSA-16384 PEM is under 13 KiB).
const MAX_PEM_BYTES: usize = 32 * 1024;

/// `PRIVATE KEY` with any qualifier before it (`RSA`, `OPENSSH`, `ENCRYPTED`…), or PGP's
/// `PRIVATE KEY BLOCK`.
fn private_label(label: &[u8]) -> bool {
    label.ends_with(b"PRIVATE KEY") || label.ends_with(b"PRIVATE KEY BLOCK")
}

/// The position after a line break at `i` (`\n`, `\r\n`, or a literal `\n`), if one is there.
fn line_break(b: &[u8], i: usize) -> Option<usize> {
    let rest = b.get(i..)?;
    [&b"\r\n"[..], b"\n", b"\\r\\n", b"\\n"]
        .iter()
        .find(|p| rest.starts_with(p))
        .map(|p| i + p.len())
}

/// Three base64url segments, the first decoding to a JSON object that names `alg`.
fn jwt(text: &str, start: usize) -> Option<(usize, Finding)> {
    let b = text.as_bytes();
    let h_end = run(b, start, is_b64url);
    if b.get(h_end) != Some(&b'.') {
        return None;
    }
    let p_end = run(b, h_end + 1, is_b64url);
    if p_end == h_end + 1 || b.get(p_end) != Some(&b'.') {
        return None;
    }
    let s_end = run(b, p_end + 1, is_b64url);
    if s_end == p_end + 1 {
        return None;
    }
    let header = URL_SAFE_NO_PAD.decode(&b[start..h_end]).ok()?;
    let header: serde_json::Value = serde_json::from_slice(&header).ok()?;
    header.get("alg")?;
    Some((s_end, Finding::Jwt))
}

/// Whether a secret may start at `i`: not in the middle of a word or token.
fn boundary_before(b: &[u8], i: usize) -> bool {
    i == 0 || !is_token_byte(b[i - 1])
}

/// The end of the run of `allowed` bytes from `i`.
fn run(b: &[u8], i: usize, allowed: impl Fn(u8) -> bool) -> usize {
    let mut j = i;
    while j < b.len() && allowed(b[j]) {
        j += 1;
    }
    j
}

/// At least `min` bytes mixing lower case, upper case and digits, as generated keys do and
/// words, identifiers and hex hashes do not.
fn random_looking(body: &[u8], min: usize) -> bool {
    body.len() >= min
        && body.iter().any(u8::is_ascii_lowercase)
        && body.iter().any(u8::is_ascii_uppercase)
        && body.iter().any(u8::is_ascii_digit)
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_alphanumeric()
}

fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn is_token_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

fn is_b64url(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLEAN: &str = include_str!("../../tests/data/leaks_clean.txt");
    const POSITIVE: &str = include_str!("../../tests/data/leaks_positive.txt");

    fn entries(corpus: &str) -> impl Iterator<Item = &str> {
        corpus.split("\n%%\n").map(|e| e.trim_end_matches('\n'))
    }

    fn kinds(s: &Scanned) -> Vec<&'static str> {
        s.findings.iter().map(Finding::kind).collect()
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        let mut n = 0;
        for e in entries(CLEAN) {
            let s = scan(e);
            assert!(
                matches!(s.text, Cow::Borrowed(_)) && s.findings.is_empty(),
                "changed: {e:?} -> {:?}",
                s.findings
            );
            n += 1;
        }
        assert!(n >= 200, "the clean corpus has {n} entries");
    }

    #[test]
    fn every_positive_is_found_and_redacted() {
        let mut n = 0;
        for e in entries(POSITIVE) {
            let (head, body) = e.split_once('\n').expect("expect line");
            let want: Vec<&str> = head.trim_start_matches("expect: ").split(',').collect();
            let mut keys = Vec::new();
            let mut text = body.to_string();
            while text.contains("{CPK}") {
                let k = api_key::generate().secret;
                text = text.replacen("{CPK}", &k, 1);
                keys.push(k);
            }
            let s = scan(&text);
            assert_eq!(kinds(&s), want, "in {text:?}");
            for k in &keys {
                assert!(!s.text.contains(k.as_str()), "key left in {:?}", s.text);
            }
            for f in &s.findings {
                assert!(s.text.contains(f.marker()));
            }
            assert!(
                s.text.chars().count() <= text.chars().count(),
                "redaction must not grow the text past its limit"
            );
            // Redacting twice changes nothing more.
            let again = scan(&s.text);
            assert!(again.findings.is_empty(), "{:?}", s.text);
            n += 1;
        }
        assert!(n >= 25);
    }

    #[test]
    fn a_carapace_key_finding_carries_its_prefix_and_hash_only() {
        let k = api_key::generate();
        let text = format!("here: {}", k.secret);
        let s = scan(&text);
        assert_eq!(s.text, format!("here: {CARAPACE_KEY_MARKER}"));
        assert_eq!(
            s.findings,
            vec![Finding::CarapaceKey {
                prefix: k.prefix.clone(),
                hash: k.hash.clone()
            }]
        );
        assert!(!format!("{:?}", s.findings).contains(&k.secret[12..]));
    }

    #[test]
    fn a_key_with_a_wrong_checksum_is_not_a_carapace_key() {
        // Not a key the hub would ever accept, so there is nothing to revoke and nothing to
        // hide: it is left as written.
        let k = api_key::generate().secret;
        let last = k.as_bytes()[k.len() - 1];
        let bad = format!(
            "{}{}",
            &k[..k.len() - 1],
            if last == b'a' { 'b' } else { 'a' }
        );
        assert!(!api_key::well_formed(&bad));
        let text = format!("try {bad} now");
        let s = scan(&text);
        assert!(s.findings.is_empty());
        assert_eq!(s.text, text);
    }

    #[test]
    fn keys_wrapped_in_punctuation_are_found_and_a_split_key_is_not_a_key() {
        let k = api_key::generate().secret;
        for wrap in [
            format!("'{k}'"),
            format!("<{k}>"),
            format!("key={k};"),
            format!("[{k}](https://x)"),
            format!("{k}..."),
            format!("é{k}é"),
            format!("\n{k}\n"),
        ] {
            let s = scan(&wrap);
            assert_eq!(kinds(&s), ["carapace_key"], "{wrap:?}");
            assert!(!s.text.contains(&k));
        }
        // Split by punctuation it no longer exchanges for a token, and the halves do not
        // carry a checksum: nothing to revoke. The whole string is left alone.
        let split = format!("{}-{}", &k[..20], &k[20..]);
        assert!(scan(&split).findings.is_empty());
        let spaced = format!("{} {}", &k[..20], &k[20..]);
        assert!(scan(&spaced).findings.is_empty());
    }

    #[test]
    fn utf8_edges_never_panic_and_keep_the_text() {
        let k = api_key::generate().secret;
        let samples = [
            String::new(),
            "c".into(),
            "cpk_".into(),
            "cpk_é".into(),
            format!("{}é", &k[..KEY_LEN_MINUS_ONE]),
            format!("{}🦀", &k[..30]),
            "sk-🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀".into(),
            "AKIA€€€€€€€€€€€€€€€€".into(),
            "eyJ🦀.🦀.🦀".into(),
            "eyJhbGciOiJIUzI1NiJ9.🦀.x".into(),
            "-----BEGIN 🦀 PRIVATE KEY-----".into(),
            "-----BEGIN PRIVATE KEY-----".into(),
            "-----BEGIN PRIVATE KEY-----\\".into(),
            "-----BEGIN PRIVATE KEY----".into(),
            "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY----".into(),
            "xoxb-".into(),
            "ghp_".into(),
            "\u{0}cpk_\u{0}".into(),
        ];
        for t in &samples {
            let s = scan(t);
            assert!(std::str::from_utf8(s.text.as_bytes()).is_ok());
        }
        // Every prefix of a text dense with secrets and multibyte characters.
        let dense = format!(
            "é{k}🦀sk-{}ü-----BEGIN PRIVATE KEY-----\nQUJD\n-----END PRIVATE KEY-----ß",
            "aB3".repeat(10)
        );
        for (i, _) in dense.char_indices() {
            let _ = scan(&dense[..i]);
            let _ = scan(&dense[i..]);
        }
    }

    const KEY_LEN_MINUS_ONE: usize = api_key::KEY_LEN - 1;

    #[test]
    fn random_mixes_of_trigger_fragments_never_panic_and_redact_to_a_fixed_point() {
        let k = api_key::generate().secret;
        let pieces: Vec<&str> = vec![
            "cpk_",
            &k,
            &k[..20],
            "sk-",
            "sk-ant-",
            "AKIA",
            "ASIA",
            "ghp_",
            "github_pat_",
            "xoxb-",
            "AIza",
            "hf_",
            "-----BEGIN ",
            "PRIVATE KEY-----",
            "-----END ",
            "\\n",
            "\n",
            "eyJ",
            "eyJhbGciOiJIUzI1NiJ9",
            ".",
            "-",
            "_",
            "aB3",
            "Z9q",
            "QUJD",
            "=",
            " ",
            "é",
            "🦀",
            "\u{301}",
            "ß",
            "0123456789",
            "ABCDEFGHIJKLMNOP",
        ];
        // xorshift: reproducible, no dependency.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let n = (next() % 12) as usize;
            let text: String = (0..n)
                .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                .collect();
            let s = scan(&text);
            assert_eq!(s.findings.is_empty(), matches!(s.text, Cow::Borrowed(_)));
            assert!(!s.text.contains(k.as_str()), "{text:?}");
            let again = scan(&s.text);
            assert!(again.findings.is_empty(), "{text:?} -> {:?}", s.text);
        }
    }

    #[test]
    fn near_misses_of_each_shape_are_not_secrets() {
        for t in [
            "sk-abcdefghijklmnopqrstuvwxyz", // no digits or capitals: a word chain
            "desk-Ab3Cd4Ef5Gh6Ij7Kl8Mn9Op0Qr", // inside a word
            "AKIAIOSFODNN7EXAMPLEX",         // 17 characters
            "AKIAIOSFODNN7EXAMPL",           // 15 characters
            "ghp_short1A",
            "eyJ.eyJ.eyJ",
            "eyJhIjoxfQ.eyJiIjoyfQ.c2ln", // header without alg
            "-----BEGIN PUBLIC KEY-----\nQUJD\n-----END PUBLIC KEY-----",
            "xoxb-not-a-token-at-all-words",
        ] {
            let s = scan(t);
            assert!(s.findings.is_empty(), "{t:?}: {:?}", s.findings);
        }
    }

    #[test]
    fn a_truncated_private_key_is_redacted_up_to_its_last_base64_line() {
        let s = scan("-----BEGIN PRIVATE KEY-----\nQUJDRA==\nRUZH\n\nThanks, crab.");
        assert_eq!(s.text, format!("{PRIVATE_KEY_MARKER}\n\nThanks, crab."));
    }

    // Found by the `secrets` fuzz target: a key glued to the end of another token was hidden
    // under that token's marker but never named, so it would not have been revoked.
    #[test]
    fn a_key_glued_inside_another_token_is_named_and_wholly_hidden() {
        let key = api_key::generate();
        let body = &key.secret[api_key::KEY_PREFIX.len()..];
        for glued in [
            // GitLab's alphabet takes the whole key into its token.
            format!("glpat-abcdefghij1234567890{}", key.secret),
            // GitHub's stops at the key's `_`: the rest of the key must not survive.
            format!(
                "ghp_{}cpk_{body} done",
                "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE3fG5"
            ),
        ] {
            let s = scan(&glued);
            assert!(!s.text.contains(body), "the key survived: {:?}", s.text);
            assert!(
                s.findings
                    .iter()
                    .any(|f| matches!(f, Finding::CarapaceKey { hash, .. } if *hash == key.hash)),
                "not named in {glued:?}: {:?}",
                s.findings
            );
        }
    }
}
