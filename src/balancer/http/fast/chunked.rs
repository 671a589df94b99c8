//! Where a chunked message body ends (RFC 9112 §7.1), found as its bytes pass through: the
//! fast path forwards chunked bodies as they are, without decoding them, and only needs to
//! know which bytes belong to the message and whether the connection may carry another.

/// Longest chunk-size line accepted (size, extensions): as much as hyper allows.
const MAX_LINE: usize = 4096;
/// Most trailer bytes accepted.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// In the chunk size, `digits` hex digits read so far.
    Size {
        digits: u8,
    },
    /// After the size: blanks before `;` or the CR.
    SizeBlank,
    /// In the extensions, up to the CR.
    Extension,
    /// The LF of the size line.
    SizeLf,
    /// Chunk data still to come.
    Data,
    /// The CR after a chunk's data.
    DataCr,
    /// The LF after a chunk's data.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    LineStart,
    /// In a trailer field line.
    Trailer,
    /// The LF of a trailer field line.
    TrailerLf,
    /// The LF of the final empty line.
    EndLf,
    Done,
}

/// A malformed chunked body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed chunked body: {0}")]
pub struct ChunkError(&'static str);

/// Follows a chunked body, byte by byte across reads.
#[derive(Debug)]
pub struct ChunkedEnd {
    state: State,
    /// Data bytes left in the current chunk, or the size being read.
    size: u64,
    /// Bytes of the current size line, or of all trailers.
    line: usize,
    /// Data bytes of the body so far (its chunks less their framing).
    data: u64,
}

impl Default for ChunkedEnd {
    fn default() -> Self {
        ChunkedEnd {
            state: State::Size { digits: 0 },
            size: 0,
            line: 0,
            data: 0,
        }
    }
}

impl ChunkedEnd {
    /// Whether the whole body went by.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// The data bytes of the body that went by so far, without the chunk framing.
    pub fn data(&self) -> u64 {
        self.data
    }

    /// Follows the next bytes of the body; how many of them belong to it (all of them
    /// unless the body ends within them).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, ChunkError> {
        let mut at = 0;
        while at < bytes.len() {
            let b = bytes[at];
            match self.state {
                State::Data => {
                    let take = usize::try_from(self.size)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len() - at);
                    self.size -= take as u64;
                    self.data += take as u64;
                    at += take;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::Size { digits } => {
                    self.size_line()?;
                    if let Some(d) = (b as char).to_digit(16) {
                        // Leading zeros do not count towards the limit.
                        let significant = u8::from(self.size > 0 || d > 0);
                        if digits + significant > 15 {
                            return Err(ChunkError("chunk size too large"));
                        }
                        self.size = self.size * 16 + u64::from(d);
                        self.state = State::Size {
                            digits: digits + significant,
                        };
                    } else if self.line == 1 {
                        return Err(ChunkError("chunk size expected"));
                    } else {
                        self.after_size(b)?;
                    }
                }
                State::SizeBlank => {
                    self.size_line()?;
                    self.after_size(b)?;
                }
                State::Extension => {
                    self.size_line()?;
                    match b {
                        b'\r' => self.state = State::SizeLf,
                        b'\t' | b' '..=b'~' | 0x80.. => {}
                        _ => return Err(ChunkError("control byte in chunk extension")),
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError("CR without LF after chunk size"));
                    }
                    self.line = 0;
                    self.state = if self.size == 0 {
                        State::LineStart
                    } else {
                        State::Data
                    };
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError("chunk data longer than its size"));
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError("CR without LF after chunk data"));
                    }
                    self.state = State::Size { digits: 0 };
                }
                State::LineStart | State::Trailer | State::TrailerLf => {
                    self.line += 1;
                    if self.line > MAX_TRAILERS {
                        return Err(ChunkError("trailers too large"));
                    }
                    // Lines end with CRLF only: a bare LF might end them for someone else.
                    self.state = match (self.state, b) {
                        (State::TrailerLf, b'\n') => State::LineStart,
                        (State::TrailerLf, _) => {
                            return Err(ChunkError("CR without LF in trailers"));
                        }
                        (_, b'\n') => return Err(ChunkError("bare LF in trailers")),
                        (State::LineStart, b'\r') => State::EndLf,
                        (State::Trailer, b'\r') => State::TrailerLf,
                        _ => State::Trailer,
                    };
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError("CR without LF at the end"));
                    }
                    self.state = State::Done;
                    return Ok(at + 1);
                }
                State::Done => return Ok(at),
            }
            at += 1;
        }
        Ok(at)
    }

    /// A byte after the size's digits: blanks, then `;` and extensions, or the CR.
    fn after_size(&mut self, b: u8) -> Result<(), ChunkError> {
        self.state = match b {
            b' ' | b'\t' => State::SizeBlank,
            b';' => State::Extension,
            b'\r' => State::SizeLf,
            _ => return Err(ChunkError("bad chunk size")),
        };
        Ok(())
    }

    /// Counts one more byte of a size line.
    fn size_line(&mut self) -> Result<(), ChunkError> {
        self.line += 1;
        if self.line > MAX_LINE {
            return Err(ChunkError("chunk size line too long"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The message length `feed` finds in `body` followed by `after`, fed in pieces cut at
    /// `cuts`; None when malformed or unfinished.
    fn end_of(body: &[u8], cuts: &[usize]) -> Option<usize> {
        let mut scan = ChunkedEnd::default();
        let mut from = 0;
        let mut total = 0;
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        points.push(body.len());
        points.sort_unstable();
        for to in points {
            if to < from {
                continue;
            }
            let took = scan.feed(&body[from..to]).ok()?;
            total += took;
            if scan.done() {
                return Some(total);
            }
            from = to;
        }
        None
    }

    #[test]
    fn bodies_end_where_their_last_chunk_and_trailers_end() {
        let cases: [(&[u8], Option<usize>); 14] = [
            (b"0\r\n\r\n", Some(5)),
            (b"3\r\nabc\r\n0\r\n\r\nNEXT", Some(13)),
            (b"A;name=value\r\n0123456789\r\n0\r\n\r\n", Some(31)),
            (
                b"1\r\nx\r\n0\r\nExpires: never\r\nX: y\r\n\r\nGET",
                Some(33),
            ),
            (b"3\r\nabcd\r\n0\r\n\r\n", None),
            (b"g\r\n", None),
            (b"\r\n", None),
            (b"3\r\nabc\r\n0\r\n", None),
            (b"0\r\n\nHTTP/1.1 200 OK\r\n\r\n", None),
            (b"0\r\nX: y\n\r\n", None),
            (b"3 zz\r\nabc\r\n0\r\n\r\n", None),
            (b"3;a=\x01\r\nabc\r\n0\r\n\r\n", None),
            (b"3 \t;a=b\r\nabc\r\n0\r\n\r\n", Some(19)),
            (b"0000000000000001\r\nx\r\n0\r\n\r\n", Some(26)),
        ];
        for (body, end) in cases {
            assert_eq!(end_of(body, &[]), end, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn the_data_bytes_are_counted_without_the_framing() {
        let mut scan = ChunkedEnd::default();
        let body = b"3\r\nabc\r\nA;x=y\r\n0123456789\r\n0\r\nT: 1\r\n\r\n";
        for part in body.chunks(4) {
            scan.feed(part).unwrap();
        }
        assert!(scan.done());
        assert_eq!(scan.data(), 13);
    }

    #[test]
    fn sizes_beyond_sixty_bits_and_endless_lines_are_refused() {
        let mut scan = ChunkedEnd::default();
        assert!(scan.feed(b"1000000000000000\r\n").is_err());
        let mut scan = ChunkedEnd::default();
        let mut line = b"1;".to_vec();
        line.resize(MAX_LINE + 10, b'a');
        assert!(scan.feed(&line).is_err());
    }

    proptest! {
        #[test]
        fn where_the_reads_are_cut_does_not_matter(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..6),
            trailer in proptest::option::of("[a-z]{1,8}: [a-z]{0,8}"),
            after in proptest::collection::vec(any::<u8>(), 0..20),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut body = Vec::new();
            for chunk in &chunks {
                body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                body.extend_from_slice(chunk);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n");
            if let Some(t) = &trailer {
                body.extend_from_slice(t.as_bytes());
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"\r\n");
            let len = body.len();
            body.extend_from_slice(&after);
            prop_assert_eq!(end_of(&body, &cuts), Some(len));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut scan = ChunkedEnd::default();
            let _ = scan.feed(&bytes);
        }
    }
}
