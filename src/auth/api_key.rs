//! API keys: `cpk_` + 32 random base62 characters + a 6-character base62 CRC32 checksum, so
//! secret scanners can recognise a leaked key offline. Only the SHA-256 of the whole key and
//! a public prefix are ever stored; the key itself is shown once.

use super::random_bytes;
use sha2::{Digest, Sha256};

pub const KEY_PREFIX: &str = "cpk_";
const BODY_LEN: usize = 32;
const CHECK_LEN: usize = 6;
pub const KEY_LEN: usize = KEY_PREFIX.len() + BODY_LEN + CHECK_LEN;
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A freshly generated key: the secret (shown once), its hash and its public prefix.
pub struct NewKey {
    pub secret: String,
    pub hash: Vec<u8>,
    pub prefix: String,
}

pub fn generate() -> NewKey {
    let mut body = String::with_capacity(BODY_LEN);
    while body.len() < BODY_LEN {
        // Rejection sampling keeps every character uniformly likely: 248 = 4 * 62.
        for b in random_bytes::<48>() {
            if b < 248 && body.len() < BODY_LEN {
                body.push(ALPHABET[(b % 62) as usize] as char);
            }
        }
    }
    let secret = format!("{KEY_PREFIX}{body}{}", checksum(&body));
    NewKey {
        hash: hash(&secret),
        prefix: public_prefix(&secret),
        secret,
    }
}

/// CRC32 (IEEE) of the body, as base62, left-padded with `0` to six characters.
pub fn checksum(body: &str) -> String {
    let mut n = crc32fast::hash(body.as_bytes()) as u64;
    let mut out = [b'0'; CHECK_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out.to_vec()).expect("alphabet is ASCII")
}

/// Whether `s` has the shape of a key and its checksum matches.
pub fn well_formed(s: &str) -> bool {
    let Some(rest) = s.strip_prefix(KEY_PREFIX) else {
        return false;
    };
    if rest.len() != BODY_LEN + CHECK_LEN || !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    let (body, check) = rest.split_at(BODY_LEN);
    checksum(body) == check
}

pub fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// The first eight characters after `cpk_`: enough to tell keys apart in a listing,
/// far too little to guess the rest.
pub fn public_prefix(secret: &str) -> String {
    secret[KEY_PREFIX.len()..KEY_PREFIX.len() + 8].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_spec_shape() {
        for _ in 0..50 {
            let k = generate();
            assert_eq!(k.secret.len(), KEY_LEN);
            assert!(well_formed(&k.secret), "{}", k.secret);
            assert_eq!(k.hash.len(), 32);
            assert!(k.secret[4..].starts_with(&k.prefix));
        }
    }

    #[test]
    fn checksum_matches_an_independent_computation() {
        // CRC32("00000000000000000000000000000000") computed independently, then base62.
        let body = "0".repeat(32);
        let crc = crc32fast::hash(body.as_bytes()) as u64;
        let mut n = crc;
        let mut digits = Vec::new();
        while n > 0 {
            digits.push(ALPHABET[(n % 62) as usize] as char);
            n /= 62;
        }
        let s: String = digits.iter().rev().collect();
        assert_eq!(checksum(&body), format!("{s:0>6}"));
    }

    #[test]
    fn tampered_keys_are_not_well_formed() {
        let k = generate().secret;
        let mut bad = k.clone().into_bytes();
        bad[10] = if bad[10] == b'a' { b'b' } else { b'a' };
        assert!(!well_formed(std::str::from_utf8(&bad).unwrap()));
        assert!(!well_formed(&k[..k.len() - 1]));
        assert!(!well_formed("cpk_"));
        assert!(!well_formed(&k.replace("cpk_", "cpx_")));
    }
}
