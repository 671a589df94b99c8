//! A small HTTP/1.1 GET client for the commands that read `/status`.
//!
//! It is pointed at whatever URL an operator types, so it trusts nothing it is sent: an
//! answer is read up to [`MAX_ANSWER`] bytes, and the caller gives one deadline for the
//! whole exchange (connect, head and body), so a server that never ends its answer, or
//! declares a terabyte, costs a few seconds and a megabyte, not the machine.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Uri;
use hyper::body::Body;
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The largest answer body read: a `/status` of thousands of members is far below this.
pub const MAX_ANSWER: usize = 1024 * 1024;

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("invalid URL {url:?}: expected http://host:port[/path]")]
    Url { url: String },
    #[error("cannot reach {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url} did not send its whole answer in time")]
    Timeout { url: String },
    #[error("unexpected answer from {url}: {reason}")]
    Body { url: String, reason: String },
    #[error("{url} answered with more than {limit} bytes; not a status document")]
    TooLarge { url: String, limit: usize },
}

/// `url` with `path` in place of its path (and query), e.g. a base URL plus `/status`.
pub fn with_path(url: &str, path: &str) -> Result<Uri, HttpError> {
    let bad = || HttpError::Url {
        url: url.to_string(),
    };
    let uri: Uri = url.parse().map_err(|_| bad())?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(bad());
    }
    let authority = uri.authority().ok_or_else(bad)?.clone();
    // `Uri` takes any digits as a port, and one beyond 65535 reads back as none at all,
    // which would quietly become port 80.
    let after_host = authority.as_str().rsplit(']').next().unwrap_or_default();
    if let Some((_, port)) = after_host.rsplit_once(':') {
        if !matches!(port.parse::<u16>(), Ok(1..)) {
            return Err(bad());
        }
    }
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| bad())
}

/// GETs `uri` and returns the body of a 2xx answer, if all of it came within `timeout`.
pub async fn get(uri: &Uri, timeout: Duration) -> Result<Bytes, HttpError> {
    let url = uri.to_string();
    tokio::time::timeout(timeout, get_inner(uri, &url))
        .await
        .map_err(|_| HttpError::Timeout { url: url.clone() })?
}

/// Ends the connection's task when the exchange ends, however it ends.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn get_inner(uri: &Uri, url: &str) -> Result<Bytes, HttpError> {
    let connect_err = |reason: String| HttpError::Connect {
        url: url.to_string(),
        reason,
    };
    let host = uri.host().ok_or_else(|| HttpError::Url {
        url: url.to_string(),
    })?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        // Its errors reach the exchange through `send_request` and the body.
        let _ = conn.await;
    }));
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or(host);
    let request = hyper::Request::get(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header(hyper::header::HOST, authority)
        .header(
            hyper::header::USER_AGENT,
            concat!("deltacast/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| connect_err(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(HttpError::Status {
            url: url.to_string(),
            status: status.as_u16(),
        });
    }
    let too_large = || HttpError::TooLarge {
        url: url.to_string(),
        limit: MAX_ANSWER,
    };
    let body = response.into_body();
    if body.size_hint().lower() > MAX_ANSWER as u64 {
        return Err(too_large());
    }
    let body = Limited::new(body, MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                HttpError::Body {
                    url: url.to_string(),
                    reason: e.to_string(),
                }
            }
        })?;
    Ok(body.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_gets_the_path() {
        let uri = with_path("http://127.0.0.1:8081", "/status").unwrap();
        assert_eq!(uri.to_string(), "http://127.0.0.1:8081/status");
        let uri = with_path("http://localhost:8081/anything?x=1", "/status").unwrap();
        assert_eq!(uri.to_string(), "http://localhost:8081/status");
        let uri = with_path("http://[::1]:8081", "/status").unwrap();
        assert_eq!(uri.port_u16(), Some(8081));
        with_path("http://localhost", "/status").unwrap();
    }

    #[test]
    fn bad_urls_are_rejected() {
        for url in [
            "",
            "127.0.0.1:8081",
            "https://x:1",
            "ftp://x",
            "http://",
            "http://127.0.0.1:99999",
            "http://127.0.0.1:0",
            "http://[::1]:70000",
            "http://x:",
        ] {
            assert!(with_path(url, "/status").is_err(), "{url}");
        }
    }
}
