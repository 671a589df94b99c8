//! deltacast behind the front ends a team moving off Tomcat already runs, each a real
//! program from Debian's packages started by the test on a free loopback port with its own
//! config (`common::apache`, `common::nginx`, `common::haproxy`): Apache httpd with
//! mod_proxy_http, nginx and HAProxy, each sticky by the route suffix of the session
//! cookie and keeping the session when the sticky node is killed; and deltacast's own
//! balancer setting a sticky cookie (`sticky = "cookie:ROUTEID"`) in front of plain nginx
//! backends that know nothing of sessions, and Apache doing the same with the seed's
//! `Header add Set-Cookie "ROUTEID=..."`. The configs are the ones docs/front-ends.md
//! shows. A test whose front end is not installed prints why it skips.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::apache::Apache;
use common::haproxy::HaproxyProc;
use common::nginx::NginxProc;
use common::{Answer, BalancerProc, Browser, Cluster, FAST, NodeProc, exchange, wait_until};

const STARTUP: Duration = Duration::from_secs(30);

fn node(cluster: &Cluster, name: &str) -> NodeProc {
    let n = cluster.node(name, FAST);
    wait_until(STARTUP, "the node answers", || n.status());
    n
}

/// Two converged nodes n1 and n2 of a cluster of their own.
fn two_nodes(test: &str) -> (Cluster, NodeProc, NodeProc) {
    let cluster = Cluster::new(test);
    let n1 = node(&cluster, "n1");
    let n2 = node(&cluster, "n2");
    common::wait_converged(&[&n1, &n2], STARTUP);
    (cluster, n1, n2)
}

/// The name of the node whose test page this is.
fn page_node(answer: &Answer) -> String {
    let text = answer.text();
    let at = text
        .find("<td id=\"node\">")
        .unwrap_or_else(|| panic!("not a test page: {text}"))
        + "<td id=\"node\">".len();
    text[at..].split('<').next().unwrap_or_default().to_string()
}

/// The hits counter of the test page.
fn hits(answer: &Answer) -> u64 {
    let text = answer.text();
    let at = text.find("id=\"hits\">").expect("a hits cell") + "id=\"hits\">".len();
    text[at..]
        .split('<')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number")
}

fn route_of(cookie: &str) -> String {
    cookie.rsplit('.').next().unwrap_or_default().to_string()
}

/// The scenario every front end in front of nodes must pass: a new session lands on some
/// node, the next 20 requests stay there (the page's hit counter counts each), the sticky
/// node is killed (SIGKILL), and the session goes on on the other one with its counter,
/// the cookie now naming the new route. `front` is where the front end listens; `logs`
/// tells what the front end wrote, for a failure.
fn sticky_then_failover(front: SocketAddr, n1: NodeProc, n2: NodeProc, logs: &dyn Fn() -> String) {
    let mut browser = Browser::new();
    let first = browser.send(front, "GET", "/", b"");
    assert_eq!(first.status, 200, "{}\n{}", first.text(), logs());
    let cookie = browser.cookie.clone().expect("a session cookie");
    let route = route_of(&cookie);
    assert_eq!(page_node(&first), route);
    for i in 2..=21 {
        let a = browser.send(front, "GET", "/", b"");
        assert_eq!(a.status, 200, "{}\n{}", a.text(), logs());
        assert_eq!(
            page_node(&a),
            route,
            "request {i} left its route\n{}",
            logs()
        );
        assert_eq!(hits(&a), i);
    }
    let (dead, survivor) = if route == "n1" { (n1, n2) } else { (n2, n1) };
    drop(dead);
    let other = survivor.name.clone();
    let a = browser.send(front, "GET", "/", b"");
    assert_eq!(a.status, 200, "{}\n{}", a.text(), logs());
    assert_eq!(page_node(&a), other);
    assert_eq!(hits(&a), 22, "the session was kept");
    let moved = browser.cookie.clone().expect("a cookie");
    assert_eq!(route_of(&moved), other, "the route moved with the session");
    assert_eq!(
        Browser {
            cookie: Some(moved)
        }
        .session_id(),
        Browser {
            cookie: Some(cookie)
        }
        .session_id(),
        "the same session"
    );
    for i in 23..=30 {
        let a = browser.send(front, "GET", "/", b"");
        assert_eq!(a.status, 200, "{}\n{}", a.text(), logs());
        assert_eq!(page_node(&a), other);
        assert_eq!(hits(&a), i);
    }
}

