//! The memory the replication port holds for frames still arriving, bounded.
//!
//! A frame announces its length in its first four bytes, and anyone who may connect can
//! announce 16 MiB and send it a byte at a time. So the accepting side reads a frame's
//! bytes only against a reservation in a [`FrameBudget`] shared by all its connections:
//!
//! - A frame of up to [`FREE_BYTES`] needs none (every connection's read buffer is that
//!   large anyway), so idle links and the small frames of everyday traffic never touch it.
//! - A larger frame reserves its whole declared length once its length is known, before
//!   any more of it is read; its memory still grows only as its bytes arrive. Reserving all
//!   of it at once (as Kafka's request memory pool does) means that a connection never holds
//!   part of the budget while it waits for more: a full budget makes readers wait, never
//!   deadlock. Waiting is backpressure: the frame's bytes stay in the peer's socket, TCP
//!   slows the peer down, and nothing is lost. A reader that waits longer than
//!   [`FrameLimits::budget_wait`] gives up and its connection closes.
//! - A frame must arrive at [`FrameLimits::min_rate`] or faster once it had
//!   [`FrameLimits::grace`], and never go [`FrameLimits::silence`] without a byte (both
//!   counted only while the reader waits for the peer, not while the node is busy with the
//!   frame before it or waits for the budget): one that trickles in or stops is a stall, and
//!   its connection closes. So a slow sender holds a reservation for seconds, not for the
//!   minutes of the idle timeout.
//!
//! The reservation of a frame ends when the stream is read again after it was handed out:
//! the reader of the stream handles one frame before it asks for the next.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf, Take};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::PollSemaphore;

use crate::wire::MAX_FRAME;
use crate::wire::seal;

/// Bytes of a frame read without a reservation: the read buffer every connection has
/// anyway (tokio's framed streams start with 8 KiB), so 1024 idle connections hold no more
/// than that, and pings, acks and small batches cost no bookkeeping.
pub const FREE_BYTES: usize = 8 * 1024;

/// The largest frame on the wire: its length prefix, the largest payload and a seal.
const LARGEST_FRAME: usize = 4 + MAX_FRAME + seal::FRAME_OVERHEAD;

/// How the accepting side of the replication port reads frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Bytes reserved for frames still arriving, all connections together. Four frames of
    /// the largest size (64 MiB and a few bytes), or sixteen batches of a state transfer
    /// or an anti-entropy push (about 4 MiB each) at once: more than a cluster's links send
    /// at a time, and what every slow or hostile peer together can make the port hold.
    pub in_flight: usize,
    /// Most bytes of one frame (length prefix included): larger ones close the connection.
    pub per_connection: usize,
    /// The slowest a frame may arrive once it had `grace`, in bytes per second. Members on
    /// one network send a frame in one write at the network's speed; 1 MiB/s lets a
    /// congested link finish a 4 MiB batch and keeps a largest frame to about 20 s.
    pub min_rate: u64,
    /// How long any frame may take regardless of its size: a member's frame of a few
    /// kilobytes arrives in a millisecond, even on a loaded machine in well under this.
    pub grace: Duration,
    /// Longest a frame may go without a byte: a sender that stops after most of a large
    /// frame has earned minutes at `min_rate`, not the right to hold its bytes that long.
    pub silence: Duration,
    /// Longest a frame waits for room in the budget. A frame holding room stops for at
    /// most `silence`; one still sending at full speed is done long before this; so a wait
    /// this long means frames that trickle at the floor hold the budget, and the waiting
    /// peer had better try again later (a member's link reconnects and sends again).
    pub budget_wait: Duration,
}

impl Default for FrameLimits {
    fn default() -> FrameLimits {
        FrameLimits {
            in_flight: 4 * LARGEST_FRAME,
            per_connection: LARGEST_FRAME,
            min_rate: 1024 * 1024,
            grace: Duration::from_secs(5),
            silence: Duration::from_secs(5),
            budget_wait: Duration::from_secs(10),
        }
    }
}

/// The bytes all connections of one port may reserve for frames still arriving.
#[derive(Clone, Debug)]
pub struct FrameBudget {
    bytes: Arc<Semaphore>,
    limits: FrameLimits,
}

impl FrameBudget {
    pub fn new(limits: FrameLimits) -> FrameBudget {
        FrameBudget {
            bytes: Arc::new(Semaphore::new(limits.in_flight.min(Semaphore::MAX_PERMITS))),
            limits,
        }
    }

