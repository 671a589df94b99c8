//! The node's HTTP endpoints.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::Shared;
use super::status::{
    AjpStatus, MemberStatus, NodeStatus, ReplicationStatus, SessionsStatus, StatusDoc,
};
use crate::backend::SessionBackend as _;
use crate::membership::MemberState;
use crate::metrics::Gauges;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .merge(super::sessions::router())
        .fallback(not_found)
        .with_state(shared)
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<StatusDoc> {
    Json(status_doc(&shared))
}

pub(super) fn status_doc(shared: &Shared) -> StatusDoc {
    let now = Instant::now();
    let view = shared.view.borrow().clone();
    let me = &shared.me;
    let r = &shared.metrics.replication;
    StatusDoc {
        node: NodeStatus {
            id: me.id.to_string(),
            name: me.name.clone(),
            route: me.name.clone(),
            http: me.http.to_string(),
            replication: me.replication.to_string(),
            state: shared.state().as_str().to_string(),
            uptime_ms: millis(now.saturating_duration_since(shared.started)),
            version: env!("CARGO_PKG_VERSION").to_string(),
        },
        cluster: shared.cluster.clone(),
        members: view
            .members
            .iter()
            .map(|m| MemberStatus {
                id: m.info.id.to_string(),
                name: m.info.name.clone(),
                route: m.info.name.clone(),
                http: m.info.http.to_string(),
                replication: m.info.replication.to_string(),
                state: m.state.as_str().to_string(),
                last_heard_ms: millis(view.last_heard(m, now)),
            })
            .collect(),
        sessions: SessionsStatus {
            active: shared.backend.active(),
            store: shared.backend.kind().to_string(),
            store_errors: shared.backend.store_errors(),
            bytes: shared.store.bytes(),
            refused_over_budget: shared.store.refused_over_budget(),
        },
        replication: ReplicationStatus {
            mode: shared.replicator.mode().to_string(),
            deltas_sent: r.deltas_sent.get(),
            deltas_received: r.deltas_received.get(),
            bytes_sent: r.bytes_sent.get(),
            bytes_received: r.bytes_received.get(),
            queue: shared.replicator.queued(),
            errors: r.errors.get(),
        },
        membership: shared.metrics.membership.counters(),
        ajp: shared.ajp.map(|listen| AjpStatus {
            listen: listen.to_string(),
            requests: shared.metrics.ajp.requests.get(),
            errors: shared.metrics.ajp.errors.get(),
        }),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let view = shared.view.borrow().clone();
    let count = |state| view.members.iter().filter(|m| m.state == state).count() as u64;
    let gauges = Gauges {
        members_alive: count(MemberState::Alive),
        members_suspect: count(MemberState::Suspect),
        sessions_active: shared.backend.active(),
        replication_queue: shared.replicator.queued(),
        uptime_seconds: shared.started.elapsed().as_secs_f64(),
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.render_prometheus(gauges),
    )
        .into_response()
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
