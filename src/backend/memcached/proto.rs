//! memcached's text protocol, the few commands the session store needs, pure: commands
//! to bytes, and the bytes a server answers to [`Parse`] (`Incomplete` until a whole
//! answer is there, `Invalid` for what the protocol never sends). No I/O here, so every
//! byte sequence can be tried in a unit or property test; nothing panics on any input.
//!
//! Commands: `gets` (one key: the item and its CAS unique), `get`, `add` (only when absent),
//! `cas` (only when unchanged since `gets`), `delete`.

use bytes::Bytes;

/// The longest status or `VALUE` line accepted (memcached's keys are at most 250 bytes).
pub const MAX_LINE: usize = 1024;
/// The largest value accepted (memcached's default item limit is 1 MiB; `-I` raises it).
pub const MAX_VALUE: usize = 128 * 1024 * 1024;
/// memcached reads an expiry above this many seconds (30 days) as a Unix time.
pub const RELATIVE_EXPIRY_MAX_S: u64 = 60 * 60 * 24 * 30;

/// What a buffer holds so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse<T> {
    /// Not a whole answer yet: read more.
    Incomplete,
    /// Not the protocol (or not the answer to what was asked): drop the connection.
    Invalid(String),
    /// A whole answer, and how many bytes of the buffer it took.
    Ready(T, usize),
}

/// One item of a retrieval answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The value's bytes.
    pub data: Bytes,
    /// The CAS unique (`gets`), 0 after a plain `get`.
    pub cas: u64,
}

/// The answer to a storage command (`add`, `cas`) or `delete`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `STORED`.
    Stored,
    /// `NOT_STORED` (`add` of a key that exists).
    NotStored,
    /// `EXISTS` (`cas`: the item changed since it was read).
    Exists,
    /// `NOT_FOUND` (`cas` or `delete` of a key that is absent).
    NotFound,
    /// `DELETED`.
    Deleted,
}

/// Whether `key` is one memcached accepts: 1..=250 bytes, no space or control character.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 250 && key.bytes().all(|b| b > b' ' && b != 0x7f)
}

/// memcached's `exptime` for an item that should live `secs` seconds from `now_s` (Unix
/// seconds): relative up to 30 days, an absolute Unix time beyond (memcached reads a
/// larger number as a date, so a relative 31 days would be a date in 1970: expired).
/// Never 0 (which means "never expires").
pub fn exptime(secs: u64, now_s: u64) -> u64 {
    let secs = secs.max(1);
    if secs <= RELATIVE_EXPIRY_MAX_S {
        secs
    } else {
        now_s.saturating_add(secs)
    }
}

/// `gets <key>\r\n` (with `cas` false: `get <key>\r\n`).
pub fn retrieval(key: &str, cas: bool) -> Vec<u8> {
    let verb = if cas { "gets" } else { "get" };
    format!("{verb} {key}\r\n").into_bytes()
}

/// `add <key> 0 <exptime> <bytes>\r\n<data>\r\n`.
pub fn add(key: &str, exptime: u64, data: &[u8]) -> Vec<u8> {
    storage(format!("add {key} 0 {exptime} {}\r\n", data.len()), data)
}

/// `cas <key> 0 <exptime> <bytes> <unique>\r\n<data>\r\n`.
pub fn cas(key: &str, exptime: u64, data: &[u8], unique: u64) -> Vec<u8> {
    storage(
        format!("cas {key} 0 {exptime} {} {unique}\r\n", data.len()),
        data,
    )
}

/// `delete <key>\r\n`.
pub fn delete(key: &str) -> Vec<u8> {
    format!("delete {key}\r\n").into_bytes()
}

fn storage(head: String, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len() + data.len() + 2);
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// The first line of `buf` (without its `\r\n`) and the bytes it takes with it.
fn line(buf: &[u8]) -> Parse<&[u8]> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(end) if end <= MAX_LINE => Parse::Ready(&buf[..end], end + 2),
        Some(_) => Parse::Invalid("an answer line longer than any the protocol sends".into()),
        None if buf.len() > MAX_LINE + 1 => {
            Parse::Invalid("an answer line longer than any the protocol sends".into())
        }
        None => Parse::Incomplete,
    }
}

/// An error line (`ERROR`, `CLIENT_ERROR ...`, `SERVER_ERROR ...`) as the reason to give.
fn error_line(line: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(line);
    let first = text.split(' ').next().unwrap_or("");
    matches!(first, "ERROR" | "CLIENT_ERROR" | "SERVER_ERROR").then(|| {
        let printable: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(200)
            .collect();
        format!("the server answered {printable}")
    })
}

