//! The reserved `/balancer-manager` paths: the members as JSON (SPEC), as an HTML page,
//! and in Prometheus text (written by [`crate::balancer::http::figures`]).
//!
//! Who may use them ([`Guard`]): only TCP peers in `balancer.manager_allow` (a forwarded-for
//! header is the client's word, so it is never read), and a change only with the nonce the
//! page's forms carry, so that a page of another site (CSRF, DNS rebinding) cannot post one.

use std::net::IpAddr;

use bytes::Bytes;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Response, StatusCode};
use serde::Serialize;

use crate::config::IpRange;

use crate::balancer::choice::member::Admin;
use crate::balancer::choice::registry::MemberStatus;
use crate::balancer::http::answer::{ProxyBody, full, plain};

/// The path a member's admin state is posted to (`route=R&action=drain|disable|enable`).
pub const MEMBER_PATH: &str = "/balancer-manager/member";

/// Who may open the manager, and the nonce a change must carry; one per balancer.
pub struct Guard {
    allow: Vec<IpRange>,
    /// 128 bits from the OS CSPRNG, as hex: made at start, shown only in the page's forms
    /// (never in the JSON), so only a client that could read the page can post a change.
    nonce: String,
}

impl Guard {
    pub fn new(allow: Vec<IpRange>) -> Guard {
        use rand::TryRngCore as _;
        let mut b = [0u8; 16];
        if rand::rngs::OsRng.try_fill_bytes(&mut b).is_err() {
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
        }
        Guard::with_nonce(allow, b.iter().map(|x| format!("{x:02x}")).collect())
    }

    fn with_nonce(allow: Vec<IpRange>, nonce: String) -> Guard {
        Guard { allow, nonce }
    }

    /// Whether the TCP peer `ip` may open anything under [`PREFIX`].
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|r| r.contains(ip))
    }

    /// Whether a posted change carries the page's nonce, compared in constant time so its
    /// bytes cannot be guessed one by one from the answer's timing.
    pub fn nonce_matches(&self, posted: &str) -> bool {
        let (a, b) = (self.nonce.as_bytes(), posted.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
    }

    pub fn nonce(&self) -> &str {
        &self.nonce
    }
}

/// A posted change: the member's route, the admin state, and the page's nonce.
#[derive(Debug, PartialEq, Eq)]
pub struct Action {
    pub route: String,
    pub admin: Admin,
    pub nonce: String,
}

/// A form's `route`, admin action and `nonce`; None when it is not one.
pub fn parse_action(form: &str) -> Option<Action> {
    let mut route = None;
    let mut admin = None;
    let mut nonce = String::new();
    for pair in form.split('&') {
        let (k, v) = pair.split_once('=')?;
        let v = percent_encoding::percent_decode_str(&v.replace('+', " "))
            .decode_utf8()
            .ok()?
            .into_owned();
        match k {
            "route" => route = Some(v),
            "nonce" => nonce = v,
            "action" => {
                admin = Some(match v.as_str() {
                    "drain" => Admin::Draining,
                    "disable" => Admin::Disabled,
                    "enable" => Admin::Active,
                    _ => return None,
                })
            }
            _ => {}
        }
    }
    Some(Action {
        route: route?,
        admin: admin?,
        nonce,
    })
}

/// Whether a POST's `Origin`, if it sent one, is the page's own (`http://<Host>`). A
/// client that sends none (curl, an old browser) is judged by the nonce alone.
pub fn origin_is_own(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    origin
        .to_str()
        .is_ok_and(|o| o.strip_prefix("http://") == Some(host))
}

/// 303 back to the page.
pub fn back_to_page() -> Response<ProxyBody> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(PREFIX));
    r
}

/// The reserved prefix: never proxied.
pub const PREFIX: &str = "/balancer-manager";

/// Whether `path` belongs to the manager.
pub fn is_manager_path(path: &str) -> bool {
    path.strip_prefix(PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The client connections: open now, the limit (`balancer.max_connections`), and how many
/// times every slot got taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Connections {
    pub open: usize,
    pub max: usize,
    pub limit_reached: u64,
}

#[derive(Serialize)]
struct StatusDoc<'a> {
    members: &'a [MemberStatus],
    connections: &'a Connections,
}

/// The SPEC's `{"members":[...]}` document, plus `"connections"`.
pub fn status_json(members: &[MemberStatus], connections: &Connections) -> String {
    serde_json::to_string(&StatusDoc {
        members,
        connections,
    })
    .unwrap_or_else(|_| "{}".to_string())
}

/// The members table, refreshing itself every 2 s.
pub fn page_html(members: &[MemberStatus], connections: &Connections, nonce: &str) -> String {
    let mut rows = String::new();
    for m in members {
        let route = escape(&m.route);
        let buttons: String = ["drain", "disable", "enable"]
            .iter()
            .map(|a| format!("<button name=\"action\" value=\"{a}\">{a}</button>"))
            .collect();
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"state-{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
<td><form method=\"post\" action=\"{MEMBER_PATH}\"><input type=\"hidden\" name=\"route\" value=\"{route}\">\
<input type=\"hidden\" name=\"nonce\" value=\"{nonce}\">{buttons}</form></td></tr>\n",
            route,
            escape(&m.url),
            m.loadfactor,
            m.state,
            m.state,
            m.elected,
            m.busy,
            m.bytes_in,
            m.bytes_out,
            m.errors
        ));
    }
    if members.is_empty() {
        rows.push_str("<tr><td colspan=\"10\">no members</td></tr>\n");
    }
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">\
<title>deltacast balancer-manager</title>\
<style>body{{font-family:sans-serif}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}\
.state-ok{{color:green}}.state-error{{color:red}}</style></head>\n<body><h1>deltacast balancer</h1>\n\
<table id=\"members\"><tr><th>Route</th><th>URL</th><th>Load factor</th><th>State</th><th>Elected</th>\
<th>Busy</th><th>Bytes in</th><th>Bytes out</th><th>Errors</th><th>Set</th></tr>\n{rows}</table>\n\
<p id=\"connections\">Client connections: {} open of {} at most; the limit was reached {} times.</p></body></html>\n",
        connections.open, connections.max, connections.limit_reached
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The Prometheus page's path.
pub const METRICS_PATH: &str = "/balancer-manager/metrics";