#[test]
fn apache_mod_proxy_http_sticks_by_route_and_keeps_the_session_when_the_node_dies() {
    let (_cluster, n1, n2) = two_nodes("fe-apache-http");
    let Some(apache) = Apache::new()
        .modules(&[
            "proxy",
            "proxy_http",
            "proxy_balancer",
            "slotmem_shm",
            "lbmethod_byrequests",
        ])
        .config(&format!(
            "<Proxy \"balancer://cluster\">\n\
             \x20   BalancerMember \"http://{}\" route=n1 retry=1\n\
             \x20   BalancerMember \"http://{}\" route=n2 retry=1\n\
             \x20   ProxySet stickysession=JSESSIONID|jsessionid lbmethod=byrequests\n\
             </Proxy>\n\
             <Location \"/balancer-manager\">\n\
             \x20   SetHandler balancer-manager\n\
             \x20   Require ip 127.0.0.1\n\
             </Location>\n\
             ProxyPass \"/balancer-manager\" \"!\"\n\
             ProxyPass \"/\" \"balancer://cluster/\"\n\
             ProxyPassReverse \"/\" \"balancer://cluster/\"\n",
            n1.http, n2.http
        ))
        .start()
    else {
        return;
    };
    let manager = exchange(apache.addr(), "GET", "/balancer-manager", None, b"")
        .expect("the balancer-manager answers");
    assert_eq!(manager.status, 200, "{}", apache.logs());
    let page = manager.text();
    assert!(page.contains("balancer://cluster"), "{page}");
    for (route, n) in [("n1", &n1), ("n2", &n2)] {
        assert!(page.contains(&format!("http://{}", n.http)), "{page}");
        assert!(page.contains(&format!(">{route}<")), "{page}");
    }
    sticky_then_failover(apache.addr(), n1, n2, &|| apache.logs());
}

#[test]
fn nginx_maps_the_cookie_route_to_an_upstream_and_keeps_the_session_when_the_node_dies() {
    let (_cluster, n1, n2) = two_nodes("fe-nginx");
    let Some(nginx) = NginxProc::start(&format!(
        "map $cookie_JSESSIONID $sticky_upstream {{\n\
         \x20   ~\\.n1$ route_n1;\n\
         \x20   ~\\.n2$ route_n2;\n\
         \x20   default cluster;\n\
         }}\n\
         upstream cluster {{ server {a}; server {b}; }}\n\
         upstream route_n1 {{ server {a} max_fails=1 fail_timeout=5s; server {b} backup; }}\n\
         upstream route_n2 {{ server {b} max_fails=1 fail_timeout=5s; server {a} backup; }}\n\
         server {{\n\
         \x20   listen 127.0.0.1:@PORT@;\n\
         \x20   location / {{\n\
         \x20       proxy_pass http://$sticky_upstream;\n\
         \x20       proxy_http_version 1.1;\n\
         \x20       proxy_set_header Connection \"\";\n\
         \x20       proxy_set_header Host $host;\n\
         \x20       proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
         \x20       proxy_next_upstream error timeout;\n\
         \x20   }}\n\
         }}",
        a = n1.http,
        b = n2.http
    )) else {
        return;
    };
    sticky_then_failover(nginx.addr(), n1, n2, &|| nginx.logs());
}

#[test]
fn haproxy_uses_the_server_of_the_cookie_route_and_keeps_the_session_when_the_node_dies() {
    let (_cluster, n1, n2) = two_nodes("fe-haproxy");
    let Some(haproxy) = HaproxyProc::start(&format!(
        "frontend www\n\
         \x20   bind 127.0.0.1:@PORT@\n\
         \x20   default_backend nodes\n\
         backend nodes\n\
         \x20   balance roundrobin\n\
         \x20   option httpchk\n\
         \x20   http-check send meth GET uri /status ver HTTP/1.1 hdr Host localhost\n\
         \x20   http-check expect status 200\n\
         \x20   option redispatch\n\
         \x20   retries 2\n\
         \x20   acl route_n1 req.cook(JSESSIONID) -m end .n1\n\
         \x20   acl route_n2 req.cook(JSESSIONID) -m end .n2\n\
         \x20   use-server n1 if route_n1\n\
         \x20   use-server n2 if route_n2\n\
         \x20   server n1 {} check inter 500 fall 2 rise 1\n\
         \x20   server n2 {} check inter 500 fall 2 rise 1\n",
        n1.http, n2.http
    )) else {
        return;
    };
    sticky_then_failover(haproxy.addr(), n1, n2, &|| haproxy.logs());
}

/// One exchange on a new connection (`Connection: close`): the status, every `Set-Cookie`
/// value whole (attributes included) and the body as text.
fn ask(
    addr: SocketAddr,
    method: &str,
    cookie: Option<&str>,
    body: &str,
) -> (u16, Vec<String>, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("a read timeout");
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{cookie}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the answer");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an answer head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let set_cookies = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.trim().to_string())
        .collect();
    (status, set_cookies, body.trim().to_string())
}

