//! The key ring: Ed25519 signing keys (JWTs), data keys (AEAD for sealed fields) and
//! blind-index keys (HMAC for the email lookup and the audit chain), each a file in the
//! secrets dir with mode 0600, never in the database. The newest signing and data key sign and
//! encrypt; every key kept in the dir still verifies and decrypts, which is how rotation works
//! without downtime. Which blind-index key is in use is the database's to say (it names the
//! key its indexes and chain are under, see `index_rotation`): a new one in the dir waits
//! until `carapace keys rotate-index` moves everything onto it.

use super::{AuthError, random_bytes};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use jsonwebtoken::{DecodingKey, EncodingKey};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// A signing key: its id, the encoding key, and the public half for JWKS and verification.
pub struct SigningEntry {
    pub kid: String,
    pub encoding: EncodingKey,
    pub decoding: DecodingKey,
    /// base64url of the raw 32-byte public key, the JWK `x`.
    pub public_x: String,
}

pub struct KeyRing {
    /// kid → key; kids sort by creation time, so the last is the newest.
    signing: BTreeMap<String, SigningEntry>,
    data: BTreeMap<String, [u8; 32]>,
    /// id → key: `blind-index` (the first, from `blind-index.key`) sorts before every
    /// `index-<kid>`, so here too the last is the newest.
    index: BTreeMap<String, [u8; 32]>,
}

/// The id of the blind-index key every deployment starts with (`blind-index.key`), and the
/// one in use while the database names none.
pub const FIRST_INDEX_ID: &str = "blind-index";

const SIGNING_PREFIX: &str = "signing-";
const DATA_PREFIX: &str = "data-";
const INDEX_FILE: &str = "blind-index.key";
const INDEX_PREFIX: &str = "index-";
const KEY_SUFFIX: &str = ".key";

/// PKCS#8 v1 wrapping of an Ed25519 seed (RFC 8410): a fixed 16-byte header, then the seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

impl KeyRing {
    /// Loads every key in `dir`, generating the missing kinds first (first start).
    pub fn load_or_init(dir: &Path) -> Result<KeyRing, AuthError> {
        let ring = Self::load(dir);
        match ring {
            Ok(r) => Ok(r),
            Err(_) => {
                generate(dir, false)?;
                Self::load(dir)
            }
        }
    }

    /// Loads the keys in `dir`; fails if a kind is missing.
    pub fn load(dir: &Path) -> Result<KeyRing, AuthError> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| AuthError::Secrets(format!("cannot read {}: {e}", dir.display())))?;
        let tighten = |path: &Path, mode| {
            crate::private_fs::tighten(path, mode)
                .map_err(|e| AuthError::Secrets(format!("cannot read {}: {e}", path.display())))
        };
        tighten(dir, 0o700)?;
        let mut signing = BTreeMap::new();
        let mut data = BTreeMap::new();
        let mut index = BTreeMap::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(stem) = name.strip_suffix(KEY_SUFFIX) else {
                continue;
            };
            tighten(&entry.path(), 0o600)?;
            let read = || read_key_file(&entry.path());
            if let Some(kid) = stem.strip_prefix(SIGNING_PREFIX) {
                signing.insert(kid.to_string(), signing_entry(kid, read()?));
            } else if let Some(kid) = stem.strip_prefix(DATA_PREFIX) {
                data.insert(kid.to_string(), read()?);
            } else if stem.starts_with(INDEX_PREFIX) {
                index.insert(stem.to_string(), read()?);
            } else if name == INDEX_FILE {
                index.insert(FIRST_INDEX_ID.to_string(), read()?);
            }
        }
        if signing.is_empty() || data.is_empty() {
            return Err(AuthError::Secrets(format!(
                "no signing or data key in {}",
                dir.display()
            )));
        }
        if index.is_empty() {
            return Err(AuthError::Secrets(format!(
                "no blind-index key in {}",
                dir.display()
            )));
        }
        Ok(KeyRing {
            signing,
            data,
            index,
        })
    }

    pub fn current_signing(&self) -> &SigningEntry {
        self.signing
            .values()
            .next_back()
            .expect("load guarantees one signing key")
    }

    pub fn signing_key(&self, kid: &str) -> Option<&SigningEntry> {
        self.signing.get(kid)
    }

    pub fn signing_keys(&self) -> impl Iterator<Item = &SigningEntry> {
        self.signing.values()
    }

    pub fn current_data_key(&self) -> (&str, &[u8; 32]) {
        let (kid, key) = self
            .data
            .iter()
            .next_back()
            .expect("load guarantees one data key");
        (kid.as_str(), key)
    }

    pub fn data_key(&self, kid: &str) -> Option<&[u8; 32]> {
        self.data.get(kid)
    }

    pub fn index_key(&self, id: &str) -> Option<&[u8; 32]> {
        self.index.get(id)
    }

    /// Every blind-index key, oldest first.
    pub fn index_keys(&self) -> impl Iterator<Item = (&str, &[u8; 32])> {
        self.index.iter().map(|(id, k)| (id.as_str(), k))
    }

    pub fn newest_index_id(&self) -> &str {
        self.index
            .keys()
            .next_back()
            .expect("load guarantees one blind-index key")
    }
}

