//! `examples/shop.rs` as a user runs it: three shop processes (each a cluster node serving
//! the app on its `node.http`) behind `deltacast balancer`, which finds them from their
//! heartbeats. Log in, fill the cart through the balancer, read it from another instance,
//! kill -9 the sticky one: the cart is intact and the cookie's route moved.
//!
//! Cargo gives tests no `CARGO_BIN_EXE_` for examples, so the shop binary is found where
//! cargo puts examples, next to this test's own directory: `target/<profile>/examples/shop`
//! beside `target/<profile>/deps/<this test>`. `cargo test` builds the examples before it
//! runs any test; with `cargo test --test shop` alone, run `cargo build --examples` first.

mod common;

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use common::{BalancerProc, Cluster, FAST, get_json, log_path, read_listening, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);

/// `target/<profile>/examples/shop`, found from this test binary's path.
fn shop_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>");
    let shop = profile_dir.join("examples").join("shop");
    assert!(
        shop.exists(),
        "{} is missing: build it with `cargo build --examples` (cargo test builds it itself)",
        shop.display()
    );
    shop
}

/// A shop process, killed (SIGKILL, by its PID) when dropped.
struct Shop {
    child: Child,
    name: String,
    http: SocketAddr,
}

impl Shop {
    fn spawn<S: AsRef<OsStr>>(cluster: &Cluster, name: &str, extra: &[S]) -> Shop {
        let log = log_path(&cluster.name, name);
        let stderr = File::create(&log).expect("log file");
        let mut child = Command::new(shop_binary())
            .args(["--cluster", &cluster.name])
            .args(["--multicast", &cluster.multicast])
            .args(["--name", name])
            .args(["--http", "127.0.0.1:0"])
            .args(["--replication", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "deltacast=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn the shop");
        let found = read_listening(&mut child, DEADLINE).unwrap_or_else(|status| {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("shop {name} exited while starting ({status:?}):\n{text}")
        });
        Shop {
            http: *found.get("node.http").expect("the shop reports node.http"),
            child,
            name: name.to_string(),
        }
    }

    fn kill9(&mut self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL).expect("kill the shop");
        let _ = self.child.wait();
    }