/// The answer to `get`/`gets` of `key`: `END` alone (no item) or one `VALUE` block then
/// `END`. `VALUE` for another key, a length beyond [`MAX_VALUE`], a missing CAS unique
/// after `gets` (`cas` true) or anything else is `Invalid`.
pub fn parse_retrieval(buf: &[u8], key: &str, cas: bool) -> Parse<Option<Item>> {
    let (head, mut used) = match line(buf) {
        Parse::Ready(l, n) => (l, n),
        Parse::Incomplete => return Parse::Incomplete,
        Parse::Invalid(e) => return Parse::Invalid(e),
    };
    if head == b"END" {
        return Parse::Ready(None, used);
    }
    if let Some(e) = error_line(head) {
        return Parse::Invalid(e);
    }
    let Ok(head) = std::str::from_utf8(head) else {
        return Parse::Invalid("an answer line that is not text".into());
    };
    let mut words = head.split(' ');
    if words.next() != Some("VALUE") || words.next() != Some(key) {
        return Parse::Invalid("neither END nor a VALUE of the key asked for".into());
    }
    let _flags = match words.next().and_then(number) {
        Some(f) if f <= u64::from(u32::MAX) => f,
        _ => return Parse::Invalid("a VALUE line without its flags".into()),
    };
    let len = match words.next().and_then(number) {
        Some(n) if n <= MAX_VALUE as u64 => n as usize,
        Some(_) => return Parse::Invalid("a value larger than accepted".into()),
        None => return Parse::Invalid("a VALUE line without its length".into()),
    };
    let unique = match (words.next(), cas) {
        (Some(w), true) => match number(w) {
            Some(u) => u,
            None => {
                return Parse::Invalid(
                    "a VALUE line with a CAS unique that is not a number".into(),
                );
            }
        },
        (None, false) => 0,
        (None, true) => return Parse::Invalid("a VALUE line without its CAS unique".into()),
        (Some(_), false) => return Parse::Invalid("a VALUE line with more than asked for".into()),
    };
    if words.next().is_some() {
        return Parse::Invalid("a VALUE line with more than asked for".into());
    }
    let rest = &buf[used..];
    // The data, its \r\n, then END\r\n.
    if rest.len() < len + 2 {
        return Parse::Incomplete;
    }
    if &rest[len..len + 2] != b"\r\n" {
        return Parse::Invalid("a value not followed by CRLF".into());
    }
    let data = Bytes::copy_from_slice(&rest[..len]);
    used += len + 2;
    match line(&buf[used..]) {
        Parse::Ready(b"END", n) => Parse::Ready(Some(Item { data, cas: unique }), used + n),
        Parse::Ready(_, _) => Parse::Invalid("a value not followed by END".into()),
        Parse::Incomplete => Parse::Incomplete,
        Parse::Invalid(e) => Parse::Invalid(e),
    }
}

/// The answer to `add`, `cas` or `delete`: one status line.
pub fn parse_status(buf: &[u8]) -> Parse<Status> {
    let (l, used) = match line(buf) {
        Parse::Ready(l, n) => (l, n),
        Parse::Incomplete => return Parse::Incomplete,
        Parse::Invalid(e) => return Parse::Invalid(e),
    };
    let status = match l {
        b"STORED" => Status::Stored,
        b"NOT_STORED" => Status::NotStored,
        b"EXISTS" => Status::Exists,
        b"NOT_FOUND" => Status::NotFound,
        b"DELETED" => Status::Deleted,
        other => {
            return Parse::Invalid(
                error_line(other).unwrap_or_else(|| "an unknown status line".to_string()),
            );
        }
    };
    Parse::Ready(status, used)
}

