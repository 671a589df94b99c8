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
//!   [`FrameLimits::grace`] (counted only while the reader waits for the peer, not while the
//!   node is busy with the frame before it or waits for the budget): one that trickles in is
//!   a stall, and its connection closes. So a slow sender holds a reservation for seconds,
//!   not for the minutes of the idle timeout.
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
    /// the largest size, or sixteen batches of a state transfer or an anti-entropy push
    /// (about 4 MiB each) at once: more than a cluster's links send at a time, and what
    /// every slow or hostile peer together can make the port hold.
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
    /// Longest a frame waits for room in the budget. Frames that hold the budget finish or
    /// stall within `grace` plus their size at `min_rate` (about 21 s for the largest), so
    /// a wait longer than that means the budget is being held on purpose.
    pub budget_wait: Duration,
}

impl Default for FrameLimits {
    fn default() -> FrameLimits {
        FrameLimits {
            in_flight: 64 * 1024 * 1024,
            per_connection: LARGEST_FRAME,
            min_rate: 1024 * 1024,
            grace: Duration::from_secs(5),
            budget_wait: Duration::from_secs(30),
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

    /// Bytes reserved now, by all connections.
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
}

impl FrameMeter {
    fn new(largest: usize) -> FrameMeter {
        FrameMeter {
            largest,
            head: [0; 4],
            have: 0,
            reserved: false,
            waited: Duration::ZERO,
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
    }

    /// How much longer the peer may take before the current frame is a stall: `grace`,
    /// and one second for each `min_rate` bytes that came. None between frames.
    fn patience(&self, limits: &FrameLimits) -> Option<Duration> {
        if !self.in_frame() {
            return None;
        }
        let earned = Duration::from_nanos(
            (self.have as u128 * 1_000_000_000 / u128::from(limits.min_rate.max(1)))
                .min(u128::from(u64::MAX)) as u64,
        );
        Some((limits.grace + earned).saturating_sub(self.waited))
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
