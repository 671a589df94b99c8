//! The member timeout (`balancer.timeout_s`, HAProxy's `timeout server`, mod_proxy's
//! `timeout`): how long a member may keep a proxied request waiting. It bounds three
//! waits, each one a [`Stall`] when it runs out:
//! - for the head of the member's answer once the request was sent: the client gets 504,
//!   the request is not sent to another member (it may have had effects), the member's
//!   error count goes up but it is not put in error state (slow is not dead; failure
//!   detection finds dead members), and its connection is closed;
//! - for each next chunk of the member's answer's body: the answer is cut off;
//! - for each next chunk of the client's body on its way to a member: the member
//!   connection is dropped and the client gets 408 (or is closed, if its answer started).
//!
//! Timers are cheap on this path: the head wait has one, and a body gets one only when
//! it first has to wait for a chunk, pushed on (not made anew) when it runs out during a
//! later wait ([`ChunkTimer`]).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::time::Sleep;
use tracing::warn;

use crate::throttle::LogThrottle;

/// How often each kind of stall may be logged.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A wait the member timeout ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Stall {
    /// No answer head from the member.
    Answer,
    /// No next chunk of the member's answer body.
    AnswerBody,
    /// No next chunk of the client's request body.
    RequestBody,
}

/// The error of a wait the member timeout ended.
#[derive(Debug, thiserror::Error)]
#[error("{}", match .stall {
    Stall::Answer => "the member sent no answer",
    Stall::AnswerBody => "the member sent no more of its answer",
    Stall::RequestBody => "the client sent no more of its request body",
})]
pub struct Stalled {
    pub stall: Stall,
    pub after: Duration,
}

impl Stalled {
    pub fn new(stall: Stall, after: Duration) -> Stalled {
        Stalled { stall, after }
    }
}

impl Stall {
    fn index(self) -> usize {
        match self {
            Stall::Answer => 0,
            Stall::AnswerBody => 1,
            Stall::RequestBody => 2,
        }
    }
}

/// The member timeout, and the log of the stalls it ended: at most one line per kind per
/// [`LOG_INTERVAL`], with how many happened since the last one. Shared by the workers.
#[derive(Debug)]
pub struct MemberTimeout {
    after: Duration,
    throttle: Mutex<LogThrottle<Stall>>,
    /// Stalls of each kind since its last log line.
    unlogged: [AtomicU64; 3],
}

impl MemberTimeout {
    pub fn new(after: Duration) -> MemberTimeout {
        MemberTimeout {
            after,
            throttle: Mutex::new(LogThrottle::new(LOG_INTERVAL)),
            unlogged: Default::default(),
        }
    }

    /// How long each wait may last.
    pub fn after(&self) -> Duration {
        self.after
    }

    /// Logs a stall (of a request to `member`, when known) at warn, throttled. Only the
    /// member's route goes into the line, never a header or body value.
    pub fn note(&self, stall: Stall, member: Option<&str>) {
        let Some(times) = self.log_due(stall, Instant::now()) else {
            return;
        };
        let timeout_s = self.after.as_secs();
        match stall {
            Stall::Answer => warn!(
                member,
                timeout_s,
                times,
                "member sent no answer within the timeout; answered 504, not retried elsewhere"
            ),
            Stall::AnswerBody => warn!(
                member,
                timeout_s,
                times,
                "member sent no more of its answer within the timeout; the answer was cut off"
            ),
            Stall::RequestBody => warn!(
                member,
                timeout_s,
                times,
                "client sent no more of its request body within the timeout; its request was dropped"
            ),
        }
    }

    /// Counts a stall at `now`; whether it should be logged, and if so, how many of its
    /// kind happened since the last line (this one included).
    pub fn log_due(&self, stall: Stall, now: Instant) -> Option<u64> {
        let unlogged = &self.unlogged[stall.index()];
        unlogged.fetch_add(1, Ordering::Relaxed);
        if self.throttle.lock().allow(&stall, now) {
            Some(unlogged.swap(0, Ordering::Relaxed))
        } else {
            None
        }
    }
}

/// The waits for the chunks of one body, each bounded. The timer is made when the body
/// first has to wait; a later wait only notes when it began, and the timer, when it runs
/// out before that wait's deadline (it was set for an earlier one), is pushed on to it.
/// So a body whose chunks are always there costs no timer, and a long one costs one, set
/// again at most once per timeout, however many chunks it waits for.
#[derive(Debug)]
pub struct ChunkTimer {
    after: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// When the wait under way began.
    waiting_since: Option<tokio::time::Instant>,
}

impl ChunkTimer {
    pub fn new(after: Duration) -> ChunkTimer {
        ChunkTimer {
            after,
            sleep: None,
            waiting_since: None,
        }
    }

    /// A chunk came (or the body ended): the next wait starts afresh.
    pub fn moved(&mut self) {
        self.waiting_since = None;
    }

    /// The body has nothing now: Ready once this wait has lasted the timeout. Until then
    /// the task is woken when the timer runs out.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let since = *self
            .waiting_since
            .get_or_insert_with(tokio::time::Instant::now);
        let deadline = since + self.after;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        // Deadlines only move on: one set for an earlier wait is never the later.
        while sleep.deadline() < deadline {
            ready!(sleep.as_mut().poll(cx));
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    #[tokio::test(start_paused = true)]
    async fn a_wait_expires_after_the_timeout_and_a_chunk_starts_a_new_one() {
        let mut timer = ChunkTimer::new(Duration::from_secs(2));
        let start = tokio::time::Instant::now();
        poll_fn(|cx| timer.poll_expired(cx)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        // Polled again within the same wait: still expired, the wait is not restarted.
        assert!(
            poll_fn(|cx| Poll::Ready(timer.poll_expired(cx)))
                .await
                .is_ready()
        );

        timer.moved();
        let first = poll_fn(|cx| Poll::Ready(timer.poll_expired(cx))).await;
        assert!(first.is_pending(), "a new wait after a chunk");
        // A chunk within the timeout: the timer, set for the wait before, is pushed on.
        tokio::time::advance(Duration::from_millis(1500)).await;
        timer.moved();
        let again = tokio::time::Instant::now();
        poll_fn(|cx| timer.poll_expired(cx)).await;
        assert_eq!(again.elapsed(), Duration::from_secs(2));
        // Many short waits, each well within the timeout, never expire.
        for _ in 0..10 {
            timer.moved();
            let wait = poll_fn(|cx| Poll::Ready(timer.poll_expired(cx))).await;
            assert!(wait.is_pending());
            tokio::time::advance(Duration::from_millis(900)).await;
        }
        timer.moved();
        let last = tokio::time::Instant::now();
        poll_fn(|cx| timer.poll_expired(cx)).await;
        assert_eq!(last.elapsed(), Duration::from_secs(2));
    }

    #[test]
    fn each_kind_of_stall_is_logged_once_per_interval_with_a_count() {
        let timeout = MemberTimeout::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(timeout.log_due(Stall::Answer, t0), Some(1));
        assert_eq!(timeout.log_due(Stall::Answer, t0), None);
        assert_eq!(timeout.log_due(Stall::RequestBody, t0), Some(1));
        assert_eq!(timeout.log_due(Stall::Answer, t0 + LOG_INTERVAL / 2), None);
        assert_eq!(timeout.log_due(Stall::Answer, t0 + LOG_INTERVAL), Some(3));
        assert_eq!(
            timeout.log_due(Stall::AnswerBody, t0 + LOG_INTERVAL),
            Some(1)
        );
    }
}