#[test]
fn deltacast_balancer_sets_its_own_sticky_cookie_in_front_of_plain_nginx_backends() {
    let Some(b1) = NginxProc::answering("b1") else {
        return;
    };
    let Some(b2) = NginxProc::answering("b2") else {
        return;
    };
    let cluster = Cluster::new("fe-own-cookie");
    let balancer = BalancerProc::spawn(
        &cluster,
        &[
            "--set".to_string(),
            "balancer.discover=false".to_string(),
            "--set".to_string(),
            "balancer.sticky=cookie:ROUTEID".to_string(),
            "--member".to_string(),
            format!("b1=http://{}", b1.addr()),
            "--member".to_string(),
            format!("b2=http://{}", b2.addr()),
        ],
    );
    let front = balancer.addr;
    // Without the cookie: the lbmethod picks, and the answer names the member.
    let (status, set, first) = ask(front, "GET", None, "");
    assert_eq!(status, 200, "{first}");
    assert_eq!(set, [format!("ROUTEID=.{first}; Path=/; HttpOnly")]);
    let cookie = format!("ROUTEID=.{first}");
    // With it: the same member every time, on the fast path (GET) and hyper's (a POST with
    // a body), and nothing set again.
    for i in 0..20 {
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let (status, set, by) = ask(front, method, Some(&cookie), "x=1");
        assert_eq!((status, by.as_str()), (200, first.as_str()), "{method} {i}");
        assert!(set.is_empty(), "{method} {i} set {set:?}");
    }
    // Other cookies beside it change nothing; a cookie naming no member is replaced.
    let (_, set, by) = ask(front, "GET", Some(&format!("theme=dark; {cookie}")), "");
    assert_eq!((set.len(), by.as_str()), (0, first.as_str()));
    let (_, set, by) = ask(front, "POST", Some("ROUTEID=.gone"), "x=1");
    assert_eq!(set, [format!("ROUTEID=.{by}; Path=/; HttpOnly")]);
    // Its member stops: the next answer comes from the other one and moves the cookie.
    let (dead, survivor) = if first == "b1" { (b1, b2) } else { (b2, b1) };
    drop(dead);
    let other = if first == "b1" { "b2" } else { "b1" };
    for method in ["GET", "POST"] {
        let (status, set, by) = ask(front, method, Some(&cookie), "x=1");
        assert_eq!(
            (status, by.as_str()),
            (200, other),
            "{method}\n{}",
            survivor.logs()
        );
        assert_eq!(
            set,
            [format!("ROUTEID=.{other}; Path=/; HttpOnly")],
            "{method}"
        );
    }
    let moved = format!("ROUTEID=.{other}");
    for _ in 0..5 {
        let (status, set, by) = ask(front, "GET", Some(&moved), "");
        assert_eq!((status, set.len(), by.as_str()), (200, 0, other));
    }
}

#[test]
fn apache_sets_the_seeds_routeid_cookie_as_deltacasts_balancer_does() {
    // The seed's way for backends without routes in their ids, done by Apache itself: the
    // same cookie deltacast's `sticky = "cookie:ROUTEID"` sets.
    let Some(b1) = NginxProc::answering("b1") else {
        return;
    };
    let Some(b2) = NginxProc::answering("b2") else {
        return;
    };
    let Some(apache) = Apache::new()
        .modules(&[
            "proxy",
            "proxy_http",
            "proxy_balancer",
            "slotmem_shm",
            "lbmethod_byrequests",
            "headers",
        ])
        .config(&format!(
            "Header add Set-Cookie \"ROUTEID=.%{{BALANCER_WORKER_ROUTE}}e; path=/\" env=BALANCER_ROUTE_CHANGED\n\
             <Proxy \"balancer://plain\">\n\
             \x20   BalancerMember \"http://{}\" route=b1 retry=1\n\
             \x20   BalancerMember \"http://{}\" route=b2 retry=1\n\
             \x20   ProxySet stickysession=ROUTEID\n\
             </Proxy>\n\
             ProxyPass \"/\" \"balancer://plain/\"\n\
             ProxyPassReverse \"/\" \"balancer://plain/\"\n",
            b1.addr(),
            b2.addr()
        ))
        .start()
    else {
        return;
    };
    let (status, set, first) = ask(apache.addr(), "GET", None, "");
    assert_eq!(status, 200, "{first}\n{}", apache.logs());
    assert_eq!(set, [format!("ROUTEID=.{first}; path=/")]);
    let cookie = format!("ROUTEID=.{first}");
    for i in 0..10 {
        let (status, set, by) = ask(apache.addr(), "GET", Some(&cookie), "");
        assert_eq!((status, by.as_str()), (200, first.as_str()), "request {i}");
        assert!(set.is_empty(), "{set:?}");
    }
    let (dead, _survivor) = if first == "b1" { (b1, b2) } else { (b2, b1) };
    drop(dead);
    let other = if first == "b1" { "b2" } else { "b1" };
    let (status, set, by) = ask(apache.addr(), "GET", Some(&cookie), "");
    assert_eq!((status, by.as_str()), (200, other), "{}", apache.logs());
    assert_eq!(
        set,
        [format!("ROUTEID=.{other}; path=/")],
        "the cookie moved"
    );
}
