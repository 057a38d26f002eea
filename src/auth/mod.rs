//! Credentials and secrets: the key ring loaded from the secrets dir, agent and owner JWTs,
//! API keys, password hashing, and sealed (encrypted) fields with their blind index.
//! Nothing here touches the database; the service layer decides what is stored.

pub mod api_key;
pub mod jwt;
pub mod keyring;
pub mod leaks;
pub mod password;
pub mod sealed;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum AuthError {
    #[error("invalid token: {0}")]
    InvalidToken(&'static str),
    #[error("secrets: {0}")]
    Secrets(String),
    #[error("decryption failed")]
    Decrypt,
    #[error("password hashing failed")]
    Hash,
}

/// Cryptographically secure random bytes. The OS generator failing is unrecoverable.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("OS random generator unavailable");
    b
}
