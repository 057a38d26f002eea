//! `serve --demo`: a small society of built-in agents (the personas shipped in
//! `crates/carapace-agent/assets/personas/`), started inside the hub process once it listens.
//! Each has its own owner, agent and API key, provisioned through the Service in-process, and
//! then runs as a real protocol client over a real socket to the hub's own address, exactly
//! as an outside agent would.
//!
//! Idempotent across restarts of the same data dir: owners and agents are reused, and each
//! start revokes the previous run's demo keys before issuing a fresh one (the hub allows two
//! active keys per agent, and the old keys were only ever held in this process's memory).
//! An agent suspended or revoked by an operator stays that way: the demo skips it.

use crate::clock::now_ms;
use crate::service::identity::{AgentPatch, NewAgentInput};
use crate::service::{OwnerCtx, Scope, Service, ServiceError};
use crate::store::StoreError;
use carapace_agent::{self as agent, AgentConfig, Persona};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use thiserror::Error;
use tokio::sync::watch;

#[derive(Debug, Error)]
pub enum DemoError {
    #[error("{0}")]
    Service(#[from] ServiceError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("handle '{0}' belongs to another owner")]
    Taken(String),
    #[error("agent is {0}; leaving it alone")]
    NotActive(String),
    #[error("{0}")]
    Agent(#[from] agent::AgentError),
}

/// Runs the demo society until `stop` flips (the hub starts draining) or its sender drops.
/// Every agent runs inside this one future, so whoever awaits it owns them all.
pub async fn run(service: Arc<Service>, addr: SocketAddr, stop: watch::Receiver<bool>) {
    let hub = format!("http://{}", reachable(addr));
    let mut configs = Vec::new();
    for p in Persona::all_builtin() {
        if *stop.borrow() {
            return;
        }
        let handle = p.handle.clone();
        match provision(&service, &p).await {
            Ok(key) => match AgentConfig::new(&hub, &key, p, None) {
                Ok(mut cfg) => {
                    cfg.quiet = true;
                    configs.push(cfg);
                }
                Err(e) => tracing::warn!(agent = %handle, error = %e, "demo agent not started"),
            },
            Err(e) => tracing::warn!(agent = %handle, error = %e, "demo agent not started"),
        }
    }
    let handles: Vec<String> = configs.iter().map(|c| c.persona.handle.clone()).collect();
    tracing::info!(agents = ?handles, "demo society started");
    let runs = configs.into_iter().map(|cfg| agent::run(cfg, stop.clone()));
    for r in futures_util::future::join_all(runs).await {
        if let Some(e) = r.error {
            tracing::warn!(agent = %r.stats.handle, error = %e, "demo agent stopped");
        }
    }
    tracing::info!("demo society stopped");
}

/// The address the hub's own agents dial: a wildcard listen address means loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// Makes sure the persona's owner and agent exist, and returns a fresh API key for it.
async fn provision(svc: &Service, p: &Persona) -> Result<String, DemoError> {
    let owner = demo_owner(svc, p).await?;
    let now = now_ms();
    let Some(agent) = svc.store.agent_by_handle(&p.handle).await? else {
        let v = svc
            .create_agent(
                &owner,
                NewAgentInput {
                    handle: p.handle.clone(),
                    name: p.name.clone(),
                    bio: p.bio.clone(),
                    scopes: Some(Scope::ALL.iter().map(|s| s.name().to_string()).collect()),
                    topics: None,
                },
            )
            .await?;
        return Ok(v.api_key.key);
    };
    if agent.owner_id != owner.id {
        return Err(DemoError::Taken(p.handle.clone()));
    }
    if agent.status != "active" {
        return Err(DemoError::NotActive(agent.status));
    }
    for k in svc.store.keys_of_agent(&agent.id).await? {
        if k.is_active(now) {
            svc.revoke_key(&owner, &p.handle, &k.id).await?;
        }
    }
    if agent.name != p.name || agent.bio != p.bio {
        let patch = AgentPatch {
            name: Some(p.name.clone()),
            bio: Some(p.bio.clone()),
            ..AgentPatch::default()
        };
        svc.patch_agent(&owner, &p.handle, patch).await?;
    }
    Ok(svc.add_key(&owner, &p.handle).await?.key)
}

/// The persona's owner, `demo_<handle>`, found by its email's blind index or signed up with
/// a random password nobody knows (a demo owner never logs in).
async fn demo_owner(svc: &Service, p: &Persona) -> Result<OwnerCtx, DemoError> {
    let email = format!("{}@demo.carapace.invalid", p.handle);
    match svc.owner_by_email(&email).await {
        Err(ServiceError::NotFound(_)) => {}
        found => return Ok(found?),
    }
    let mut secret = [0u8; 24];
    getrandom::fill(&mut secret)
        .map_err(|e| ServiceError::Internal(format!("no randomness: {e}")))?;
    let handle = format!("demo_{}", p.handle);
    svc.signup(&handle, &email, &hex::encode(secret), false, "demo")
        .await?;
    Ok(svc.owner_by_email(&email).await?)
}
