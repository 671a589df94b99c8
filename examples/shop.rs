//! A small shop on deltacast: log in with a name, fill a cart, log out. Every instance is a
//! cluster node, so a cart survives the death of any instance, with no Redis.
//!
//! It takes the flags and config of `deltacast node` (`--config`, `--name`, `--http`,
//! `--replication`, `--cluster`, `--multicast`, `--set KEY=VALUE`), serves the app on
//! `node.http` (beside the node's `/status` and `/metrics`), and `deltacast balancer`
//! finds its instances from their heartbeats:
//!
//! ```text
//! cargo run --release --example shop -- --name n1 --http 127.0.0.1:8081 --replication 127.0.0.1:4001
//! cargo run --release --example shop -- --name n2 --http 127.0.0.1:8082 --replication 127.0.0.1:4002
//! cargo run --release --example shop -- --name n3 --http 127.0.0.1:8083 --replication 127.0.0.1:4003
//! deltacast balancer --listen 127.0.0.1:8080
//! curl -c jar -b jar -d name=ada http://127.0.0.1:8080/login
//! curl -c jar -b jar -d item=tea http://127.0.0.1:8080/cart
//! curl -c jar -b jar http://127.0.0.1:8080/cart   # {"node":"n2","user":"ada","items":["tea"]}
//! ```
//!
//! - `POST /login` (form `name=`): sets `user` and gives the session a new id.
//! - `POST /cart` (form `item=`): adds the item to the cart.
//! - `GET /cart`: `{"node","user","items":[...]}`.
//! - `POST /logout`: ends the session on every member.

use std::process::ExitCode;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use clap::Parser;
use serde::{Deserialize, Serialize};

/// The shop's command line: exactly `deltacast node`'s.
#[derive(Debug, Parser)]
#[command(
    name = "shop",
    about = "A small shop whose sessions live in a deltacast cluster"
)]
struct Args {
    #[command(flatten)]
    node: deltacast::cli::NodeArgs,
}

#[derive(Deserialize)]
struct Login {
    name: String,
}

#[derive(Deserialize)]
struct Item {
    item: String,
}

#[derive(Serialize)]
struct Cart {
    node: String,
    user: Option<String>,
    items: Vec<String>,
}

/// The name of the node serving the request, for `GET /cart`.
#[derive(Clone)]
struct Here(String);

async fn login(session: deltacast::Session, Form(f): Form<Login>) -> StatusCode {
    session.insert("user", &f.name);
    session.change_id(); // against session fixation
    StatusCode::NO_CONTENT
}

async fn add(session: deltacast::Session, Form(f): Form<Item>) -> StatusCode {
    let mut items: Vec<String> = session.get("items").unwrap_or_default();
    items.push(f.item);
    session.insert("items", &items); // one delta, replicated before the answer
    StatusCode::NO_CONTENT
}

async fn show(State(here): State<Here>, session: deltacast::Session) -> Json<Cart> {
    Json(Cart {
        node: here.0,
        user: session.get("user"),
        items: session.get("items").unwrap_or_default(),
    })
}

async fn logout(session: deltacast::Session) -> StatusCode {
    session.invalidate();
    StatusCode::NO_CONTENT
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let config = args.node.load_config()?;
    let shutdown = deltacast::cli::shutdown_on_signal()?; // SIGTERM, Ctrl-C
    let node = deltacast::Node::builder(config)
        .shutdown(shutdown)
        .start()
        .await?; // joined the cluster, took its sessions
    let app = Router::new()
        .route("/login", post(login))
        .route("/cart", get(show).post(add))
        .route("/logout", post(logout))
        .layer(node.session_layer())
        .with_state(Here(node.name().to_string()));
    node.serve(app);
    deltacast::cli::report_listening(&node); // `listening node.http=... node.replication=...`
    node.stopped().await; // after a signal: leaves the cluster, drains
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("shop: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shop: {e}");
            ExitCode::FAILURE
        }
    }
}
