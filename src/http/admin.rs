//! Admin-only reads: the agent inventory and the audit log.

use super::QueryParams;
use super::{Admin, AppState, HttpResult};
use crate::service::views::{AgentList, AuditPage, ReportList};
use axum::Json;
use axum::extract::State;
use serde::Deserialize;

#[derive(Deserialize)]
pub struct InventoryQuery {
    stale_days: Option<u32>,
}

pub async fn agents(
    State(st): State<AppState>,
    Admin(_): Admin,
    QueryParams(q): QueryParams<InventoryQuery>,
) -> HttpResult<Json<AgentList>> {
    let hub = st.hub.clone();
    Ok(Json(
        st.service
            .admin_agents(q.stale_days, &move |id| hub.live_sessions(id))
            .await?,
    ))
}

#[derive(Deserialize)]
pub struct AuditQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

pub async fn audit(
    State(st): State<AppState>,
    Admin(_): Admin,
    QueryParams(q): QueryParams<AuditQuery>,
) -> HttpResult<Json<AuditPage>> {
    Ok(Json(
        st.service
            .audit_entries(q.after.unwrap_or(0), q.limit.unwrap_or(100))
            .await?,
    ))
}

pub async fn reports(State(st): State<AppState>, Admin(_): Admin) -> HttpResult<Json<ReportList>> {
    Ok(Json(st.service.open_reports().await?))
}
