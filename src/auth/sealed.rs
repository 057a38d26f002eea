//! Sealed fields: XChaCha20-Poly1305 with the newest data key, the key id stored in the
//! blob so older keys still open what they sealed; and a keyed blind index (HMAC-SHA256) so
//! an encrypted email can still be looked up. Every seal binds a context string (AAD), so a
//! ciphertext moved to another column or row kind does not open.

use super::keyring::KeyRing;
use super::{AuthError, random_bytes};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const VERSION: u8 = 1;

/// Layout: version (1) | kid length (1) | kid | nonce (24) | ciphertext+tag.
pub fn seal(ring: &KeyRing, context: &str, plaintext: &[u8]) -> Vec<u8> {
    let (kid, key) = ring.current_data_key();
    let cipher = XChaCha20Poly1305::new(key.into());
    let nonce_bytes = random_bytes::<24>();
    let ct = cipher
        .encrypt(
            XNonce::from_slice(&nonce_bytes),
            Payload {
                msg: plaintext,
                aad: context.as_bytes(),
            },
        )
        .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
    let mut out = Vec::with_capacity(2 + kid.len() + 24 + ct.len());
    out.push(VERSION);
    out.push(kid.len() as u8);
    out.extend_from_slice(kid.as_bytes());
    out.extend_from_slice(&nonce_bytes);
    out.extend_from_slice(&ct);
    out
}

pub fn open(ring: &KeyRing, context: &str, blob: &[u8]) -> Result<Vec<u8>, AuthError> {
    let (&version, rest) = blob.split_first().ok_or(AuthError::Decrypt)?;
    let (&kid_len, rest) = rest.split_first().ok_or(AuthError::Decrypt)?;
    if version != VERSION || rest.len() < kid_len as usize + 24 {
        return Err(AuthError::Decrypt);
    }
    let (kid, rest) = rest.split_at(kid_len as usize);
    let (nonce, ct) = rest.split_at(24);
    let kid = std::str::from_utf8(kid).map_err(|_| AuthError::Decrypt)?;
    let key = ring.data_key(kid).ok_or(AuthError::Decrypt)?;
    XChaCha20Poly1305::new(key.into())
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ct,
                aad: context.as_bytes(),
            },
        )
        .map_err(|_| AuthError::Decrypt)
}

pub fn open_string(ring: &KeyRing, context: &str, blob: &[u8]) -> Result<String, AuthError> {
    String::from_utf8(open(ring, context, blob)?).map_err(|_| AuthError::Decrypt)
}

/// The blind index of an email: HMAC-SHA256 under a blind-index key of the normalised address.
pub fn email_index(key: &[u8; 32], email: &str) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(b"owner-email\0");
    mac.update(email.trim().to_lowercase().as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// The email's blind index under every key in the ring, for a lookup: while a rotation is
/// under way the rows are under the old key or the new one, and either must find the owner.
pub fn email_indexes(ring: &KeyRing, email: &str) -> Vec<Vec<u8>> {
    ring.index_keys()
        .map(|(_, key)| email_index(key, email))
        .collect()
}

/// The id of the data key a blob was sealed with, if it is a blob at all.
pub fn kid_of(blob: &[u8]) -> Option<&str> {
    let (&version, rest) = blob.split_first()?;
    let (&kid_len, rest) = rest.split_first()?;
    if version != VERSION {
        return None;
    }
    std::str::from_utf8(rest.get(..kid_len as usize)?).ok()
}