    /// Bytes reserved now, by all connections (with what the frame first in line for room
    /// was given so far).
    pub fn in_use(&self) -> usize {
        self.limits
            .in_flight
            .saturating_sub(self.bytes.available_permits())
    }

    pub fn limits(&self) -> &FrameLimits {
        &self.limits
    }

    /// Most bytes one frame may take: the per-connection limit, and never more than the
    /// whole budget (such a frame could never be reserved).
    fn largest_frame(&self) -> usize {
        self.limits.per_connection.min(self.limits.in_flight)
    }
}

/// Why a frame still arriving closed its connection.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum IntakeError {
    /// Its bytes came slower than the floor.
    #[error("frame stalled: {have} of {len} bytes in {waited:?}")]
    Stalled {
        have: usize,
        len: usize,
        waited: Duration,
    },
    /// The budget stayed full for longer than the limit.
    #[error("no room for a frame of {len} bytes in {waited:?} (frames in flight at the limit)")]
    NoBudget { len: usize, waited: Duration },
    /// Larger than a connection may have in flight.
    #[error("frame size too big: {len} bytes, at most {max}")]
    TooLong { len: usize, max: usize },
}

impl IntakeError {
    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            IntakeError::Stalled { .. } => "stalled",
            IntakeError::NoBudget { .. } => "no_budget",
            IntakeError::TooLong { .. } => "too_long",
        }
    }
}

/// The error of an intake behind an error of a stream, if it is one.
pub fn intake_error(e: &io::Error) -> Option<IntakeError> {
    e.get_ref()?.downcast_ref::<IntakeError>().copied()
}

fn io_error(e: IntakeError) -> io::Error {
    let kind = match e {
        IntakeError::TooLong { .. } => io::ErrorKind::InvalidData,
        _ => io::ErrorKind::TimedOut,
    };
    io::Error::new(kind, e)
}

/// What the meter lets the reader do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// Read at most this many bytes.
    Read(usize),
    /// Reserve this many bytes (the whole current frame) before reading on.
    Reserve(usize),
}

/// Where the bytes read so far stand against the frames they belong to: the length
/// prefixes parsed as the bytes pass, no I/O and no clock of its own.
#[derive(Debug)]
struct FrameMeter {
    largest: usize,
    /// The length prefix of the current frame, as far as it came.
    head: [u8; 4],
    /// Bytes of the current frame read so far, its length prefix included.
    have: usize,
    /// Whether the current frame's whole length is reserved.
    reserved: bool,
    /// Time spent waiting for the peer's bytes of the current frame.
    waited: Duration,
    /// Of that, since its last byte.
    silent: Duration,
}

impl FrameMeter {
    fn new(largest: usize) -> FrameMeter {
        FrameMeter {
            largest,
            head: [0; 4],
            have: 0,
            reserved: false,
            waited: Duration::ZERO,
            silent: Duration::ZERO,
        }
    }

    /// The current frame's length on the wire, once its prefix is complete.
    fn wire_len(&self) -> Option<usize> {
        (self.have >= 4).then(|| 4 + u32::from_be_bytes(self.head) as usize)
    }

    fn in_frame(&self) -> bool {
        self.have > 0
    }

    fn next(&self) -> Next {
        match self.wire_len() {
            Some(len) if self.reserved => Next::Read(len - self.have + FREE_BYTES),
            Some(len) if len > FREE_BYTES => Next::Reserve(len),
            // Unreserved bytes (of this frame and of any after it) stay within the free ones.
            _ => Next::Read(FREE_BYTES - self.have),
        }
    }

    fn reserve(&mut self) {
        self.reserved = true;
    }

    /// Takes `bytes`, just read: whether a reserved frame was completed by them (its
    /// reservation may end once the frame was handled).
    fn read(&mut self, mut bytes: &[u8]) -> Result<bool, IntakeError> {
        let mut completed_reserved = false;
        self.silent = Duration::ZERO;
        while !bytes.is_empty() {
            if self.have < 4 {
                let take = (4 - self.have).min(bytes.len());
                self.head[self.have..self.have + take].copy_from_slice(&bytes[..take]);
                self.have += take;
                bytes = &bytes[take..];
                match self.wire_len() {
                    Some(len) if len > self.largest => {
                        return Err(IntakeError::TooLong {
                            len,
                            max: self.largest,
                        });
                    }
                    Some(_) => {}
                    None => continue,
                }
            }
            let Some(len) = self.wire_len() else { continue };
            let take = (len - self.have).min(bytes.len());
            self.have += take;
            bytes = &bytes[take..];
            if self.have == len {
                completed_reserved |= self.reserved;
                *self = FrameMeter::new(self.largest);
            }
        }
        Ok(completed_reserved)
    }

