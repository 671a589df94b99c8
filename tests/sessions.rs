//! The session endpoints of one real node: cookies and routes, the test page, the session
//! document, the attribute API, invalidation, the limits and the error answers.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{Cluster, FAST, NodeProc, wait_until};
use serde_json::Value;

const STARTUP: Duration = Duration::from_secs(20);
const COOKIE_ATTRIBUTES: &str = "; Path=/; HttpOnly; SameSite=Lax";
const CLEARED: &str = "JSESSIONID=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax";

/// One node `n1` of a cluster of its own, past its join (state transfer).
fn start(test: &str, extra: &[&str]) -> NodeProc {
    let cluster = Cluster::new(test);
    let args: Vec<&str> = FAST.iter().chain(extra).copied().collect();
    let node = cluster.node("n1", &args);
    wait_until(STARTUP, "the node is ready", || {
        (node.status()?["node"]["state"] == "ready").then_some(())
    });
    node
}

/// An HTTP response, read to the end of a `Connection: close` exchange.
#[derive(Debug)]
struct Reply {
    code: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The session cookie value (`HEX.route`) this reply issues, checked to have exactly
    /// the SPEC form with this node's route.
    fn issued(&self) -> String {
        let cookies = self.set_cookies();
        assert_eq!(cookies.len(), 1, "one Set-Cookie expected: {self:?}");
        let header = cookies[0];
        let value = header
            .strip_prefix("JSESSIONID=")
            .and_then(|rest| rest.strip_suffix(COOKIE_ATTRIBUTES))
            .unwrap_or_else(|| panic!("not the SPEC cookie form: {header}"));
        let (hex, route) = value.split_once('.').expect("HEX.route");
        assert_eq!(hex.len(), 32, "{header}");
        assert!(
            hex.bytes()
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c)),
            "{header}"
        );
        assert_eq!(route, "n1", "{header}");
        value.to_string()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }

    /// An error answer: the code, and a body of one line of text ending in a newline.
    fn assert_error(&self, code: u16) {
        assert_eq!(self.code, code, "{self:?}");
        let text = self.text();
        assert!(
            text.ends_with('\n') && text.trim_end_matches('\n').lines().count() == 1,
            "not one line: {text:?}"
        );
        assert!(text.len() > 1, "an empty error body");
    }
}

