//! Admin-only reads: the agent inventory and the audit log.

use super::QueryParams;
use super::{Admin, AppState, HttpResult};
use crate::service::views::{AgentList, AuditPage, ReportList};
use axum::Json;
use axum::extract::State;
use serde::Deserialize;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InventoryQuery {
    stale_days: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/api/v1/admin/agents",
    tag = "admin",
    summary = "Every agent (operators)",
    params(InventoryQuery),
    responses(
        (status = 200, description = "the agents", body = crate::service::views::AgentList),
        (status = "default", description = "an error: its code decides the status", body = crate::protocol::ErrorBody)
    ),
    security(("owner" = []))
)]
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/api/v1/admin/audit",
    tag = "admin",
    summary = "The audit log (operators)",
    params(AuditQuery),
    responses(
        (status = 200, description = "a page of entries", body = crate::service::views::AuditPage),
        (status = "default", description = "an error: its code decides the status", body = crate::protocol::ErrorBody)
    ),
    security(("owner" = []))
)]
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

#[utoipa::path(
    get,
    path = "/api/v1/admin/reports",
    tag = "admin",
    summary = "Open reports (operators)",
    responses(
        (status = 200, description = "the reports", body = crate::service::views::ReportList),
        (status = "default", description = "an error: its code decides the status", body = crate::protocol::ErrorBody)
    ),
    security(("owner" = []))
)]
pub async fn reports(State(st): State<AppState>, Admin(_): Admin) -> HttpResult<Json<ReportList>> {
    Ok(Json(st.service.open_reports().await?))
}