    /// Counts time spent waiting for the peer's bytes of the current frame.
    fn waited(&mut self, d: Duration) {
        self.waited += d;
        self.silent += d;
    }

    /// How much longer the peer may take before the current frame is a stall: `grace`,
    /// and one second for each `min_rate` bytes that came, in all; `silence` since the last
    /// byte. None between frames.
    fn patience(&self, limits: &FrameLimits) -> Option<Duration> {
        if !self.in_frame() {
            return None;
        }
        let earned = Duration::from_nanos(
            (self.have as u128 * 1_000_000_000 / u128::from(limits.min_rate.max(1)))
                .min(u128::from(u64::MAX)) as u64,
        );
        let floor = (limits.grace + earned).saturating_sub(self.waited);
        Some(floor.min(limits.silence.saturating_sub(self.silent)))
    }

    fn stalled(&self) -> IntakeError {
        IntakeError::Stalled {
            have: self.have,
            len: self.wire_len().unwrap_or(4),
            waited: self.waited,
        }
    }
}

/// A connection's side of the budget.
struct Intake {
    budget: FrameBudget,
    permits: PollSemaphore,
    meter: FrameMeter,
    /// The reservation of the current frame.
    current: Option<OwnedSemaphorePermit>,
    /// The reservation of a frame read whole, until the stream is read again.
    handed_out: Option<OwnedSemaphorePermit>,
    /// Since when the reader waits for the peer's next bytes of the current frame.
    peer_since: Option<Instant>,
    /// Since when the current frame waits for its reservation.
    budget_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake")
            .field("meter", &self.meter)
            .field("reserved", &self.current.as_ref().map(|p| p.num_permits()))
            .finish()
    }
}

impl Intake {
    fn new(budget: FrameBudget) -> Intake {
        Intake {
            permits: PollSemaphore::new(budget.bytes.clone()),
            meter: FrameMeter::new(budget.largest_frame()),
            budget,
            current: None,
            handed_out: None,
            peer_since: None,
            budget_since: None,
            timer: None,
        }
    }