/// Sends raw bytes (a whole request with `Connection: close`) and reads the reply.
fn roundtrip(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("read timeout");
    stream.write_all(request).expect("send the request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the reply");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&raw)));
    let head = std::str::from_utf8(&raw[..split]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Reply {
        code,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_text = std::str::from_utf8(&raw[..line_end]).expect("chunk size");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .expect("hex chunk size");
        raw = &raw[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// A request with a Content-Length body and optional `Cookie` header values.
fn request(node: &NodeProc, method: &str, path: &str, cookies: &[&str], body: &[u8]) -> Reply {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        node.http,
        body.len()
    );
    for cookie in cookies {
        head.push_str(&format!("Cookie: {cookie}\r\n"));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    roundtrip(node.http, &raw)
}

/// The `Cookie` header value for a session cookie value.
fn jar(value: &str) -> String {
    format!("JSESSIONID={value}")
}

fn get(node: &NodeProc, path: &str, cookie: Option<&str>) -> Reply {
    send(node, "GET", path, cookie)
}

fn put(node: &NodeProc, name: &str, cookie: Option<&str>, value: &[u8]) -> Reply {
    let jar = cookie.map(jar);
    let cookies: Vec<&str> = jar.iter().map(String::as_str).collect();
    request(
        node,
        "PUT",
        &format!("/session/attributes/{name}"),
        &cookies,
        value,
    )
}

fn send(node: &NodeProc, method: &str, path: &str, cookie: Option<&str>) -> Reply {
    let jar = cookie.map(jar);
    let cookies: Vec<&str> = jar.iter().map(String::as_str).collect();
    request(node, method, path, &cookies, b"")
}

fn attribute(node: &NodeProc, name: &str, cookie: &str) -> Reply {
    get(node, &format!("/session/attributes/{name}"), Some(cookie))
}

/// The value of `<td id="{id}">…</td>` on the test page.
fn cell(html: &str, id: &str) -> String {
    let open = format!("<td id=\"{id}\">");
    let start = html
        .find(&open)
        .unwrap_or_else(|| panic!("no {id} in {html}"))
        + open.len();
    let len = html[start..].find("</td>").expect("cell end");
    html[start..start + len].to_string()
}

fn active_sessions(node: &NodeProc) -> Option<u64> {
    node.status()?["sessions"]["active"].as_u64()
}

#[test]
fn the_first_visit_sets_the_cookie_in_the_spec_form_and_the_page_counts_hits_with_it() {
    let node = start("page", &[]);
    let first = get(&node, "/", None);
    assert_eq!(first.code, 200, "{first:?}");
    assert_eq!(
        first.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let cookie = first.issued();
    let html = first.text();
    assert_eq!(cell(&html, "hits"), "1");
    assert_eq!(cell(&html, "node"), "n1");
    assert!(cell(&html, "session").contains(&cookie), "{html}");
    // Created on: an RFC 3339 UTC time of this year or later.
    let created = cell(&html, "created");
    let datetime = created
        .split("datetime=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a datetime attribute");
    let b = datetime.as_bytes();
    assert!(
        datetime.len() == 24
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && b[19] == b'.'
            && datetime.ends_with('Z'),
        "{datetime}"
    );
    let year: u32 = datetime[..4].parse().expect("a year");
    assert!(year >= 2024, "{datetime}");
    assert!(created.contains(" UTC</time>"), "{created}");

    for hits in ["2", "3"] {
        let again = get(&node, "/", Some(&cookie));
        assert_eq!(again.code, 200);
        assert!(again.set_cookies().is_empty(), "no new cookie: {again:?}");
        assert_eq!(cell(&again.text(), "hits"), hits);
        assert!(cell(&again.text(), "session").contains(&cookie));
    }
    // Without the cookie, a new session counts from 1 again.
    let other = get(&node, "/", None);
    assert_ne!(other.issued(), cookie);
    assert_eq!(cell(&other.text(), "hits"), "1");
}

#[test]
fn a_non_numeric_hit_counter_counts_as_zero() {
    let node = start("hits-garbage", &[]);
    let cookie = put(&node, "hits", None, b"lots").issued();
    let page = get(&node, "/", Some(&cookie));
    assert_eq!(cell(&page.text(), "hits"), "1");
    assert_eq!(attribute(&node, "hits", &cookie).body, b"1");
}

#[test]
fn an_attribute_put_is_read_back_byte_for_byte_text_and_binary() {
    let node = start("put-get", &[]);
    let text = "hello, wörld ✓".as_bytes();
    let created = put(&node, "greeting", None, text);
    assert_eq!(created.code, 204, "{created:?}");
    assert!(created.body.is_empty());
    let cookie = created.issued();

    let read = attribute(&node, "greeting", &cookie);
    assert_eq!(read.code, 200);
    assert_eq!(read.body, text);
    assert_eq!(
        read.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert!(read.set_cookies().is_empty());

    let binary: &[u8] = &[0xff, 0x00, 0xfe, 0x80, 0x01, b'\r', b'\n', 0xc3];
    let set = put(&node, "blob", Some(&cookie), binary);
    assert_eq!(set.code, 204);
    assert!(set.set_cookies().is_empty(), "same session: {set:?}");
    let read = attribute(&node, "blob", &cookie);
    assert_eq!(read.code, 200);
    assert_eq!(read.body, binary);
    assert_eq!(
        read.header("content-type"),
        Some("application/octet-stream")
    );

    // An empty value is a value.
    assert_eq!(put(&node, "empty", Some(&cookie), b"").code, 204);
    let read = attribute(&node, "empty", &cookie);
    assert_eq!(read.code, 200);
    assert!(read.body.is_empty());

    // Overwriting replaces.
    assert_eq!(put(&node, "greeting", Some(&cookie), b"bye").code, 204);
    assert_eq!(attribute(&node, "greeting", &cookie).body, b"bye");

    let doc = get(&node, "/session", Some(&cookie)).json();
    assert_eq!(doc["attributes"]["greeting"], "bye");
    assert_eq!(doc["attributes"]["empty"], "");
    assert_eq!(doc["binary_attributes"]["blob"], "/wD+gAENCsM=");
    assert!(doc["attributes"].get("blob").is_none());
    assert!(doc["binary_attributes"].get("greeting").is_none());
}

#[test]
fn attribute_names_come_url_decoded_from_the_path() {
    let node = start("names", &[]);
    let cookie = put(&node, "caf%C3%A9%20au%20lait", None, b"1").issued();
    assert_eq!(put(&node, "a%3Bb", Some(&cookie), b"2").code, 204);
    let doc = get(&node, "/session", Some(&cookie)).json();
    assert_eq!(doc["attributes"]["café au lait"], "1");
    assert_eq!(doc["attributes"]["a;b"], "2");
    assert_eq!(
        attribute(&node, "caf%C3%A9%20au%20lait", &cookie).body,
        b"1"
    );

    // Too long (the limit is 256 bytes) or not UTF-8: 400, and nothing is made.
    put(&node, &"n".repeat(257), None, b"x").assert_error(400);
    put(&node, "%FF", None, b"x").assert_error(400);
    get(&node, "/session/attributes/%FF", Some(&cookie)).assert_error(400);
    send(&node, "DELETE", "/session/attributes/%FF", Some(&cookie)).assert_error(400);
    put(&node, ";jsessionid=00", None, b"x").assert_error(400);
    assert_eq!(active_sessions(&node), Some(1));
    assert_eq!(put(&node, &"n".repeat(256), Some(&cookie), b"x").code, 204);
}

#[test]
fn the_session_document_has_every_field_and_the_id_of_the_cookie() {
    let node = start("document", &["--set", "sessions.max_inactive_s=600"]);
    let before = now_ms();
    let first = get(&node, "/session", None);
    assert_eq!(first.code, 200, "{first:?}");
    assert_eq!(first.header("content-type"), Some("application/json"));
    let cookie = first.issued();
    let doc = first.json();
    let fields: Vec<&str> = doc
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    for field in [
        "id",
        "node",
        "created_ms",
        "last_accessed_ms",
        "max_inactive_s",
        "attributes",
        "binary_attributes",
    ] {
        assert!(fields.contains(&field), "{field} missing from {doc}");
    }
    assert_eq!(doc["id"], cookie.as_str());
    assert_eq!(doc["node"], "n1");
    let created = doc["created_ms"].as_u64().expect("created_ms");
    assert!(created >= before && created <= now_ms(), "{doc}");
    assert_eq!(doc["last_accessed_ms"].as_u64(), Some(created));
    assert_eq!(doc["max_inactive_s"], 600);
    assert_eq!(doc["attributes"], serde_json::json!({}));
    assert_eq!(doc["binary_attributes"], serde_json::json!({}));

    // The same session with its cookie: same id and creation, access time moves on.
    wait_until(Duration::from_secs(5), "the clock moves on", || {
        (now_ms() > created).then_some(())
    });
    let again = get(&node, "/session", Some(&cookie));
    assert!(again.set_cookies().is_empty(), "{again:?}");
    let doc = again.json();
    assert_eq!(doc["id"], cookie.as_str());
    assert_eq!(doc["created_ms"].as_u64(), Some(created));
    assert!(doc["last_accessed_ms"].as_u64().expect("last_accessed_ms") > created);
}

#[test]
fn a_deleted_attribute_is_gone_and_deleting_is_idempotent() {
    let node = start("delete", &[]);
    let cookie = put(&node, "user", None, b"ada").issued();
    assert_eq!(put(&node, "keep", Some(&cookie), b"me").code, 204);
    let path = "/session/attributes/user";

    let deleted = send(&node, "DELETE", path, Some(&cookie));
    assert_eq!(deleted.code, 204);
    assert!(deleted.body.is_empty());
    attribute(&node, "user", &cookie).assert_error(404);
    assert_eq!(send(&node, "DELETE", path, Some(&cookie)).code, 204);
    assert_eq!(attribute(&node, "keep", &cookie).body, b"me");

    // No session at all: still 204, and none is made.
    let none = send(&node, "DELETE", path, None);
    assert_eq!(none.code, 204);
    assert!(none.set_cookies().is_empty());
    let missing = get(&node, path, None);
    missing.assert_error(404);
    assert!(missing.set_cookies().is_empty());
    assert_eq!(active_sessions(&node), Some(1));
}

#[test]
fn after_invalidate_the_old_cookie_gets_a_fresh_session_without_the_old_attributes() {
    let node = start("invalidate", &[]);
    let cookie = put(&node, "user", None, b"ada").issued();
    assert_eq!(active_sessions(&node), Some(1));

    let ended = send(&node, "POST", "/session/invalidate", Some(&cookie));
    assert_eq!(ended.code, 204, "{ended:?}");
    assert_eq!(ended.set_cookies(), vec![CLEARED]);
    assert_eq!(active_sessions(&node), Some(0));

    attribute(&node, "user", &cookie).assert_error(404);
    let fresh = get(&node, "/session", Some(&cookie));
    assert_eq!(fresh.code, 200);
    let new_cookie = fresh.issued();
    assert_ne!(new_cookie, cookie);
    let doc = fresh.json();
    assert_eq!(doc["id"], new_cookie.as_str());
    assert_eq!(doc["attributes"], serde_json::json!({}));
    // Invalidating again, or without any session: still 204.
    assert_eq!(
        send(&node, "POST", "/session/invalidate", Some(&cookie)).code,
        204
    );
    let none = send(&node, "POST", "/session/invalidate", None);
    assert_eq!(none.code, 204);
    assert_eq!(active_sessions(&node), Some(1));
}

#[test]
fn a_cookie_with_a_foreign_route_or_none_is_served_and_reissued_with_this_nodes_route() {
    let node = start("failover", &[]);
    let cookie = put(&node, "cart", None, b"3 apples").issued();
    let hex = cookie.strip_suffix(".n1").expect("route n1");

    let foreign = format!("{hex}.other");
    let read = attribute(&node, "cart", &foreign);
    assert_eq!(read.code, 200);
    assert_eq!(read.body, b"3 apples");
    assert_eq!(read.issued(), cookie, "re-issued with route n1");

    let doc = get(&node, "/session", Some(&foreign));
    assert_eq!(doc.issued(), cookie);
    assert_eq!(doc.json()["id"], cookie.as_str());

    let bare = put(&node, "cart", Some(hex), b"4 apples");
    assert_eq!(bare.code, 204);
    assert_eq!(bare.issued(), cookie, "a route-less cookie is re-issued");
    assert_eq!(attribute(&node, "cart", &cookie).body, b"4 apples");

    // The same id in lower case is the same session.
    let lower = format!("{}.n1", hex.to_lowercase());
    assert_eq!(attribute(&node, "cart", &lower).body, b"4 apples");
    assert_eq!(active_sessions(&node), Some(1));
}

#[test]
fn unknown_or_malformed_cookies_get_a_fresh_session_never_an_error() {
    let node = start("malformed", &[]);
    let known = get(&node, "/session", None).issued();
    let hex = known.strip_suffix(".n1").expect("route n1").to_string();
    let unknown = "0123456789ABCDEF0123456789ABCDEF";
    let values = [
        "garbage".to_string(),
        String::new(),
        hex[..31].to_string(),
        format!("{hex}0"),
        format!("{hex}."),
        format!("{hex}.{}", "r".repeat(65)),
        format!("{hex}.n1.n1"),
        format!("\"{hex}.n1"),
        format!("{unknown}.n1"),
        format!("{}.n1", unknown.to_lowercase()),
        unknown.to_string(),
    ];
    let mut seen = vec![known.clone()];
    for value in &values {
        let reply = get(&node, "/session", Some(value));
        assert_eq!(reply.code, 200, "{value:?}: {reply:?}");
        let issued = reply.issued();
        assert!(!seen.contains(&issued), "{value:?} got an old id {issued}");
        assert_eq!(reply.json()["id"], issued.as_str());
        seen.push(issued);

        // Endpoints that do not make sessions act as "no session".
        let path = "/session/attributes/x";
        let missing = get(&node, path, Some(value));
        missing.assert_error(404);
        assert!(missing.set_cookies().is_empty());
        assert_eq!(send(&node, "DELETE", path, Some(value)).code, 204);
    }
    // Non-ASCII bytes in the header, several Cookie headers and odd pairs.
    let raw = format!("JSESSIONID={hex}.nœud");
    let reply = request(
        &node,
        "GET",
        "/session",
        &[raw.as_str(), "a=b; ;;=; JSESSIONID"],
        b"",
    );
    assert_eq!(reply.code, 200, "{reply:?}");
    assert!(!seen.contains(&reply.issued()));
    // A broken cookie first, the good one in a second header: the good one is used.
    let good = jar(&known);
    let reply = request(
        &node,
        "GET",
        "/session",
        &["JSESSIONID=bad", good.as_str()],
        b"",
    );
    assert_eq!(reply.json()["id"], known.as_str());
    assert!(reply.set_cookies().is_empty());
}

#[test]
fn with_url_tracking_on_the_jsessionid_path_parameter_finds_the_session() {
    let node = start("path-param", &["--set", "sessions.url_tracking=true"]);
    let cookie = put(&node, "user", None, b"ada").issued();
    let hex = cookie.strip_suffix(".n1").expect("route n1");

    let read = get(
        &node,
        &format!("/session/attributes/user;jsessionid={cookie}"),
        None,
    );
    assert_eq!(read.code, 200, "{read:?}");
    assert_eq!(read.body, b"ada");
    assert!(
        read.set_cookies().is_empty(),
        "same route, no cookie needed"
    );

    let doc = get(&node, &format!("/session;JSESSIONID={cookie}?x=1"), None);
    assert_eq!(doc.code, 200, "{doc:?}");
    assert_eq!(doc.json()["id"], cookie.as_str());

    let page = get(&node, &format!("/;jsessionid={cookie}"), None);
    assert_eq!(page.code, 200, "{page:?}");
    assert_eq!(cell(&page.text(), "hits"), "1");
    assert!(cell(&page.text(), "session").contains(&cookie));

    // A foreign route in the path parameter: served, and the cookie re-issued.
    let path = format!("/session/attributes/more;jsessionid={hex}.n9");
    let set = request(&node, "PUT", &path, &[], b"2");
    assert_eq!(set.code, 204, "{set:?}");
    assert_eq!(set.issued(), cookie);
    assert_eq!(attribute(&node, "more", &cookie).body, b"2");

    // The cookie wins over the path parameter.
    let other = get(&node, "/session", None).issued();
    let doc = get(
        &node,
        &format!("/session;jsessionid={other}"),
        Some(&cookie),
    );
    assert_eq!(doc.json()["id"], cookie.as_str());

    let ended = send(
        &node,
        "POST",
        &format!("/session/invalidate;jsessionid={cookie}"),
        None,
    );
    assert_eq!(ended.code, 204, "{ended:?}");
    attribute(&node, "user", &cookie).assert_error(404);
    assert_eq!(active_sessions(&node), Some(1));
}

#[test]
fn a_value_over_the_limit_is_refused_with_413_and_changes_nothing() {
    let node = start("value-limit", &["--set", "sessions.max_value_bytes=16"]);
    // Without a session: refused, and no session is made.
    let refused = put(&node, "v", None, &[b'x'; 17]);
    refused.assert_error(413);
    assert!(refused.set_cookies().is_empty());
    assert_eq!(active_sessions(&node), Some(0));

    let cookie = put(&node, "v", None, &[b'a'; 16]).issued();
    put(&node, "v", Some(&cookie), &[b'b'; 17]).assert_error(413);
    assert_eq!(attribute(&node, "v", &cookie).body, [b'a'; 16]);

    // A chunked body that declares no length is cut off at the limit too.
    let chunks = b"a\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n";
    let mut raw = format!(
        "PUT /session/attributes/v HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nCookie: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        node.http,
        jar(&cookie)
    )
    .into_bytes();
    raw.extend_from_slice(chunks);
    roundtrip(node.http, &raw).assert_error(413);
    assert_eq!(attribute(&node, "v", &cookie).body, [b'a'; 16]);

    // A chunked body within the limit is taken whole.
    let mut raw = format!(
        "PUT /session/attributes/w HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nCookie: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        node.http,
        jar(&cookie)
    )
    .into_bytes();
    raw.extend_from_slice(b"5\r\nhello\r\n3\r\n, w\r\n0\r\n\r\n");
    assert_eq!(roundtrip(node.http, &raw).code, 204);
    assert_eq!(attribute(&node, "w", &cookie).body, b"hello, w");
}

#[test]
fn the_attribute_limit_gives_507_and_keeps_the_session_as_it_was() {
    let node = start("attribute-limit", &["--set", "sessions.max_attributes=2"]);
    let cookie = put(&node, "a", None, b"1").issued();
    assert_eq!(put(&node, "b", Some(&cookie), b"2").code, 204);
    put(&node, "c", Some(&cookie), b"3").assert_error(507);
    attribute(&node, "c", &cookie).assert_error(404);
    // Replacing an existing one is fine; so is adding after a removal.
    assert_eq!(put(&node, "a", Some(&cookie), b"one").code, 204);
    assert_eq!(attribute(&node, "a", &cookie).body, b"one");
    // The page cannot add its counter either.
    get(&node, "/", Some(&cookie)).assert_error(507);
    let path = "/session/attributes/b";
    assert_eq!(send(&node, "DELETE", path, Some(&cookie)).code, 204);
    assert_eq!(put(&node, "c", Some(&cookie), b"3").code, 204);
}

#[test]
fn the_session_limit_gives_507_to_new_sessions_only() {
    let node = start("session-limit", &["--set", "sessions.max_sessions=1"]);
    let cookie = get(&node, "/session", None).issued();
    get(&node, "/session", None).assert_error(507);
    get(&node, "/", None).assert_error(507);
    put(&node, "x", None, b"1").assert_error(507);
    // Unknown ids would need a new session too.
    get(&node, "/", Some("0123456789ABCDEF0123456789ABCDEF.n1")).assert_error(507);
    assert_eq!(active_sessions(&node), Some(1));
    // The one session works on.
    assert_eq!(put(&node, "x", Some(&cookie), b"1").code, 204);
    assert_eq!(cell(&get(&node, "/", Some(&cookie)).text(), "hits"), "1");
    // Once it ends there is room again.
    assert_eq!(
        send(&node, "POST", "/session/invalidate", Some(&cookie)).code,
        204
    );
    assert_eq!(get(&node, "/session", None).code, 200);
}

#[test]
fn a_wrong_method_on_a_session_path_gets_405() {
    let node = start("methods", &[]);
    for (method, path) in [
        ("POST", "/"),
        ("POST", "/session"),
        ("DELETE", "/session"),
        ("GET", "/session/invalidate"),
        ("PUT", "/session/invalidate"),
        ("GET", "/session/change-id"),
        ("DELETE", "/session/change-id"),
        ("POST", "/session/attributes/x"),
        ("PATCH", "/session/attributes/x"),
    ] {
        let reply = send(&node, method, path, None);
        reply.assert_error(405);
        assert!(
            reply.header("allow").is_some(),
            "{method} {path}: {reply:?}"
        );
        assert!(reply.set_cookies().is_empty());
    }
    assert_eq!(active_sessions(&node), Some(0));
    // An unknown path is still 404.
    send(&node, "GET", "/session/attributes", None).assert_error(404);
    send(&node, "GET", "/session/nope/x", None).assert_error(404);
}

#[test]
fn status_counts_the_active_sessions() {
    let node = start("status-count", &[]);
    assert_eq!(active_sessions(&node), Some(0));
    let cookies: Vec<String> = (0..3).map(|_| get(&node, "/", None).issued()).collect();
    assert_eq!(active_sessions(&node), Some(3));
    // Visits with the cookie make no new ones.
    get(&node, "/", Some(&cookies[0]));
    get(&node, "/session", Some(&cookies[1]));
    assert_eq!(active_sessions(&node), Some(3));
    send(&node, "POST", "/session/invalidate", Some(&cookies[2]));
    assert_eq!(active_sessions(&node), Some(2));
    let status = node.status().expect("status");
    assert!(
        !status.to_string().contains(&cookies[0][..32]),
        "session ids do not appear in /status"
    );
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Issue 12: session ids from links, several cookies, the byte budget.

#[test]
fn with_url_tracking_off_a_linked_session_is_neither_served_nor_set_as_the_cookie() {
    let node = start("url-tracking-off", &[]);
    // The attacker's own session, planted in a link.
    let planted = put(&node, "user", None, b"mallory").issued();

    let read = get(
        &node,
        &format!("/session/attributes/user;jsessionid={planted}"),
        None,
    );
    read.assert_error(404);
    assert!(read.set_cookies().is_empty(), "{read:?}");

    // The endpoints stay reachable with the parameter; the victim gets a fresh session.
    let doc = get(&node, &format!("/session;jsessionid={planted}"), None);
    assert_eq!(doc.code, 200, "{doc:?}");
    let fresh = doc.issued();
    assert_ne!(fresh, planted);
    assert_eq!(doc.json()["id"], fresh.as_str());
    let page = get(&node, &format!("/;jsessionid={planted}"), None);
    assert_eq!(page.code, 200, "{page:?}");
    assert_ne!(page.issued(), planted);
    let set = request(
        &node,
        "PUT",
        &format!("/session/attributes/cart;jsessionid={planted}"),
        &[],
        b"1",
    );
    assert_eq!(set.code, 204, "{set:?}");
    assert_ne!(set.issued(), planted);
    attribute(&node, "cart", &planted).assert_error(404);

    // Nor can a link end someone's session.
    let ended = send(
        &node,
        "POST",
        &format!("/session/invalidate;jsessionid={planted}"),
        None,
    );
    assert_eq!(ended.code, 204, "{ended:?}");
    assert_eq!(attribute(&node, "user", &planted).body, b"mallory");
    // Nor give it a new id (which would end the old one).
    let renamed = send(
        &node,
        "POST",
        &format!("/session/change-id;jsessionid={planted}"),
        None,
    );
    renamed.assert_error(404);
    assert!(renamed.set_cookies().is_empty(), "{renamed:?}");
    assert_eq!(attribute(&node, "user", &planted).body, b"mallory");
}

#[test]
fn of_several_session_cookies_the_first_that_names_a_live_session_wins() {
    let node = start("several-cookies", &[]);
    let live = put(&node, "user", None, b"ada").issued();
    let unknown = "0123456789ABCDEF0123456789ABCDEF.n1";

    let one_field = format!("JSESSIONID={unknown}; JSESSIONID={live}");
    let read = request(&node, "GET", "/session/attributes/user", &[&one_field], b"");
    assert_eq!(read.code, 200, "{read:?}");
    assert_eq!(read.body, b"ada");
    assert!(read.set_cookies().is_empty(), "{read:?}");

    let (first, second) = (jar(unknown), jar(&live));
    let two_fields = request(
        &node,
        "GET",
        "/session/attributes/user",
        &[&first, &second],
        b"",
    );
    assert_eq!(two_fields.code, 200, "{two_fields:?}");
    assert_eq!(two_fields.body, b"ada");

    // A write goes to the live session too, not to a fresh one.
    let write = request(&node, "PUT", "/session/attributes/x", &[&one_field], b"1");
    assert_eq!(write.code, 204, "{write:?}");
    assert!(write.set_cookies().is_empty(), "{write:?}");
    assert_eq!(attribute(&node, "x", &live).body, b"1");
    assert_eq!(active_sessions(&node), Some(1));
}

fn session_bytes(node: &NodeProc) -> Option<(u64, u64)> {
    let status = node.status()?;
    let sessions = &status["sessions"];
    Some((
        sessions["bytes"].as_u64()?,
        sessions["refused_over_budget"].as_u64()?,
    ))
}

#[test]
fn writes_past_sessions_max_bytes_get_507_change_nothing_and_are_counted() {
    let node = start("max-bytes", &["--set", "sessions.max_bytes=1024"]);
    let value = [b'v'; 500];
    // "a0" + 500 bytes each: two fit in 1024, a third does not.
    let cookie = put(&node, "a0", None, &value).issued();
    assert_eq!(put(&node, "a1", Some(&cookie), &value).code, 204);
    assert_eq!(session_bytes(&node), Some((1004, 0)));

    put(&node, "a2", Some(&cookie), &value).assert_error(507);
    attribute(&node, "a2", &cookie).assert_error(404);
    // Another session is no way around it.
    let other = get(&node, "/session", None).issued();
    put(&node, "b", Some(&other), &value).assert_error(507);
    assert_eq!(session_bytes(&node), Some((1004, 2)));

    // A removal frees the value (the name stays, as the removal's version).
    let removed = send(&node, "DELETE", "/session/attributes/a0", Some(&cookie));
    assert_eq!(removed.code, 204, "{removed:?}");
    assert_eq!(session_bytes(&node), Some((504, 2)));
    assert_eq!(put(&node, "a2", Some(&cookie), &value).code, 204);
    assert_eq!(attribute(&node, "a2", &cookie).body, value);
    assert_eq!(session_bytes(&node), Some((1006, 2)));

    // Invalidation gives everything back.
    let ended = send(&node, "POST", "/session/invalidate", Some(&cookie));
    assert_eq!(ended.code, 204, "{ended:?}");
    assert_eq!(session_bytes(&node), Some((0, 2)));
}

#[test]
fn a_replica_counts_the_same_bytes_as_the_node_that_took_the_writes() {
    let cluster = Cluster::new("max-bytes-pair");
    let args: Vec<&str> = FAST
        .iter()
        .chain(&["--set", "sessions.max_bytes=1024"])
        .copied()
        .collect();
    let n1 = cluster.node("n1", &args);
    let n2 = cluster.node("n2", &args);
    common::wait_converged(&[&n1, &n2], STARTUP);
    for node in [&n1, &n2] {
        wait_until(STARTUP, "the node is ready", || {
            (node.status()?["node"]["state"] == "ready").then_some(())
        });
    }
    let value = [b'v'; 300];
    let cookie = put(&n1, "a", None, &value).issued();
    assert_eq!(put(&n1, "b", Some(&cookie), &value).code, 204);
    assert_eq!(put(&n1, "a", Some(&cookie), b"short").code, 204);
    let removed = send(&n1, "DELETE", "/session/attributes/b", Some(&cookie));
    assert_eq!(removed.code, 204, "{removed:?}");
    // a: 1 + 5, b: 1 (its removal).
    assert_eq!(session_bytes(&n1), Some((7, 0)));
    wait_until(STARTUP, "the replica holds the same bytes", || {
        (session_bytes(&n2)? == (7, 0)).then_some(())
    });
    // The replica's budget holds for its own clients.
    let local = put(&n2, "big", Some(&cookie), &[b'x'; 1020]);
    local.assert_error(507);
    assert_eq!(session_bytes(&n2), Some((7, 1)));
    let ended = send(&n1, "POST", "/session/invalidate", Some(&cookie));
    assert_eq!(ended.code, 204, "{ended:?}");
    wait_until(STARTUP, "the replica frees the bytes", || {
        (session_bytes(&n2)?.0 == 0).then_some(())
    });
}
