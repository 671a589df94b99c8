//! A member's answer on the fast path: its head parsed in place and passed on as the
//! rulebook says (hop-by-hop fields out, those `Connection` names too; `Transfer-Encoding`
//! kept, as the body goes on as it is), its framing known (RFC 9112 §6.3: a bad length or
//! an unrequested 101 fails the member), and its body copied as it comes, a chunked one
//! with its end found by [`ChunkedEnd`].

use std::sync::atomic::Ordering;

use bytes::{Buf, BytesMut};
use httparse::Status;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tracing::debug;

use super::head::{Asked, MAX_HEADERS, write_field};
use crate::balancer::choice::registry::Member;
use crate::balancer::http::fast::chunked::ChunkedEnd;
use crate::balancer::http::pool::Pool;
use crate::balancer::http::timeout::Stall;
use crate::balancer::net::client::ClientSocket;
use crate::balancer::rules::Refusal;
use crate::balancer::rules::fields::{self, Crossing, Named, Token};
use crate::balancer::rules::framing::{AnswerFields, Asked as Expects, Body, Doubt};

/// Largest answer head accepted from a member.
const MAX_ANSWER_HEAD: usize = 64 * 1024;

/// An answer head from a member, and the head for the client written from it.
pub struct Answer {
    /// Its status code.
    pub status: u16,
    head_len: usize,
    framing: Body,
    /// The member connection may carry another request after this answer.
    member_keeps: bool,
    /// The client connection closes after this answer.
    client_closes: bool,
}

/// Why no answer head came from a member.
pub enum NoAnswer {
    /// The connection ended before anything came back (a pooled one the member may have
    /// closed meanwhile).
    Closed,
    /// The member failed.
    Failed(String),
    /// Nothing within the member timeout.
    TimedOut,
}

/// Reads a member's answer head into `answer` (interim 1xx heads are skipped) and writes
/// the head for the client into `client_head`.
pub async fn read_answer(
    conn: &mut TcpStream,
    answer: &mut BytesMut,
    asked: Asked,
    deadline: tokio::time::Instant,
    client_head: &mut Vec<u8>,
) -> Result<Answer, NoAnswer> {
    answer.clear();
    let mut got_any = false;
    loop {
        if !answer.is_empty() {
            match parse_answer(answer, asked, client_head) {
                Ok(Some(Parsed::Final(head))) => return Ok(head),
                Ok(Some(Parsed::Interim(len))) => {
                    answer.advance(len);
                    continue;
                }
                Ok(None) if answer.len() > MAX_ANSWER_HEAD => {
                    return Err(NoAnswer::Failed("answer head too large".into()));
                }
                Ok(None) => {}
                Err(why) => return Err(NoAnswer::Failed(why.into())),
            }
        }
        if answer.capacity() - answer.len() < 1024 {
            answer.reserve(4096);
        }
        match tokio::time::timeout_at(deadline, conn.read_buf(answer)).await {
            Err(_) => return Err(NoAnswer::TimedOut),
            Ok(Ok(0)) | Ok(Err(_)) if !got_any => return Err(NoAnswer::Closed),
            Ok(Ok(0)) => return Err(NoAnswer::Failed("the answer ended early".into())),
            Ok(Err(e)) => return Err(NoAnswer::Failed(e.to_string())),
            Ok(Ok(_)) => got_any = true,
        }
    }
}

/// The answer head at the start of `answer`, if complete, with the client's head written.
fn parse_answer(
    answer: &[u8],
    asked: Asked,
    client_head: &mut Vec<u8>,
) -> Result<Option<Parsed>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let head_len = match res.parse(answer) {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) => return Ok(None),
        Err(_) => return Err("malformed answer head"),
    };
    let (Some(version), Some(code)) = (res.version, res.code) else {
        return Err("malformed answer head");
    };
    // This path asks for no upgrade: the rulebook refuses every switch.
    let mut framing_fields = AnswerFields::new(Expects {
        head: asked.head,
        upgrade: None,
    });
    if code == 101 {
        return Err(framing_fields
            .framing(code, version == 0)
            .err()
            .map_or("switching protocols", Doubt::as_str));
    }
    if (100..200).contains(&code) {
        // An interim answer (103 Early Hints, say): optional for the client, not passed on.
        return Ok(Some(Parsed::Interim(head_len)));
    }
    if !(200..1000).contains(&code) {
        return Err("bad status code");
    }
    let mut close = version == 0;
    let mut named = Named::default();
    let mut dated = false;
    for h in res.headers.iter() {
        let name = h.name;
        dated |= name.eq_ignore_ascii_case("date");
        framing_fields.field(name, h.value);
        if name.eq_ignore_ascii_case("connection") {
            let value = std::str::from_utf8(h.value).map_err(|_| "bad connection field")?;
            for token in fields::connection_tokens(value) {
                match token {
                    Token::Close => close = true,
                    Token::KeepAlive => close &= version != 0,
                    Token::Upgrade => {}
                    Token::Names(field) => named
                        .push(field)
                        .map_err(|_| "too many fields named by Connection")?,
                }
            }
        }
    }
    let framing = framing_fields
        .framing(code, version == 0)
        .map_err(Doubt::as_str)?;
    let client_closes = asked.close || framing.body == Body::UntilClose;
    client_head.clear();
    client_head.extend_from_slice(b"HTTP/1.1 ");
    client_head.extend_from_slice(&[
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ]);
    client_head.push(b' ');
    client_head.extend_from_slice(res.reason.unwrap_or("").as_bytes());
    client_head.extend_from_slice(b"\r\n");
    for h in res.headers.iter() {
        let name = h.name;
        // With Transfer-Encoding, a Content-Length is wrong (RFC 9112 §6.3): not passed on.
        let dropped = !framing.length_passed && name.eq_ignore_ascii_case("content-length");
        if fields::answered(name, &named, Crossing::Relayed) && !dropped {
            write_field(client_head, name.as_bytes(), h.value);
        }
    }
    if !dated {
        // A proxy forwarding an answer without a date adds one (RFC 9110 §6.6.1).
        let now = httpdate::fmt_http_date(std::time::SystemTime::now());
        write_field(client_head, b"date", now.as_bytes());
    }
    if client_closes {
        client_head.extend_from_slice(b"connection: close\r\n");
    }
    client_head.extend_from_slice(b"\r\n");
    Ok(Some(Parsed::Final(Answer {
        status: code,
        head_len,
        framing: framing.body,
        member_keeps: !close && framing.reusable,
        client_closes,
    })))
}

