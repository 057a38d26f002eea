//! Owner passwords: argon2id with the crate's recommended parameters, PHC strings at rest.
//! Hashing is deliberately slow and takes ~19 MiB: callers run it on the few hashing threads
//! (`abuse::hashing`), so at most that many buffers exist at once; each hash computes in a
//! buffer of its own, mapped for it and handed back to the system when it ends (see
//! `memory::return_large_blocks`), so an idle replica holds none.

use super::AuthError;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

pub const MIN_PASSWORD_CHARS: usize = 12;
pub const MAX_PASSWORD_CHARS: usize = 1024;

/// The largest argon2 memory cost (KiB) a stored hash may ask for: ours use the default.
const MAX_M_COST: u32 = 64 * 1024;

/// `argon` over `password` and `salt` into `out`.
fn compute(argon: &Argon2, password: &[u8], salt: &[u8], out: &mut [u8]) -> Result<(), AuthError> {
    if argon.params().m_cost() > MAX_M_COST {
        return Err(AuthError::Hash);
    }
    let mut blocks = vec![Block::default(); argon.params().block_count()];
    argon
        .hash_password_into_with_memory(password, salt, out, &mut blocks)
        .map_err(|_| AuthError::Hash)
}

pub fn hash(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::encode_b64(&super::random_bytes::<16>()).map_err(|_| AuthError::Hash)?;
    let argon = Argon2::default();
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt
        .as_salt()
        .decode_b64(&mut salt_buf)
        .map_err(|_| AuthError::Hash)?;
    let len = argon
        .params()
        .output_len()
        .unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let output = Output::init_with(len, |out| {
        compute(&argon, password.as_bytes(), salt_bytes, out)
            .map_err(|_| argon2::password_hash::Error::Crypto)
    })
    .map_err(|_| AuthError::Hash)?;
    let phc = PasswordHash {
        algorithm: Algorithm::default().ident(),
        version: Some(Version::default().into()),
        params: ParamsString::try_from(argon.params()).map_err(|_| AuthError::Hash)?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

pub fn verify(password: &str, phc: &str) -> bool {
    let Ok(h) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (h.salt, h.hash) else {
        return false;
    };
    let (Ok(alg), Ok(params)) = (Algorithm::try_from(h.algorithm), Params::try_from(&h)) else {
        return false;
    };
    let version = h
        .version
        .map(Version::try_from)
        .transpose()
        .ok()
        .flatten()
        .unwrap_or_default();
    let mut salt_buf = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let argon = Argon2::new(alg, version, params);
    let mut out = vec![0u8; expected.len()];
    if compute(&argon, password.as_bytes(), salt_bytes, &mut out).is_err() {
        return false;
    }
    // `Output`'s comparison is constant-time.
    Output::new(&out).is_ok_and(|computed| computed == expected)
}

/// A fixed hash to verify against when no account matches, so that a login for an unknown
/// email costs as much as one for a known email and timing reveals nothing.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash("carapace-dummy-password").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::PasswordVerifier;

    #[test]
    fn hashes_verify_here_and_with_the_crate_and_the_other_way_round() {
        let ours = hash("a long enough password").unwrap();
        assert!(verify("a long enough password", &ours));
        assert!(!verify("another password here", &ours));
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"a long enough password", &parsed)
                .is_ok()
        );
        use argon2::PasswordHasher;
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let theirs = Argon2::default()
            .hash_password(b"a long enough password", &salt)
            .unwrap()
            .to_string();
        assert!(verify("a long enough password", &theirs));
        assert!(!verify("a long enough password", "not a phc string"));
    }
}
