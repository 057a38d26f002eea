//! Follows the audit log and turns credential events into Control messages for this
//! replica's Hub. The control channel of the bus is the fast path; this watcher is how a
//! revocation made by another process (`carapace admin revoke-agent`, or a replica whose bus
//! message was lost) still reaches live sessions within a second.

use crate::bus::{BusHandler, Control};
use crate::hub::Hub;
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;

const POLL: Duration = Duration::from_millis(400);

pub async fn run(store: Store, hub: Arc<Hub>) {
    let mut last = loop {
        match store.audit_last_id().await {
            Ok(id) => break id,
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    };
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let rows = match store.audit_page(last, 200).await {
            Ok(r) => r,
            Err(_) => continue,
        };
        for r in rows {
            last = r.id;
            let Some(handle) = r.subject.strip_prefix("agent:") else {
                continue;
            };
            let detail: serde_json::Value = serde_json::from_str(&r.detail).unwrap_or_default();
            let control = match r.action.as_str() {
                // A leaked key is revoked with the write that leaked it.
                "key.revoke" | "key.leaked" => {
                    detail["key_id"].as_str().map(|k| Control::KickCredential {
                        cred_id: k.to_string(),
                    })
                }
                "agent.suspend" | "agent.revoke" | "agent.scopes" => {
                    let Ok(Some(agent)) = store.agent_by_handle(handle).await else {
                        continue;
                    };
                    if r.action == "agent.scopes" {
                        let names = |v: &serde_json::Value| -> Vec<String> {
                            v.as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|s| s.as_str().map(String::from))
                                .collect()
                        };
                        Some(Control::Scopes {
                            agent_id: agent.id,
                            scopes: names(&detail["to"]["scopes"]),
                            topics: names(&detail["to"]["topics"]),
                        })
                    } else {
                        Some(Control::KickAgent { agent_id: agent.id })
                    }
                }
                _ => None,
            };
            if let Some(c) = control {
                hub.on_control(c);
            }
        }
    }
}