/// A decimal of digits only (no sign, no space), within u64.
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "deltacast:c:ABC";

    #[test]
    fn an_absent_item_is_end_alone() {
        assert_eq!(
            parse_retrieval(b"END\r\n", KEY, true),
            Parse::Ready(None, 5)
        );
    }

    #[test]
    fn an_item_with_its_cas_unique_is_read_whole() {
        let answer = b"VALUE deltacast:c:ABC 0 5 42\r\nhel\r\n\r\nEND\r\n";
        let item = Item {
            data: Bytes::from_static(b"hel\r\n"),
            cas: 42,
        };
        assert_eq!(
            parse_retrieval(answer, KEY, true),
            Parse::Ready(Some(item), answer.len())
        );
        let plain = b"VALUE deltacast:c:ABC 7 2\r\nab\r\nEND\r\n";
        assert!(matches!(
            parse_retrieval(plain, KEY, false),
            Parse::Ready(Some(Item { cas: 0, .. }), n) if n == plain.len()
        ));
    }

    #[test]
    fn every_prefix_of_an_answer_is_incomplete() {
        let answer = b"VALUE deltacast:c:ABC 0 5 42\r\nhello\r\nEND\r\n";
        for cut in 0..answer.len() {
            assert_eq!(
                parse_retrieval(&answer[..cut], KEY, true),
                Parse::Incomplete,
                "cut at {cut}"
            );
        }
        for cut in 0..8 {
            assert_eq!(parse_status(&b"STORED\r\n"[..cut]), Parse::Incomplete);
        }
    }

    #[test]
    fn what_the_protocol_never_sends_is_invalid() {
        for bad in [
            &b"VALUE other:key 0 1 1\r\nx\r\nEND\r\n"[..],
            b"VALUE deltacast:c:ABC 0 1\r\nx\r\nEND\r\n",
            b"VALUE deltacast:c:ABC 0 -1 1\r\nx\r\nEND\r\n",
            b"VALUE deltacast:c:ABC 0 1 1\r\nxy\r\nEND\r\n",
            b"VALUE deltacast:c:ABC 0 1 1\r\nx\r\nVALUE\r\n",
            b"VALUE deltacast:c:ABC 0 99999999999 1\r\n",
            b"SERVER_ERROR out of memory\r\n",
            b"ERROR\r\n",
            b"+OK\r\n",
        ] {
            assert!(
                matches!(parse_retrieval(bad, KEY, true), Parse::Invalid(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(parse_status(b"HELLO\r\n"), Parse::Invalid(_)));
        assert!(matches!(
            parse_status(b"SERVER_ERROR busy\r\n"),
            Parse::Invalid(e) if e.contains("SERVER_ERROR busy")
        ));
        let endless = vec![b'a'; MAX_LINE + 2];
        assert!(matches!(parse_status(&endless), Parse::Invalid(_)));
    }

    #[test]
    fn statuses_are_read() {
        for (text, status) in [
            (&b"STORED\r\n"[..], Status::Stored),
            (b"NOT_STORED\r\n", Status::NotStored),
            (b"EXISTS\r\n", Status::Exists),
            (b"NOT_FOUND\r\n", Status::NotFound),
            (b"DELETED\r\n", Status::Deleted),
        ] {
            assert_eq!(parse_status(text), Parse::Ready(status, text.len()));
        }
    }

    #[test]
    fn commands_are_what_memcached_reads() {
        assert_eq!(retrieval("k", true), b"gets k\r\n");
        assert_eq!(retrieval("k", false), b"get k\r\n");
        assert_eq!(add("k", 60, b"ab"), b"add k 0 60 2\r\nab\r\n");
        assert_eq!(cas("k", 60, b"ab", 9), b"cas k 0 60 2 9\r\nab\r\n");
        assert_eq!(delete("k"), b"delete k\r\n");
    }

    #[test]
    fn expiry_beyond_thirty_days_is_a_date() {
        assert_eq!(exptime(1800, 1_700_000_000), 1800);
        assert_eq!(exptime(RELATIVE_EXPIRY_MAX_S, 5), RELATIVE_EXPIRY_MAX_S);
        assert_eq!(
            exptime(RELATIVE_EXPIRY_MAX_S + 1, 1_700_000_000),
            1_700_000_000 + RELATIVE_EXPIRY_MAX_S + 1
        );
        assert_eq!(exptime(0, 5), 1, "never 0: that would be forever");
    }

    #[test]
    fn keys_memcached_refuses_are_not_valid() {
        assert!(valid_key("deltacast:prod:4DD0340CE6294FF2BBE802CD4CD039EC"));
        assert!(!valid_key(""));
        assert!(!valid_key("a b"));
        assert!(!valid_key("a\nb"));
        assert!(!valid_key(&"k".repeat(251)));
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_retrieval(&bytes, KEY, true);
            let _ = parse_retrieval(&bytes, KEY, false);
            let _ = parse_status(&bytes);
        }

        #[test]
        fn any_value_reads_back_from_its_answer(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            unique in any::<u64>(),
            tail in proptest::collection::vec(any::<u8>(), 0..10),
        ) {
            let mut answer = format!("VALUE {KEY} 0 {} {unique}\r\n", data.len()).into_bytes();
            answer.extend_from_slice(&data);
            answer.extend_from_slice(b"\r\nEND\r\n");
            let whole = answer.len();
            answer.extend_from_slice(&tail);
            let item = Item { data: Bytes::from(data), cas: unique };
            prop_assert_eq!(parse_retrieval(&answer, KEY, true), Parse::Ready(Some(item), whole));
        }
    }
}