    /// Pending until `deadline`, or the error `e` once it passed.
    fn wait_until(
        &mut self,
        cx: &mut Context<'_>,
        deadline: Instant,
        e: IntakeError,
    ) -> Poll<io::Result<()>> {
        let timer = match &mut self.timer {
            Some(timer) => {
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io_error(e))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The bytes of a connection; on the accepting side of the replication port, read against
/// the port's [`FrameBudget`].
#[derive(Debug)]
pub struct Metered<S> {
    io: Take<S>,
    intake: Option<Intake>,
}

impl<S: AsyncRead + Unpin> Metered<S> {
    /// Reads as they come, unbounded: for the connections this node opened itself.
    pub fn plain(io: S) -> Metered<S> {
        Metered {
            io: io.take(u64::MAX),
            intake: None,
        }
    }

    /// Reads frames against `budget`; the stream must be at the start of a frame.
    pub fn with_budget(io: S, budget: FrameBudget) -> Metered<S> {
        Metered {
            io: io.take(u64::MAX),
            intake: Some(Intake::new(budget)),
        }
    }

    pub fn get_ref(&self) -> &S {
        self.io.get_ref()
    }

    pub fn get_mut(&mut self) -> &mut S {
        self.io.get_mut()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(intake) = &mut this.intake else {
            return Pin::new(this.io.get_mut()).poll_read(cx, buf);
        };
        // Asked for more: whatever was handed out before has been handled.
        intake.handed_out = None;
        let now = Instant::now();
        if let Some(since) = intake.peer_since.take() {
            intake.meter.waited(now.saturating_duration_since(since));
        }
        loop {
            match intake.meter.next() {
                Next::Reserve(len) => {
                    let since = *intake.budget_since.get_or_insert(now);
                    // `len` is at most the largest frame, far below u32::MAX.
                    let permits = u32::try_from(len).unwrap_or(u32::MAX);
                    match intake.permits.poll_acquire_many(cx, permits) {
                        Poll::Ready(Some(permit)) => {
                            intake.current = Some(permit);
                            intake.meter.reserve();
                            intake.budget_since = None;
                        }
                        // The budget's semaphore is never closed; if it were, nothing
                        // could be reserved again.
                        Poll::Ready(None) => {
                            return Poll::Ready(Err(io_error(IntakeError::NoBudget {
                                len,
                                waited: now.saturating_duration_since(since),
                            })));
                        }
                        Poll::Pending => {
                            let waited = now.saturating_duration_since(since);
                            let deadline = since + intake.budget.limits.budget_wait;
                            let e = IntakeError::NoBudget { len, waited };
                            if now >= deadline {
                                return Poll::Ready(Err(io_error(e)));
                            }
                            return intake.wait_until(cx, deadline, e);
                        }
                    }
                }
                Next::Read(n) => {
                    this.io.set_limit(n as u64);
                    let before = buf.filled().len();
                    match Pin::new(&mut this.io).poll_read(cx, buf) {
                        Poll::Ready(Ok(())) => {
                            let read = &buf.filled()[before..];
                            if intake.meter.read(read).map_err(io_error)? {
                                intake.handed_out = intake.current.take();
                            }
                            return Poll::Ready(Ok(()));
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {
                            let Some(patience) = intake.meter.patience(&intake.budget.limits)
                            else {
                                return Poll::Pending;
                            };
                            intake.peer_since = Some(now);
                            let e = intake.meter.stalled();
                            if patience.is_zero() {
                                return Poll::Ready(Err(io_error(e)));
                            }
                            return intake.wait_until(cx, now + patience, e);
                        }
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().io.get_mut()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().io.get_mut()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.get_ref().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().io.get_mut()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().io.get_mut()).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncWriteExt, DuplexStream, duplex};
    use tokio_util::codec::{Framed, LengthDelimitedCodec};

    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;

    /// Limits small enough to see in a test: 1 MiB in flight, 1 s of grace, 100 KiB/s.
    fn limits() -> FrameLimits {
        FrameLimits {
            in_flight: MIB,
            per_connection: MIB,
            min_rate: 100 * KIB as u64,
            grace: Duration::from_secs(1),
            silence: Duration::from_secs(2),
            budget_wait: Duration::from_secs(10),
        }
    }

    type Reader = Framed<Metered<DuplexStream>, LengthDelimitedCodec>;

    /// The accepting end of a connection read against `budget`, and the peer's end.
    fn connection(budget: &FrameBudget) -> (Reader, DuplexStream) {
        let (ours, theirs) = duplex(4 * MIB);
        let codec = LengthDelimitedCodec::builder()
            .max_frame_length(4 * MIB)
            .new_codec();
        (
            Framed::new(Metered::with_budget(ours, budget.clone()), codec),
            theirs,
        )
    }

    fn prefix(len: usize) -> [u8; 4] {
        (len as u32).to_be_bytes()
    }

    fn frame(len: usize) -> Vec<u8> {
        let mut bytes = prefix(len).to_vec();
        bytes.resize(4 + len, 7);
        bytes
    }

    /// Whether `reader` has a frame (or an error) within a moment; reading it counts as
    /// handing the previous one back.
    async fn poll_a_moment(reader: &mut Reader) -> Option<io::Result<bytes::BytesMut>> {
        tokio::time::timeout(Duration::from_millis(10), reader.next())
            .await
            .ok()
            .flatten()
    }

    #[test]
    fn small_frames_are_read_without_a_reservation_however_many_come_at_once() {
        let mut meter = FrameMeter::new(MIB);
        assert_eq!(meter.next(), Next::Read(FREE_BYTES));
        let mut burst = Vec::new();
        for _ in 0..10 {
            burst.extend(frame(100));
        }
        assert_eq!(meter.read(&burst), Ok(false));
        assert!(!meter.in_frame());
        assert_eq!(meter.next(), Next::Read(FREE_BYTES));
    }

    #[test]
    fn a_large_frame_is_reserved_whole_once_its_length_is_known_and_not_read_further_before() {
        let mut meter = FrameMeter::new(MIB);
        let len = 100 * KIB;
        assert_eq!(meter.read(&prefix(len)[..2]), Ok(false));
        assert_eq!(
            meter.next(),
            Next::Read(FREE_BYTES - 2),
            "length not known yet"
        );
        assert_eq!(meter.read(&prefix(len)[2..]), Ok(false));
        assert_eq!(meter.next(), Next::Reserve(4 + len));
        meter.reserve();
        // The rest of the frame, and the free bytes of whatever follows it.
        assert_eq!(meter.next(), Next::Read(len + FREE_BYTES));
        assert_eq!(meter.read(&vec![0; len]), Ok(true), "a reserved frame done");
        assert_eq!(meter.next(), Next::Read(FREE_BYTES));
    }

    #[test]
    fn bytes_after_a_reserved_frame_start_the_next_one_unreserved() {
        let mut meter = FrameMeter::new(MIB);
        let len = 20 * KIB;
        meter.read(&prefix(len)).expect("prefix");
        meter.reserve();
        let mut bytes = vec![0; len];
        bytes.extend(prefix(50 * KIB));
        bytes.extend([1; 10]);
        assert_eq!(meter.read(&bytes), Ok(true));
        assert_eq!(meter.have, 14);
        assert_eq!(meter.next(), Next::Reserve(4 + 50 * KIB));
    }

    #[test]
    fn a_frame_longer_than_a_connection_may_hold_is_refused_at_its_length() {
        let mut meter = FrameMeter::new(MIB);
        assert_eq!(
            meter.read(&prefix(MIB)),
            Err(IntakeError::TooLong {
                len: 4 + MIB,
                max: MIB
            })
        );
    }

    #[test]
    fn patience_is_the_grace_and_a_second_per_floor_of_bytes_less_the_time_waited() {
        let limits = limits();
        let mut meter = FrameMeter::new(MIB);
        assert_eq!(
            meter.patience(&limits),
            None,
            "between frames: the idle timeout's"
        );
        meter.read(&prefix(500 * KIB)).expect("prefix");
        meter.reserve();
        meter.read(&vec![0; 200 * KIB - 4]).expect("bytes");
        // 1 s of grace and 2 s for 200 KiB at 100 KiB/s; but no more than 2 s of silence.
        assert_eq!(meter.patience(&limits), Some(Duration::from_secs(2)));
        meter.waited(Duration::from_millis(1500));
        assert_eq!(meter.patience(&limits), Some(Duration::from_millis(500)));
        // Ten bytes more: the silence starts over, the floor binds (1.5 s and 0.1 ms).
        meter.read(&[0; 10]).expect("a byte more");
        let left = meter.patience(&limits).expect("in a frame");
        assert!(left > Duration::from_millis(1500) && left < Duration::from_millis(1501));
        meter.waited(left);
        assert_eq!(meter.patience(&limits), Some(Duration::ZERO));
    }

    #[test]
    fn a_frame_that_stops_is_a_stall_after_the_silence_whatever_it_earned() {
        let limits = limits();
        let mut meter = FrameMeter::new(MIB);
        meter.read(&prefix(1000 * KIB)).expect("prefix");
        meter.reserve();
        meter
            .read(&vec![0; 1000 * KIB - 1])
            .expect("all but a byte");
        meter.waited(Duration::from_secs(2));
        assert_eq!(meter.patience(&limits), Some(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_that_trickles_in_is_a_stall_after_the_grace_and_gives_its_reservation_back() {
        let budget = FrameBudget::new(limits());
        let (mut reader, mut peer) = connection(&budget);
        let started = Instant::now();
        peer.write_all(&prefix(512 * KIB)).await.expect("write");
        let trickle = tokio::spawn(async move {
            // A byte every 100 ms: 10 bytes a second against a floor of 100 KiB/s.
            while peer.write_all(&[0]).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let e = reader.next().await.expect("an end").expect_err("a stall");
        assert!(
            matches!(intake_error(&e), Some(IntakeError::Stalled { .. })),
            "{e}"
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(2),
            "{took:?}"
        );
        assert_eq!(
            budget.in_use(),
            4 + 512 * KIB,
            "held until the connection closes"
        );
        drop(reader);
        assert_eq!(budget.in_use(), 0);
        trickle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_frame_that_keeps_the_floor_arrives_however_long_it_takes() {
        // The silence never comes into it: no pause is longer than 50 ms.
        let budget = FrameBudget::new(limits());
        let (mut reader, mut peer) = connection(&budget);
        let len = 900 * KIB;
        let bytes = frame(len);
        let started = Instant::now();
        let sender = tokio::spawn(async move {
            // 10 KiB every 50 ms: 200 KiB/s, twice the floor, 4.5 s for the frame.
            for piece in bytes.chunks(10 * KIB) {
                peer.write_all(piece).await.expect("write");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peer
        });
        let got = reader.next().await.expect("a frame").expect("whole");
        assert_eq!(got.len(), len);
        assert!(started.elapsed() > Duration::from_secs(4));
        let _peer = sender.await.expect("sender");
        assert!(poll_a_moment(&mut reader).await.is_none());
        assert_eq!(
            budget.in_use(),
            0,
            "given back once the stream is read again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_budget_makes_the_next_large_frame_wait_and_it_goes_on_once_there_is_room() {
        let budget = FrameBudget::new(limits());
        let (mut first, mut first_peer) = connection(&budget);
        let (mut second, mut second_peer) = connection(&budget);
        let len = 600 * KIB;
        // The first frame holds 600 KiB of the 1 MiB while its bytes come.
        first_peer
            .write_all(&frame(len)[..300 * KIB])
            .await
            .expect("write");
        assert!(poll_a_moment(&mut first).await.is_none());
        assert_eq!(budget.in_use(), 4 + len);
        // The second is all there, but no room for it: it waits, it does not fail.
        second_peer.write_all(&frame(len)).await.expect("write");
        assert!(poll_a_moment(&mut second).await.is_none());
        assert!(
            second.read_buffer().len() <= FREE_BYTES,
            "no more than the free bytes read without room"
        );
        // The first completes and is handled; reading on gives its reservation back.
        first_peer
            .write_all(&frame(len)[300 * KIB..])
            .await
            .expect("write");
        assert_eq!(
            poll_a_moment(&mut first)
                .await
                .expect("frame")
                .expect("ok")
                .len(),
            len
        );
        assert!(poll_a_moment(&mut first).await.is_none());
        let got = tokio::time::timeout(Duration::from_secs(1), second.next())
            .await
            .expect("the waiting frame goes on")
            .expect("a frame")
            .expect("ok");
        assert_eq!(got.len(), len);
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_that_finds_no_room_within_the_wait_closes_its_connection() {
        let budget = FrameBudget::new(limits());
        let (mut holder, mut holder_peer) = connection(&budget);
        let (mut waiter, mut waiter_peer) = connection(&budget);
        holder_peer
            .write_all(&frame(900 * KIB))
            .await
            .expect("write");
        // Read whole but never handled: the reservation stays.
        assert!(poll_a_moment(&mut holder).await.expect("frame").is_ok());
        waiter_peer
            .write_all(&frame(200 * KIB))
            .await
            .expect("write");
        let started = Instant::now();
        let e = waiter.next().await.expect("an end").expect_err("no room");
        assert!(
            matches!(intake_error(&e), Some(IntakeError::NoBudget { .. })),
            "{e}"
        );
        assert!(started.elapsed() >= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_and_small_frames_hold_none_of_the_budget() {
        let budget = FrameBudget::new(limits());
        let mut open = Vec::new();
        for _ in 0..100 {
            let (mut reader, mut peer) = connection(&budget);
            peer.write_all(&frame(1000)).await.expect("write");
            let mut burst = Vec::new();
            for _ in 0..5 {
                burst.extend(frame(100));
            }
            peer.write_all(&burst).await.expect("write");
            for _ in 0..6 {
                assert!(poll_a_moment(&mut reader).await.expect("frame").is_ok());
            }
            assert!(poll_a_moment(&mut reader).await.is_none());
            open.push((reader, peer));
        }
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_plain_stream_reads_and_writes_as_its_socket_does() {
        let (ours, theirs) = duplex(64 * KIB);
        let mut ours = Framed::new(Metered::plain(ours), LengthDelimitedCodec::new());
        let mut theirs = Framed::new(theirs, LengthDelimitedCodec::new());
        ours.send(Bytes::from_static(b"out")).await.expect("send");
        assert_eq!(
            &theirs.next().await.expect("a frame").expect("ok")[..],
            b"out"
        );
        theirs
            .send(Bytes::from(vec![1; 40 * KIB]))
            .await
            .expect("send");
        assert_eq!(
            ours.next().await.expect("a frame").expect("ok").len(),
            40 * KIB
        );
    }
}
