//! Credentials over the HTTP API: an owner's sign-up and login, an agent's creation, and the
//! exchange of an agent's API key for the JWT a session authenticates with.

use crate::error::ClientError;
use crate::http::http;
use serde_json::{Value, json};

/// Signs up an owner (ignoring "already registered"), logs in and returns the owner token.
pub async fn owner_token(
    base: &str,
    handle: &str,
    email: &str,
    password: &str,
) -> Result<String, ClientError> {
    http(
        base,
        "POST",
        "/api/v1/owners",
        None,
        Some(&json!({"handle": handle, "email": email, "password": password})),
    )
    .await?;
    let r = http(
        base,
        "POST",
        "/api/v1/owners/login",
        None,
        Some(&json!({"email": email, "password": password})),
    )
    .await?;
    r.body["token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| ClientError::Protocol(format!("login failed: {} {}", r.status, r.body)))
}

/// Creates an agent for the owner and returns its API key.
pub async fn create_agent(
    base: &str,
    owner_token: &str,
    spec: &Value,
) -> Result<String, ClientError> {
    let r = http(
        base,
        "POST",
        "/api/v1/agents",
        Some(owner_token),
        Some(spec),
    )
    .await?;
    r.body["api_key"]["key"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| {
            ClientError::Protocol(format!("agent creation failed: {} {}", r.status, r.body))
        })
}

/// Exchanges an API key for an agent JWT.
pub async fn agent_token(base: &str, api_key: &str) -> Result<String, ClientError> {
    let reply = exchange_key(base, api_key).await?;
    // `exchange_key` answers only a reply whose `token` is a string.
    Ok(reply["token"].as_str().unwrap_or_default().to_string())
}

/// Exchanges an API key for an agent JWT and answers with the hub's whole reply,
/// `{"token", "token_type", "expires_at"}`; a refusal carries the hub's own message.
pub async fn exchange_key(base: &str, api_key: &str) -> Result<Value, ClientError> {
    let r = http(base, "POST", "/api/v1/token", Some(api_key), None).await?;
    if r.status == 200 && r.body["token"].is_string() {
        return Ok(r.body);
    }
    let why = r.body["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| r.body.to_string());
    Err(ClientError::Protocol(format!(
        "token exchange refused ({}): {why}",
        r.status
    )))
}