/// Answers a request under [`PREFIX`]; `metrics` writes the Prometheus page (only when it
/// is asked for).
pub fn answer(
    method: &Method,
    path: &str,
    members: &[MemberStatus],
    connections: &Connections,
    guard: &Guard,
    metrics: &dyn Fn() -> String,
) -> Response<ProxyBody> {
    if method != Method::GET && method != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    let (body, kind) = match path.trim_end_matches('/') {
        "/balancer-manager/status" => (status_json(members, connections), "application/json"),
        METRICS_PATH => (metrics(), crate::metrics::PROMETHEUS_CONTENT_TYPE),
        "/balancer-manager" => (
            page_html(members, connections, guard.nonce()),
            "text/html; charset=utf-8",
        ),
        _ => return plain(StatusCode::NOT_FOUND, "not found"),
    };
    let mut r = Response::new(full(Bytes::from(body)));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member() -> MemberStatus {
        MemberStatus {
            route: "n1".into(),
            url: "http://127.0.0.1:8081".into(),
            loadfactor: 2,
            state: "ok",
            elected: 3,
            busy: 0,
            bytes_in: 10,
            bytes_out: 20,
            errors: 1,
        }
    }

    #[test]
    fn the_status_json_is_the_specs_plus_the_connections() {
        let connections = Connections {
            open: 2,
            max: 10,
            limit_reached: 1,
        };
        let v: serde_json::Value =
            serde_json::from_str(&status_json(&[member()], &connections)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"members":[{"route":"n1","url":"http://127.0.0.1:8081",
                "loadfactor":2,"state":"ok","elected":3,"busy":0,"bytes_in":10,"bytes_out":20,"errors":1}],
                "connections":{"open":2,"max":10,"limit_reached":1}})
        );
    }

    #[test]
    fn admin_forms_are_parsed() {
        assert_eq!(
            parse_action("route=n1&action=drain&nonce=ab"),
            Some(Action {
                route: "n1".into(),
                admin: Admin::Draining,
                nonce: "ab".into()
            })
        );
        assert_eq!(
            parse_action("action=enable&route=n%32"),
            Some(Action {
                route: "n2".into(),
                admin: Admin::Active,
                nonce: String::new()
            })
        );
        assert_eq!(parse_action("route=n1&action=explode"), None);
        assert_eq!(parse_action("route=n1"), None);
    }

    #[test]
    fn an_origin_if_sent_must_be_the_pages_own() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(origin_is_own(&h), "no origin: the nonce decides");
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!origin_is_own(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(origin_is_own(&h));
        h.remove(header::HOST);
        assert!(!origin_is_own(&h), "an origin but no host to match");
    }

    #[test]
    fn only_the_exact_nonce_matches() {
        let guard = Guard::with_nonce(Vec::new(), "00ff".into());
        assert!(guard.nonce_matches("00ff"));
        assert!(!guard.nonce_matches("00fe"));
        assert!(!guard.nonce_matches("00f"));
        assert!(!guard.nonce_matches(""));
    }

    #[test]
    fn the_nonce_is_128_random_bits_in_hex() {
        let (a, b) = (Guard::new(Vec::new()), Guard::new(Vec::new()));
        assert_eq!(a.nonce().len(), 32);
        assert!(a.nonce().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.nonce(), b.nonce());
    }

    #[test]
    fn only_peers_in_the_allowed_ranges_are_let_in() {
        let lo = IpRange::new("127.0.0.0".parse().unwrap(), 8).unwrap();
        let guard = Guard::with_nonce(vec![lo], String::new());
        assert!(guard.allows("127.0.0.1".parse().unwrap()));
        assert!(!guard.allows("10.0.0.1".parse().unwrap()));
        assert!(!Guard::with_nonce(Vec::new(), String::new()).allows("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn only_the_prefix_and_below_are_reserved() {
        assert!(is_manager_path("/balancer-manager"));
        assert!(is_manager_path("/balancer-manager/status"));
        assert!(!is_manager_path("/balancer-managerx"));
        assert!(!is_manager_path("/status"));
    }

    #[test]
    fn the_page_lists_members_escaped_and_refreshes() {
        let mut m = member();
        m.route = "<b>".into();
        let connections = Connections {
            open: 3,
            max: 10,
            limit_reached: 0,
        };
        let html = page_html(&[m], &connections, "c0ffee");
        assert!(html.contains("name=\"nonce\" value=\"c0ffee\""));
        assert!(html.contains("3 open of 10"));
        assert!(html.contains("http-equiv=\"refresh\""));
        assert!(html.contains("&lt;b&gt;"));
        assert!(html.contains("http://127.0.0.1:8081"));
    }
}