    fn alive_members(&self) -> Option<usize> {
        let status = get_json(self.http, "/status")?;
        Some(
            status["members"]
                .as_array()?
                .iter()
                .filter(|m| m["state"] == "alive")
                .count(),
        )
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// An answer: status, the `NAME=VALUE` of its `Set-Cookie`, the body as JSON (or null).
#[derive(Debug)]
struct Answer {
    status: u16,
    set_cookie: Option<String>,
    json: Value,
}

/// One HTTP/1.1 exchange; `form` is sent as `application/x-www-form-urlencoded`.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> Option<Answer> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(DEADLINE)).ok()?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(cookie) = cookie {
        head.push_str(&format!("Cookie: {cookie}\r\n"));
    }
    let body = form.unwrap_or_default();
    if form.is_some() {
        head.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(head.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut set_cookie = None;
    let mut chunked = false;
    for line in head.lines().skip(1) {
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("set-cookie") {
            set_cookie = value.trim().split(';').next().map(str::to_string);
        }
        if name.eq_ignore_ascii_case("transfer-encoding") && value.contains("chunked") {
            chunked = true;
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Some(Answer {
        status,
        set_cookie,
        json: serde_json::from_str(&body).unwrap_or(Value::Null),
    })
}

fn dechunk(mut raw: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = raw.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        raw = rest.get(size + 2..)?;
    }
}

/// A client with one cookie, as a browser keeps it.
#[derive(Default)]
struct Browser {
    cookie: Option<String>,
}

impl Browser {
    fn send(&mut self, addr: SocketAddr, method: &str, path: &str, form: Option<&str>) -> Answer {
        let answer = request(addr, method, path, self.cookie.as_deref(), form)
            .unwrap_or_else(|| panic!("{method} {path} on {addr} got no answer"));
        if let Some(cookie) = &answer.set_cookie {
            self.cookie = Some(cookie.clone());
        }
        answer
    }

    /// (id, route) of the cookie.
    fn session(&self) -> (String, String) {
        let value = self
            .cookie
            .as_deref()
            .and_then(|c| c.split_once('='))
            .map(|(_, v)| v)
            .expect("a session cookie");
        let (id, route) = value.rsplit_once('.').expect("ID.route");
        (id.to_string(), route.to_string())
    }
}

#[test]
fn three_shops_behind_the_balancer_keep_the_cart_through_a_kill_and_a_login_changes_the_id() {
    let cluster = Cluster::new("shop");
    let mut shops: Vec<Shop> = ["s1", "s2", "s3"]
        .iter()
        .map(|name| Shop::spawn(&cluster, name, FAST))
        .collect();
    wait_until(DEADLINE, "the shops see each other", || {
        shops
            .iter()
            .all(|s| s.alive_members() == Some(2))
            .then_some(())
    });
    let balancer = BalancerProc::spawn(&cluster, FAST);
    wait_until(DEADLINE, "the balancer found the three shops", || {
        (balancer.routes()? == ["s1", "s2", "s3"]).then_some(())
    });
    let lb = balancer.addr;

    // Before login: a cart with one item makes a session.
    let mut browser = Browser::default();
    let empty = browser.send(lb, "GET", "/cart", None);
    assert_eq!(empty.status, 200);
    assert_eq!(empty.json["items"], json!([]));
    assert!(empty.set_cookie.is_none(), "reading makes no session");
    assert_eq!(
        browser.send(lb, "POST", "/cart", Some("item=tea")).status,
        204
    );
    let before = browser.cookie.clone().expect("a session cookie");
    let (old_id, _) = browser.session();

    // Login changes the id; the cart comes along.
    assert_eq!(
        browser.send(lb, "POST", "/login", Some("name=ada")).status,
        204
    );
    let (new_id, sticky) = browser.session();
    assert_ne!(new_id, old_id, "login must change the session id");
    for item in ["coffee", "cake"] {
        let added = browser.send(lb, "POST", "/cart", Some(&format!("item={item}")));
        assert_eq!(added.status, 204);
    }
    assert_eq!(
        browser.session().1,
        sticky,
        "the balancer kept the session's route"
    );
    let want_items = json!(["tea", "coffee", "cake"]);

    // Every instance serves the cart directly; the old id is dead on every one.
    for shop in &shops {
        let cart =
            request(shop.http, "GET", "/cart", browser.cookie.as_deref(), None).expect("an answer");
        assert_eq!(cart.status, 200);
        assert_eq!(
            cart.json,
            json!({"node": shop.name, "user": "ada", "items": want_items}),
            "on {}",
            shop.name
        );
        let old = request(shop.http, "GET", "/cart", Some(&before), None).expect("an answer");
        assert_eq!(
            old.json,
            json!({"node": shop.name, "user": null, "items": []}),
            "the id before login still serves on {}",
            shop.name
        );
    }

    // kill -9 the sticky instance: the cart is intact through the balancer, and the
    // cookie's route moved to the instance that served it.
    let victim = shops
        .iter()
        .position(|s| s.name == sticky)
        .expect("the sticky route is a shop");
    shops[victim].kill9();
    let cart = browser.send(lb, "GET", "/cart", None);
    assert_eq!(cart.status, 200, "{cart:?}");
    assert_eq!(cart.json["items"], want_items);
    assert_eq!(cart.json["user"], "ada");
    let (id_after, route_after) = browser.session();
    assert_eq!(id_after, new_id, "the same session");
    assert_ne!(
        route_after, sticky,
        "the cookie still names the dead instance"
    );
    assert_eq!(cart.json["node"], route_after.as_str());

    // Logout is seen everywhere.
    let session = browser.cookie.clone().expect("a cookie");
    assert_eq!(browser.send(lb, "POST", "/logout", None).status, 204);
    for (i, shop) in shops.iter().enumerate() {
        if i == victim {
            continue;
        }
        let cart = request(shop.http, "GET", "/cart", Some(&session), None).expect("an answer");
        assert_eq!(
            (cart.json["user"].clone(), cart.json["items"].clone()),
            (Value::Null, json!([])),
            "logged in still on {}",
            shop.name
        );
    }
}
