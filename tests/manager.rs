//! The balancer-manager as an attacker on the network meets it (issue 12): a change needs
//! the page's nonce, a page of another site cannot post one, and a client outside
//! `balancer.manager_allow` gets 403 for everything under the prefix, which never reaches
//! a member. Real balancer processes, raw sockets.

mod common;

use std::net::SocketAddr;

use common::fake_member::{Behaviour, RawMember};
use common::raw_http::raw_answer;
use common::{BalancerProc, Cluster};

/// A balancer with one static member, n1 (a fake that answers `200 ok`).
fn balancer_with_n1(test: &str, extra: &[&str]) -> (Cluster, RawMember, BalancerProc) {
    let cluster = Cluster::new(test);
    let member = RawMember::start(Behaviour::Healthy);
    let mut args = vec![
        "--set".to_string(),
        "balancer.discover=false".to_string(),
        "--member".to_string(),
        member.member_arg("n1"),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let b = if extra.is_empty() {
        BalancerProc::spawn(&cluster, &args)
    } else {
        BalancerProc::start(&cluster, &args)
    };
    (cluster, member, b)
}

fn state_of_n1(b: &BalancerProc) -> String {
    let status = b.status().expect("the status JSON");
    status["members"][0]["state"]
        .as_str()
        .expect("n1's state")
        .to_string()
}

/// A POST of `form` to the member path with `host` and, if given, `origin`.
fn post(addr: SocketAddr, host: &str, origin: Option<&str>, form: &str) -> (u16, String) {
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST /balancer-manager/member HTTP/1.1\r\nHost: {host}\r\n{origin}Connection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    );
    let (status, _, body) = raw_answer(addr, request.as_bytes());
    (status, body)
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (status, _, body) = raw_answer(addr, request.as_bytes());
    (status, body)
}

/// The nonce of the page's forms, as a browser would submit it.
fn scrape_nonce(page: &str) -> String {
    let marker = "name=\"nonce\" value=\"";
    let start = page.find(marker).expect("the page's forms carry a nonce") + marker.len();
    let len = page[start..].find('"').expect("the nonce's closing quote");
    page[start..start + len].to_string()
}

#[test]
fn the_curl_of_the_issue_without_a_nonce_is_refused_and_changes_nothing() {
    let (_cluster, _member, b) = balancer_with_n1("manager-curl", &[]);
    let host = b.addr.to_string();
    let (status, body) = post(
        b.addr,
        &host,
        Some(&format!("http://{host}")),
        "route=n1&action=disable",
    );
    assert_eq!(status, 403, "answer: {body}");
    assert_eq!(body.lines().count(), 1, "one line: {body:?}");
    assert_eq!(state_of_n1(&b), "ok");
}

#[test]
fn a_dns_rebinding_page_is_refused_and_changes_nothing() {
    let (_cluster, _member, b) = balancer_with_n1("manager-rebind", &[]);
    let (status, body) = post(
        b.addr,
        "attacker.example",
        Some("http://attacker.example"),
        "route=n1&action=disable",
    );
    assert_eq!(status, 403, "answer: {body}");
    // Even with a nonce guessed wrong.
    let (status, _) = post(
        b.addr,
        "attacker.example",
        Some("http://attacker.example"),
        "route=n1&action=disable&nonce=00000000000000000000000000000000",
    );
    assert_eq!(status, 403);
    assert_eq!(state_of_n1(&b), "ok");
}

#[test]
fn a_wrong_nonce_or_a_foreign_origin_is_refused_and_changes_nothing() {
    let (_cluster, _member, b) = balancer_with_n1("manager-nonce", &[]);
    let host = b.addr.to_string();
    let own = format!("http://{host}");
    let (_, page) = get(b.addr, "/balancer-manager");
    let nonce = scrape_nonce(&page);
    let wrong: String = nonce
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    let form = format!("route=n1&action=disable&nonce={wrong}");
    assert_eq!(post(b.addr, &host, Some(&own), &form).0, 403);
    let form = format!("route=n1&action=disable&nonce={nonce}");
    assert_eq!(
        post(b.addr, &host, Some("http://evil.example"), &form).0,
        403,
        "the right nonce from a foreign origin"
    );
    assert_eq!(state_of_n1(&b), "ok");
    let (_, json) = get(b.addr, "/balancer-manager/status");
    assert!(!json.contains(&nonce), "the JSON does not show the nonce");
}

#[test]
fn the_pages_own_form_with_its_nonce_still_works() {
    let (_cluster, _member, b) = balancer_with_n1("manager-form", &[]);
    let host = b.addr.to_string();
    let (status, page) = get(b.addr, "/balancer-manager");
    assert_eq!(status, 200);
    let nonce = scrape_nonce(&page);
    assert_eq!(nonce.len(), 32, "128 bits in hex: {nonce}");
    let form = format!("route=n1&action=drain&nonce={nonce}");
    assert_eq!(
        post(b.addr, &host, Some(&format!("http://{host}")), &form).0,
        303
    );
    assert_eq!(state_of_n1(&b), "draining");
    // Without an Origin (an old browser, curl with the nonce) the nonce alone decides.
    let form = format!("route=n1&action=enable&nonce={nonce}");
    assert_eq!(post(b.addr, &host, None, &form).0, 303);
    assert_eq!(state_of_n1(&b), "ok");
}

#[test]
fn a_client_outside_manager_allow_gets_403_everywhere_and_nothing_reaches_a_member() {
    let (_cluster, member, b) = balancer_with_n1(
        "manager-allow",
        &["--set", "balancer.manager_allow=10.0.0.0/8"],
    );
    let host = b.addr.to_string();
    for path in [
        "/balancer-manager",
        "/balancer-manager/status",
        "/balancer-manager/metrics",
        "/balancer-manager/",
    ] {
        let (status, body) = get(b.addr, path);
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body.lines().count(), 1, "one line: {body:?}");
        assert!(!body.contains("n1") && !body.contains(&member.addr.to_string()));
    }
    // X-Forwarded-For is the client's word, never believed.
    let request = format!(
        "GET /balancer-manager/status HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-For: 10.1.2.3\r\n\
         Connection: close\r\n\r\n"
    );
    assert_eq!(raw_answer(b.addr, request.as_bytes()).0, 403);
    let (status, _) = post(
        b.addr,
        &host,
        Some(&format!("http://{host}")),
        "route=n1&action=disable",
    );
    assert_eq!(status, 403);
    // Nothing changed: a plain request is still proxied to n1, which saw no manager path.
    assert_eq!(get(b.addr, "/after").0, 200);
    let received = member.received();
    assert!(received.contains("GET /after"), "received: {received:?}");
    assert!(
        !received.contains("balancer-manager"),
        "a manager request reached the member: {received:?}"
    );
}

#[test]
fn a_balancer_that_can_have_no_member_says_so_at_start() {
    let cluster = Cluster::new("manager-nomember");
    let _b = BalancerProc::spawn(&cluster, &["--set", "balancer.discover=false"]);
    let log = common::log_path(&cluster.name, "balancer");
    let line = common::wait_until(
        std::time::Duration::from_secs(10),
        "the balancer warns that it has no member",
        || {
            let text = std::fs::read_to_string(&log).ok()?;
            text.lines()
                .find(|l| l.contains("WARN") && l.contains("no [[balancer.member]]"))
                .map(str::to_string)
        },
    );
    assert!(line.contains("discover"), "{line}");
}
