//! Agent and owner JWTs: EdDSA (Ed25519) only, `kid` from the key ring only, `exp`, `nbf`,
//! `aud` and `iss` required, at most 30 s of clock skew. Agent and owner tokens have
//! different audiences, so one can never stand in for the other.

use super::AuthError;
use super::keyring::KeyRing;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};

pub const ISSUER: &str = "carapace";
pub const AGENT_AUDIENCE: &str = "carapace-hub";
pub const OWNER_AUDIENCE: &str = "carapace-owner";
pub const LEEWAY_SECS: u64 = 30;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentClaims {
    pub iss: String,
    pub aud: String,
    /// Agent id.
    pub sub: String,
    pub handle: String,
    pub scopes: Vec<String>,
    pub topics: Vec<String>,
    /// The API key id this token was minted from; revoking that key kills the token.
    pub cred: String,
    pub jti: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OwnerClaims {
    pub iss: String,
    pub aud: String,
    /// Owner id.
    pub sub: String,
    pub handle: String,
    pub role: String,
    pub jti: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    /// The owner's token epoch at login; a sign-out moves the owner's on (0 for tokens from
    /// before sign-out existed, which the first sign-out also ends).
    #[serde(default)]
    pub epoch: i64,
}

/// Signs claims with the newest signing key, naming it in `kid`.
pub fn sign<T: Serialize>(ring: &KeyRing, claims: &T) -> Result<String, AuthError> {
    let key = ring.current_signing();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.encoding)
        .map_err(|_| AuthError::InvalidToken("signing failed"))
}

fn verify<T: serde::de::DeserializeOwned>(
    ring: &KeyRing,
    token: &str,
    audience: &str,
) -> Result<T, AuthError> {
    if token.len() > 8192 {
        return Err(AuthError::InvalidToken("token too long"));
    }
    let header =
        jsonwebtoken::decode_header(token).map_err(|_| AuthError::InvalidToken("malformed"))?;
    if header.alg != Algorithm::EdDSA {
        return Err(AuthError::InvalidToken("algorithm not allowed"));
    }
    let kid = header.kid.ok_or(AuthError::InvalidToken("missing kid"))?;
    let key = ring
        .signing_key(&kid)
        .ok_or(AuthError::InvalidToken("unknown kid"))?;
    let mut v = Validation::new(Algorithm::EdDSA);
    v.leeway = LEEWAY_SECS;
    v.validate_nbf = true;
    v.set_audience(&[audience]);
    v.set_issuer(&[ISSUER]);
    v.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
    jsonwebtoken::decode::<T>(token, &key.decoding, &v)
        .map(|d| d.claims)
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            AuthError::InvalidToken(match e.kind() {
                ErrorKind::ExpiredSignature => "expired",
                ErrorKind::ImmatureSignature => "not yet valid",
                ErrorKind::InvalidAudience => "wrong audience",
                ErrorKind::InvalidIssuer => "wrong issuer",
                ErrorKind::InvalidSignature => "bad signature",
                _ => "invalid",
            })
        })
}

pub fn verify_agent(ring: &KeyRing, token: &str) -> Result<AgentClaims, AuthError> {
    verify(ring, token, AGENT_AUDIENCE)
}

pub fn verify_owner(ring: &KeyRing, token: &str) -> Result<OwnerClaims, AuthError> {
    verify(ring, token, OWNER_AUDIENCE)
}

/// The public keys as a JWKS document.
pub fn jwks(ring: &KeyRing) -> Jwks {
    let keys = ring
        .signing_keys()
        .map(|k| Jwk {
            kty: "OKP",
            crv: "Ed25519",
            alg: "EdDSA",
            usage: "sig",
            kid: k.kid.clone(),
            x: k.public_x.clone(),
        })
        .collect();
    Jwks { keys }
}

/// The public signing keys, as RFC 7517 JSON Web Keys.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// One Ed25519 public key (RFC 8037).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Jwk {
    pub kty: &'static str,
    pub crv: &'static str,
    pub alg: &'static str,
    #[serde(rename = "use")]
    pub usage: &'static str,
    pub kid: String,
    pub x: String,
}