fn signing_entry(kid: &str, seed: [u8; 32]) -> SigningEntry {
    let mut pkcs8 = Vec::with_capacity(48);
    pkcs8.extend_from_slice(&ED25519_PKCS8_PREFIX);
    pkcs8.extend_from_slice(&seed);
    let public = SigningKey::from_bytes(&seed).verifying_key().to_bytes();
    let public_x = URL_SAFE_NO_PAD.encode(public);
    SigningEntry {
        kid: kid.to_string(),
        encoding: EncodingKey::from_ed_der(&pkcs8),
        decoding: DecodingKey::from_ed_components(&public_x)
            .expect("a freshly encoded public key decodes"),
        public_x,
    }
}

fn read_key_file(path: &Path) -> Result<[u8; 32], AuthError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AuthError::Secrets(format!("cannot read {}: {e}", path.display())))?;
    let bytes = hex::decode(text.trim())
        .map_err(|_| AuthError::Secrets(format!("{} is not hex", path.display())))?;
    bytes
        .try_into()
        .map_err(|_| AuthError::Secrets(format!("{} is not 32 bytes", path.display())))
}

fn new_kid() -> String {
    let now = time::OffsetDateTime::now_utc();
    let suffix: [u8; 3] = random_bytes();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}{:03}-{}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond(),
        hex::encode(suffix)
    )
}

fn write_secret(path: &Path, key: &[u8; 32]) -> Result<(), AuthError> {
    let err =
        |e: std::io::Error| AuthError::Secrets(format!("cannot write {}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(format!("{}\n", hex::encode(key)).as_bytes())
        .map_err(err)?;
    f.sync_all().map_err(err)
}

/// Writes keys into `dir` (created with mode 0700). With `rotate`, always adds a new
/// signing, data and blind-index key (the last unused until `carapace keys rotate-index`);
/// otherwise only the kinds that are missing. Existing keys are kept.
/// Returns the kids written.
pub fn generate(dir: &Path, rotate: bool) -> Result<Vec<String>, AuthError> {
    crate::private_fs::private_dir(dir)
        .map_err(|e| AuthError::Secrets(format!("cannot create {}: {e}", dir.display())))?;
    let existing: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| AuthError::Secrets(e.to_string()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    let has = |prefix: &str| {
        existing
            .iter()
            .any(|n| n.starts_with(prefix) && n.ends_with(KEY_SUFFIX))
    };
    let mut written = Vec::new();
    let kid = new_kid();
    if rotate || !has(SIGNING_PREFIX) {
        write_secret(
            &dir.join(format!("{SIGNING_PREFIX}{kid}{KEY_SUFFIX}")),
            &random_bytes(),
        )?;
        written.push(format!("{SIGNING_PREFIX}{kid}"));
    }
    if rotate || !has(DATA_PREFIX) {
        write_secret(
            &dir.join(format!("{DATA_PREFIX}{kid}{KEY_SUFFIX}")),
            &random_bytes(),
        )?;
        written.push(format!("{DATA_PREFIX}{kid}"));
    }
    if !existing.iter().any(|n| n == INDEX_FILE) && !has(INDEX_PREFIX) {
        write_secret(&dir.join(INDEX_FILE), &random_bytes())?;
        written.push(FIRST_INDEX_ID.into());
    } else if rotate {
        write_secret(
            &dir.join(format!("{INDEX_PREFIX}{kid}{KEY_SUFFIX}")),
            &random_bytes(),
        )?;
        written.push(format!("{INDEX_PREFIX}{kid}"));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generate_then_rotate_keeps_old_keys() {
        let dir = std::env::temp_dir().join(format!(
            "carapace-keys-{}",
            hex::encode(random_bytes::<6>())
        ));
        let ring = KeyRing::load_or_init(&dir).unwrap();
        let first = ring.current_signing().kid.clone();
        std::thread::sleep(std::time::Duration::from_millis(5));
        generate(&dir, true).unwrap();
        let ring = KeyRing::load(&dir).unwrap();
        assert_ne!(ring.current_signing().kid, first);
        assert!(ring.signing_key(&first).is_some());
        // The new blind-index key sorts after the first one, which stays.
        let ids: Vec<&str> = ring.index_keys().map(|(id, _)| id).collect();
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0], FIRST_INDEX_ID);
        assert_eq!(ring.newest_index_id(), ids[1]);
        assert!(ids[1].starts_with(INDEX_PREFIX));
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
