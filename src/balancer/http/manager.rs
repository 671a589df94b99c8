//! The reserved `/balancer-manager` paths: the members as JSON (SPEC) and as an HTML page.

use bytes::Bytes;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Response, StatusCode};
use serde::Serialize;

use crate::balancer::choice::member::Admin;
use crate::balancer::choice::registry::MemberStatus;
use crate::balancer::http::answer::{ProxyBody, full, plain};

/// The path a member's admin state is posted to (`route=R&action=drain|disable|enable`).
pub const MEMBER_PATH: &str = "/balancer-manager/member";

/// A form's `route` and admin action; None when it is not one.
pub fn parse_action(form: &str) -> Option<(String, Admin)> {
    let mut route = None;
    let mut admin = None;
    for pair in form.split('&') {
        let (k, v) = pair.split_once('=')?;
        let v = percent_encoding::percent_decode_str(&v.replace('+', " "))
            .decode_utf8()
            .ok()?
            .into_owned();
        match k {
            "route" => route = Some(v),
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
    Some((route?, admin?))
}

/// Whether a POST comes from a page of this origin: its `Origin` (or, without one, its
/// `Referer`) must be `http://<Host>`; a request with neither is refused.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let own = format!("http://{host}");
    if let Some(origin) = headers.get(header::ORIGIN) {
        return origin.to_str().is_ok_and(|o| o == own);
    }
    headers
        .get(header::REFERER)
        .and_then(|r| r.to_str().ok())
        .is_some_and(|r| r == own || r.starts_with(&format!("{own}/")))
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
pub fn page_html(members: &[MemberStatus], connections: &Connections) -> String {
    let mut rows = String::new();
    for m in members {
        let route = escape(&m.route);
        let buttons: String = ["drain", "disable", "enable"]
            .iter()
            .map(|a| format!("<button name=\"action\" value=\"{a}\">{a}</button>"))
            .collect();
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"state-{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
<td><form method=\"post\" action=\"{MEMBER_PATH}\"><input type=\"hidden\" name=\"route\" value=\"{route}\">{buttons}</form></td></tr>\n",
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

/// Answers a request under [`PREFIX`].
pub fn answer(
    method: &Method,
    path: &str,
    members: &[MemberStatus],
    connections: &Connections,
) -> Response<ProxyBody> {
    if method != Method::GET && method != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    let (body, kind) = match path.trim_end_matches('/') {
        "/balancer-manager/status" => (status_json(members, connections), "application/json"),
        "/balancer-manager" => (page_html(members, connections), "text/html; charset=utf-8"),
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
            parse_action("route=n1&action=drain"),
            Some(("n1".into(), Admin::Draining))
        );
        assert_eq!(
            parse_action("action=enable&route=n%32"),
            Some(("n2".into(), Admin::Active))
        );
        assert_eq!(parse_action("route=n1&action=explode"), None);
        assert_eq!(parse_action("route=n1"), None);
    }

    #[test]
    fn only_same_origin_posts_are_accepted() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(!same_origin(&h), "no origin, no referer");
        h.insert(
            header::REFERER,
            HeaderValue::from_static("http://127.0.0.1:8080/balancer-manager"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h), "the origin wins over the referer");
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&h));
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
        let html = page_html(&[m], &connections);
        assert!(html.contains("3 open of 10"));
        assert!(html.contains("http-equiv=\"refresh\""));
        assert!(html.contains("&lt;b&gt;"));
        assert!(html.contains("http://127.0.0.1:8081"));
    }
}