/// A complete answer head.
enum Parsed {
    /// An interim (1xx) head of this many bytes, skipped.
    Interim(usize),
    Final(Answer),
}

/// Passes a member's answer (its head read into `answer`, the client's written into
/// `client_head`) on to the client, and the member connection back to the pool when it
/// may carry another request. Whether the answer went through whole; or, when its body
/// is malformed in what came with the head (nothing went out yet), the answer the client
/// gets instead (502), as on the hyper path.
pub async fn pass_answer(
    pool: &Pool,
    client: &mut ClientSocket,
    member: &Member,
    mut conn: TcpStream,
    answer: &mut BytesMut,
    head: Answer,
    out: &mut Vec<u8>,
) -> Result<bool, Refusal> {
    let timeout = pool.timeout();
    answer.advance(head.head_len);
    let mut chunks = ChunkedEnd::default();
    // The chunked body's data bytes already counted in the member's `bytes_out`.
    let mut counted = 0;
    // The body bytes still to come (for a length), and whether the body is whole.
    let (mut left, mut whole) = match head.framing {
        Body::None => (0, true),
        Body::Length(n) => (n, n == 0),
        Body::Chunked | Body::UntilClose => (0, false),
    };
    let mut extra = false;
    let mut sent_any = false;
    loop {
        // What of the bytes read belongs to the body (`out` holds the head at first).
        let pending: &[u8] = answer;
        let take = match head.framing {
            Body::None => 0,
            Body::Length(_) => {
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(pending.len());
                left -= take as u64;
                whole = left == 0;
                take
            }
            Body::Chunked => match chunks.feed(pending) {
                Ok(take) => {
                    whole = chunks.done();
                    take
                }
                Err(e) => {
                    member.errors.fetch_add(1, Ordering::Relaxed);
                    if !sent_any {
                        debug!(member = %member.route, error = %e, "malformed answer; 502");
                        return Err(Refusal::MemberFailed);
                    }
                    debug!(member = %member.route, error = %e, "answer cut off");
                    // What came before goes out; the connection is closed.
                    let _ = client.write_all(out).await;
                    return Ok(false);
                }
            },
            Body::UntilClose => pending.len(),
        };
        extra |= take < pending.len();
        out.extend_from_slice(&pending[..take]);
        // The body's bytes, as the hyper path counts them: a chunked one without framing.
        let body_bytes = match head.framing {
            Body::Chunked => {
                let data = chunks.data();
                let new = data - counted;
                counted = data;
                new
            }
            _ => take as u64,
        };
        member.bytes_out.fetch_add(body_bytes, Ordering::Relaxed);
        let written = if whole && head.client_closes {
            client.write_last(out).await
        } else {
            client.write_all(out).await
        };
        if written.is_err() {
            return Ok(false);
        }
        sent_any = true;
        out.clear();
        if whole {
            break;
        }
        answer.clear();
        if answer.capacity() < 4096 {
            answer.reserve(4096);
        }
        match tokio::time::timeout(timeout.after(), conn.read_buf(answer)).await {
            Ok(Ok(0)) if head.framing == Body::UntilClose => return Ok(false),
            Ok(Ok(0)) | Ok(Err(_)) => {
                debug!(member = %member.route, "the member's answer ended early; cut off");
                return Ok(false);
            }
            Err(_) => {
                member.errors.fetch_add(1, Ordering::Relaxed);
                timeout.note(Stall::AnswerBody, Some(&member.route));
                return Ok(false);
            }
            Ok(Ok(_)) => {}
        }
    }
    if head.member_keeps && !extra {
        pool.release_raw(member, conn);
    }
    Ok(head.framing != Body::UntilClose)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer_of(
        head: &str,
        request_head: bool,
        close: bool,
    ) -> Result<(Answer, String), &'static str> {
        let asked = Asked {
            head: request_head,
            close,
        };
        let mut client = Vec::new();
        match parse_answer(head.as_bytes(), asked, &mut client)? {
            Some(Parsed::Final(a)) => Ok((a, without_added_date(head, client))),
            Some(Parsed::Interim(_)) => Err("interim"),
            None => Err("partial"),
        }
    }

    /// The head for the client, less the `date` field added when the member's `head` had
    /// none (checked to be there, and to be an HTTP date).
    fn without_added_date(head: &str, client: Vec<u8>) -> String {
        let client = String::from_utf8(client).unwrap();
        if head.to_ascii_lowercase().contains("\r\ndate:") {
            assert_eq!(
                client.matches("date:").count() + client.matches("Date:").count(),
                1
            );
            return client;
        }
        let start = client.find("date: ").expect("a date added");
        let end = start + client[start..].find("\r\n").unwrap() + 2;
        let value = &client[start + 6..end - 2];
        assert!(httpdate::parse_http_date(value).is_ok(), "{value}");
        format!("{}{}", &client[..start], &client[end..])
    }

    #[test]
    fn a_members_date_is_passed_on_and_a_missing_one_added() {
        let with =
            "HTTP/1.1 200 OK\r\nDate: Tue, 24 Nov 2026 08:00:00 GMT\r\nContent-Length: 0\r\n\r\n";
        let (_, client) = answer_of(with, false, false).unwrap();
        assert_eq!(
            client,
            "HTTP/1.1 200 OK\r\nDate: Tue, 24 Nov 2026 08:00:00 GMT\r\nContent-Length: 0\r\n\r\n"
        );
        let (_, client) = answer_of("HTTP/1.1 204 No Content\r\n\r\n", false, false).unwrap();
        assert_eq!(client, "HTTP/1.1 204 No Content\r\n\r\n");
    }

    #[test]
    fn an_answer_head_is_passed_on_without_hop_by_hop_fields_and_its_framing_known() {
        let (a, client) = answer_of(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
             Keep-Alive: timeout=5\r\nSet-Cookie: s=1\r\n\r\nhello",
            false,
            false,
        )
        .unwrap();
        assert_eq!(a.framing, Body::Length(5));
        assert!(a.member_keeps);
        assert_eq!(
            client,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nSet-Cookie: s=1\r\n\r\n"
        );
        let (a, client) = answer_of(
            "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            true,
        )
        .unwrap();
        assert_eq!(a.framing, Body::Chunked);
        assert_eq!(
            client,
            "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        let (a, client) = answer_of("HTTP/1.0 200 OK\r\n\r\nbody", false, false).unwrap();
        assert_eq!(a.framing, Body::UntilClose);
        assert!(!a.member_keeps);
        assert_eq!(client, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
        let (a, _) =
            answer_of("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true, false).unwrap();
        assert_eq!(a.framing, Body::None, "an answer to HEAD has no body");
        let (a, _) = answer_of(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false,
            false,
        )
        .unwrap();
        assert_eq!(a.framing, Body::None);
        let (a, _) = answer_of(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            false,
            false,
        )
        .unwrap();
        assert!(!a.member_keeps);
        // A transfer coding nobody asked for (the balancer sends no TE): refused.
        assert!(
            answer_of(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                false,
                false,
            )
            .is_err()
        );
        assert_eq!(
            answer_of("HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n", false, false).err(),
            Some("interim")
        );
        assert_eq!(
            answer_of("HTTP/1.1 200 OK\r\nContent-Le", false, false).err(),
            Some("partial")
        );
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(answer_of(bad, false, false).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_content_length_beside_transfer_encoding_is_not_passed_on_nor_the_connection_kept() {
        let (a, client) = answer_of(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            false,
        )
        .unwrap();
        assert_eq!(a.framing, Body::Chunked);
        assert!(!a.member_keeps);
        assert_eq!(
            client,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn connection_cannot_take_away_an_answers_framing() {
        let (a, client) = answer_of(
            "HTTP/1.1 200 OK\r\nConnection: content-length, transfer-encoding\r\nContent-Length: 3\r\n\r\n",
            false,
            false,
        )
        .unwrap();
        assert_eq!(a.framing, Body::Length(3));
        assert_eq!(client, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n");
        let many = format!(
            "HTTP/1.1 200 OK\r\nConnection: {}\r\nContent-Length: 0\r\n\r\n",
            (0..=Named::MAX)
                .map(|i| format!("x{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        assert!(answer_of(&many, false, false).is_err());
    }

    #[test]
    fn a_content_length_is_digits_only() {
        for bad in ["+3", "3 3", "", "0x3", "-0", "99999999999999999999999"] {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
            assert!(answer_of(&head, false, false).is_err(), "{bad:?}");
        }
        let (a, _) = answer_of(
            "HTTP/1.1 200 OK\r\nContent-Length:  007 \r\n\r\n",
            false,
            false,
        )
        .unwrap();
        assert_eq!(a.framing, Body::Length(7));
    }
}
