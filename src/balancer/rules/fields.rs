//! Which header fields cross the balancer and which it adds (RFC 9110 §7.6): the fields
//! of one connection stay on it, as do those its `Connection` field names; the client's
//! own `X-Forwarded-*` and `Via` are replaced by this hop's (appended to, for the lists).
//! A `Connection` field may not take away the message's framing or its Host.

use std::net::IpAddr;

use bytes::Bytes;
use hyper::header::HeaderValue;

/// The `Via` token this proxy adds.
pub const VIA: &str = "1.1 deltacast";

/// Fields that concern one connection only (RFC 9110 §7.6.1), besides those `Connection`
/// names.
pub const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// How a message's body crosses the balancer, which decides whether its framing field is
/// this hop's own or the message's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crossing {
    /// Decoded and framed anew (the hyper path): `Transfer-Encoding` is hop-by-hop.
    Reframed,
    /// Passed on byte for byte with its own framing (the fast path): `Transfer-Encoding`
    /// goes with the body it describes.
    Relayed,
}

/// Whether a field of this name stays on its connection.
pub fn hop_by_hop(name: &str, crossing: Crossing) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        && !(crossing == Crossing::Relayed && name.eq_ignore_ascii_case("transfer-encoding"))
}

/// One token of a `Connection` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token<'a> {
    Close,
    KeepAlive,
    Upgrade,
    /// A field of this connection, removed with the field itself (one that may be named:
    /// see [`nameable`]).
    Names(&'a str),
}

/// The tokens of a `Connection` field value, in order; empty ones and those naming what
/// may not be taken away are skipped.
pub fn connection_tokens(value: &str) -> impl Iterator<Item = Token<'_>> {
    value
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .filter_map(|t| {
            if t.eq_ignore_ascii_case("close") {
                Some(Token::Close)
            } else if t.eq_ignore_ascii_case("keep-alive") {
                Some(Token::KeepAlive)
            } else if t.eq_ignore_ascii_case("upgrade") {
                Some(Token::Upgrade)
            } else {
                nameable(t).then_some(Token::Names(t))
            }
        })
}

/// Whether `Connection` may name this field to have it removed: not the framing fields nor
/// Host (RFC 9110 §7.6.1 lets it name the connection's own fields only), and not one
/// removed anyway.
pub fn nameable(name: &str) -> bool {
    !["content-length", "transfer-encoding", "host"]
        .iter()
        .chain(HOP_BY_HOP.iter())
        .any(|n| name.eq_ignore_ascii_case(n))
}

/// The fields `Connection` named, without allocating: at most [`Named::MAX`].
#[derive(Clone, Debug, Default)]
pub struct Named<'a> {
    names: [&'a str; Named::MAX],
    len: usize,
}

/// More fields named by `Connection` than [`Named`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooManyNamed;

impl<'a> Named<'a> {
    pub const MAX: usize = 16;

