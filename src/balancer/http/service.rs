//! The hyper path's entry: a request of a client connection that hyper serves has its
//! limits checked (header size, Host), the manager's paths are answered here (never
//! proxied), and everything else is forwarded by the proxy.

use std::sync::Arc;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, Version};
use tracing::{debug, info};

use crate::balancer::http::answer::{self, ProxyBody, plain};
use crate::balancer::http::figures;
use crate::balancer::http::manager;
use crate::balancer::http::proxy;
use crate::balancer::http::upstream::Upstream;
use crate::balancer::net::limit::ConnectionLimit;
use crate::balancer::rules::{self, Peer, Refusal, framing};
use crate::shutdown::Shutdown;

/// What the requests hyper serves on one worker read.
pub struct Service {
    pub upstream: Upstream,
    /// The client connections, for the manager's figures.
    limit: Arc<ConnectionLimit>,
    /// Owns the tasks requests leave behind (tunnels).
    shutdown: Shutdown,
    /// Who may open the manager, and its nonce.
    manager: Arc<manager::Guard>,
}

impl Service {
    pub fn new(
        upstream: Upstream,
        limit: Arc<ConnectionLimit>,
        shutdown: Shutdown,
        manager: Arc<manager::Guard>,
    ) -> Service {
        Service {
            upstream,
            limit,
            shutdown,
            manager,
        }
    }

    /// Answers a request; one that is not the manager's is counted in the worker's figures
    /// (by the status class of its answer, and the time until its head).
    pub async fn handle(&self, req: Request<Incoming>, peer: &Peer) -> Response<ProxyBody> {
        let started = std::time::Instant::now();
        let proxied = !manager::is_manager_path(req.uri().path());
        let response = self.answer(req, peer).await;
        if proxied {
            self.upstream
                .figures()
                .answered(response.status().as_u16(), started.elapsed());
        }
        response
    }

    async fn answer(&self, req: Request<Incoming>, peer: &Peer) -> Response<ProxyBody> {
        if rules::headers_too_large(proxy::headers_size(req.headers())) {
            return answer::refusal(Refusal::HeadersTooLarge);
        }
        let hosts = req.headers().get_all(hyper::header::HOST);
        let host = hosts.iter().next_back().map_or(&b""[..], |h| h.as_bytes());
        let http_1_1 = req.version() == Version::HTTP_11;
        if let Some(problem) = rules::host_problem(http_1_1, hosts.iter().count(), host) {
            return answer::refusal(problem);
        }
        if let Some(refusal) = framing::method_refused(req.method().as_str()) {
            return answer::refusal(refusal);
        }
        let path = req.uri().path();
        if manager::is_manager_path(path) && !self.manager.allows(peer.ip) {
            debug!(peer = %peer.ip, "manager refused: the peer is not in balancer.manager_allow");
            return plain(
                StatusCode::FORBIDDEN,
                "forbidden: this address may not open the balancer-manager",
            );
        }
        if req.method() == Method::POST && path == manager::MEMBER_PATH {
            return self.set_member(req).await;
        }
        if manager::is_manager_path(path) {
            let members: Vec<_> = self
                .upstream
                .registry
                .members()
                .iter()
                .map(|m| m.status())
                .collect();
            let connections = manager::Connections {
                open: self.limit.open(),
                max: self.limit.max(),
                limit_reached: self.limit.reached(),
            };
            let metrics = || {
                let members = self.upstream.registry.members();
                figures::metrics_text(
                    &members,
                    &connections,
                    &self.upstream.figures.figures.totals(),
                )
            };
            return manager::answer(
                req.method(),
                path,
                &members,
                &connections,
                &self.manager,
                &metrics,
            );
        }
        proxy::forward(&self.upstream, req, peer, &self.shutdown).await
    }

    /// `POST /balancer-manager/member`: drain, disable or enable a member (from the page's
    /// own form only: its nonce, and its origin if the client names one).
    async fn set_member(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        if !manager::origin_is_own(req.headers()) {
            return plain(
                StatusCode::FORBIDDEN,
                "forbidden: not posted from this page",
            );
        }
        let Ok(form) = Limited::new(req.into_body(), 4096).collect().await else {
            return plain(StatusCode::PAYLOAD_TOO_LARGE, "payload too large");
        };
        let form = String::from_utf8_lossy(&form.to_bytes()).into_owned();
        let Some(manager::Action {
            route,
            admin,
            nonce,
        }) = manager::parse_action(&form)
        else {
            return plain(
                StatusCode::BAD_REQUEST,
                "bad request: expected route=ROUTE&action=drain|disable|enable&nonce=NONCE",
            );
        };
        if !self.manager.nonce_matches(&nonce) {
            return plain(
                StatusCode::FORBIDDEN,
                "forbidden: not posted from this page (no or a stale nonce)",
            );
        }
        if !self.upstream.registry.set_admin(&route, admin) {
            return plain(StatusCode::NOT_FOUND, "no member with that route");
        }
        info!(%route, ?admin, "member state set from the manager page");
        manager::back_to_page()
    }
}
