//! A small HTTP/1.1 GET client for the commands that read `/status`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Uri;
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::TcpStream;

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("invalid URL {url:?}: expected http://host:port[/path]")]
    Url { url: String },
    #[error("cannot reach {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url} did not answer within {0:?}", .timeout)]
    Timeout { url: String, timeout: Duration },
    #[error("unexpected answer from {url}: {reason}")]
    Body { url: String, reason: String },
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
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| bad())
}

/// GETs `uri` and returns the body of a 2xx answer.
pub async fn get(uri: &Uri, timeout: Duration) -> Result<Bytes, HttpError> {
    let url = uri.to_string();
    tokio::time::timeout(timeout, get_inner(uri, &url))
        .await
        .map_err(|_| HttpError::Timeout {
            url: url.clone(),
            timeout,
        })?
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
    tokio::spawn(conn);
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
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| HttpError::Body {
            url: url.to_string(),
            reason: e.to_string(),
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
    }

    #[test]
    fn bad_urls_are_rejected() {
        for url in ["", "127.0.0.1:8081", "https://x:1", "ftp://x", "http://"] {
            assert!(with_path(url, "/status").is_err(), "{url}");
        }
    }
}