    pub fn push(&mut self, name: &'a str) -> Result<(), TooManyNamed> {
        let slot = self.names.get_mut(self.len).ok_or(TooManyNamed)?;
        *slot = name;
        self.len += 1;
        Ok(())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names[..self.len]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// Where the value of a field this hop adds comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The client's address.
    Peer,
    /// The request's Host (the field is left out when it has none).
    Host,
    Text(&'static str),
}

/// A field this hop writes on every forwarded request, in place of the client's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Added {
    pub name: &'static str,
    pub source: Source,
    /// A list: this hop's item goes after the client's values, which are kept.
    pub list: bool,
}

/// The fields this hop adds, in the order it writes them.
pub const ADDED: [Added; 4] = [
    Added {
        name: "x-forwarded-for",
        source: Source::Peer,
        list: true,
    },
    Added {
        name: "x-forwarded-proto",
        source: Source::Text("http"),
        list: false,
    },
    Added {
        name: "x-forwarded-host",
        source: Source::Host,
        list: false,
    },
    Added {
        name: "via",
        source: Source::Text(VIA),
        list: true,
    },
];

/// Whether this hop writes the field itself (the client's copy is then not forwarded).
pub fn added(name: &str) -> bool {
    ADDED.iter().any(|a| name.eq_ignore_ascii_case(a.name))
}

/// Whether a request field goes to the member as it came: not hop-by-hop, not named by
/// `Connection`, not one this hop writes itself.
pub fn forwarded(name: &str, named: &Named<'_>) -> bool {
    !hop_by_hop(name, Crossing::Reframed) && !added(name) && !named.contains(name)
}

/// Whether an answer field goes to the client as it came.
pub fn answered(name: &str, named: &Named<'_>, crossing: Crossing) -> bool {
    !hop_by_hop(name, crossing) && !named.contains(name)
}

/// Writes a list field's value: the values sent, then `ours`, joined by ", ".
pub fn write_list<'v>(out: &mut Vec<u8>, sent: impl IntoIterator<Item = &'v [u8]>, ours: &[u8]) {
    for value in sent {
        out.extend_from_slice(value);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(ours);
}

/// The client at the other end of one connection, with its address as text (what its
/// requests get in `X-Forwarded-For`, and what `source_ip` stickiness hashes), made once
/// per connection, not per request.
#[derive(Clone, Debug)]
pub struct Peer {
    pub ip: IpAddr,
    text: HeaderValue,
}

impl Peer {
    pub fn new(ip: IpAddr) -> Peer {
        let text = match ip {
            // Without the formatting machinery: this runs for every new connection.
            IpAddr::V4(v4) => {
                let mut text = Vec::with_capacity(15);
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
                text
            }
            IpAddr::V6(_) => ip.to_string().into_bytes(),
        };
        let text = HeaderValue::from_maybe_shared(Bytes::from(text))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        Peer { ip, text }
    }

    /// The address as text.
    pub fn text(&self) -> &[u8] {
        self.text.as_bytes()
    }

    /// The address as a header value (shared, not copied).
    pub fn value(&self) -> &HeaderValue {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_encoding_is_hop_by_hop_unless_the_body_is_relayed_as_it_is() {
        for name in HOP_BY_HOP {
            assert!(hop_by_hop(name, Crossing::Reframed), "{name}");
            assert!(hop_by_hop(&name.to_ascii_uppercase(), Crossing::Reframed));
        }
        assert!(!hop_by_hop("transfer-encoding", Crossing::Relayed));
        assert!(!hop_by_hop("Transfer-Encoding", Crossing::Relayed));
        assert!(hop_by_hop("Keep-Alive", Crossing::Relayed));
        for name in ["content-length", "host", "cookie", "x-forwarded-for"] {
            assert!(!hop_by_hop(name, Crossing::Reframed), "{name}");
        }
    }

    #[test]
    fn connection_tokens_name_fields_but_never_the_framing_or_host() {
        let tokens: Vec<Token> = connection_tokens(
            " keep-alive, Close ,,X-Secret, upgrade, Host, content-length, Transfer-Encoding, TE",
        )
        .collect();
        assert_eq!(
            tokens,
            [
                Token::KeepAlive,
                Token::Close,
                Token::Names("X-Secret"),
                Token::Upgrade,
            ]
        );
        assert_eq!(connection_tokens("").count(), 0);
    }

    #[test]
    fn named_fields_are_held_up_to_the_limit_and_matched_in_any_case() {
        let mut named = Named::default();
        assert!(!named.contains("x"));
        let names: Vec<String> = (0..Named::MAX).map(|i| format!("x-{i}")).collect();
        for n in &names {
            named.push(n).unwrap();
        }
        assert_eq!(named.push("one-more"), Err(TooManyNamed));
        assert!(named.contains("X-0") && named.contains("x-15"));
        assert!(!named.contains("one-more"));
    }

    #[test]
    fn a_request_field_is_forwarded_unless_hop_by_hop_named_or_added_here() {
        let mut named = Named::default();
        named.push("X-Secret").unwrap();
        for kept in ["host", "cookie", "content-length", "accept"] {
            assert!(forwarded(kept, &named), "{kept}");
        }
        for dropped in [
            "connection",
            "te",
            "x-secret",
            "X-Forwarded-For",
            "x-forwarded-proto",
            "x-forwarded-host",
            "via",
            "transfer-encoding",
        ] {
            assert!(!forwarded(dropped, &named), "{dropped}");
        }
        assert!(answered("transfer-encoding", &named, Crossing::Relayed));
        assert!(!answered("transfer-encoding", &named, Crossing::Reframed));
        assert!(!answered("x-secret", &named, Crossing::Relayed));
        assert!(
            answered("via", &named, Crossing::Reframed),
            "a member's Via"
        );
    }

    #[test]
    fn a_list_keeps_the_values_sent_and_ends_with_this_hops_item() {
        let mut out = Vec::new();
        write_list(&mut out, [&b"192.0.2.1"[..], b"198.51.100.2"], b"10.0.0.7");
        assert_eq!(out, b"192.0.2.1, 198.51.100.2, 10.0.0.7");
        out.clear();
        write_list(&mut out, [], VIA.as_bytes());
        assert_eq!(out, b"1.1 deltacast");
        assert!(ADDED.iter().all(|a| added(a.name)));
    }

    #[test]
    fn a_peer_address_is_written_as_usual() {
        for ip in [
            "10.0.0.7",
            "0.0.0.0",
            "255.255.255.255",
            "192.168.100.9",
            "::1",
            "fe80::1",
        ] {
            let peer = Peer::new(ip.parse().unwrap());
            assert_eq!(peer.text(), ip.as_bytes());
        }
    }
}
