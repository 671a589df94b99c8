//! `balancer.max_connections`: how many client connections the balancer holds at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::throttle::LogThrottle;

/// `balancer.max_connections`: a slot per open client connection. At the limit the
/// balancer stops accepting (new clients wait in the kernel's listen backlog, as with
/// HAProxy's `maxconn`; a worker holds at most one accepted connection until a slot frees),
/// and says so in the log at most once per interval.
#[derive(Debug)]
pub struct ConnectionLimit {
    slots: Arc<Semaphore>,
    max: usize,
    reached: AtomicU64,
    throttle: Mutex<LogThrottle<()>>,
    /// Times reached since the last log line.
    unlogged: AtomicU64,
}

/// How often "connection limit reached" may be logged.
pub const LIMIT_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl ConnectionLimit {
    pub fn new(max: usize) -> ConnectionLimit {
        ConnectionLimit {
            slots: Arc::new(Semaphore::new(max)),
            max,
            reached: AtomicU64::new(0),
            throttle: Mutex::new(LogThrottle::new(LIMIT_LOG_INTERVAL)),
            unlogged: AtomicU64::new(0),
        }
    }

    /// A slot if one is free now; None when every slot is taken.
    pub fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        self.taken();
        Some(slot)
    }

    /// Waits for a free slot (None only if the limit is closed, which it never is).
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        let slot = self.slots.clone().acquire_owned().await.ok()?;
        self.taken();
        Some(slot)
    }

    /// Counts the limit reached when the slot just taken was the last.
    fn taken(&self) {
        if self.full() {
            self.reached.fetch_add(1, Ordering::Relaxed);
            self.unlogged.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every slot is taken.
    pub fn full(&self) -> bool {
        self.slots.available_permits() == 0
    }

    /// Whether the limit being reached at `now` should be logged; if so, how many times
    /// it was reached since the last line.
    pub fn log_due(&self, now: Instant) -> Option<u64> {
        if self.throttle.lock().allow(&(), now) {
            Some(self.unlogged.swap(0, Ordering::Relaxed))
        } else {
            None
        }
    }

    /// Client connections open now.
    pub fn open(&self) -> usize {
        self.max.saturating_sub(self.slots.available_permits())
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// How many times every slot got taken.
    pub fn reached(&self) -> u64 {
        self.reached.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_counts_open_connections_and_times_it_was_reached() {
        let limit = ConnectionLimit::new(2);
        let a = limit.try_slot().unwrap();
        assert_eq!(limit.reached(), 0);
        let _b = limit.try_slot().unwrap();
        assert_eq!(limit.open(), 2);
        assert!(limit.full());
        assert_eq!(limit.reached(), 1);
        assert!(limit.try_slot().is_none());
        assert!(limit.try_slot().is_none());
        assert_eq!(limit.reached(), 1, "counted once per time it fills up");
        drop(a);
        assert_eq!(limit.open(), 1);
        assert!(!limit.full());
        assert!(limit.try_slot().is_some());
        assert_eq!(limit.reached(), 2);
        assert_eq!(limit.max(), 2);
    }

    #[tokio::test]
    async fn a_slot_waited_for_comes_when_one_is_freed() {
        use futures_util::FutureExt;
        let limit = ConnectionLimit::new(1);
        let held = limit.try_slot().unwrap();
        let waiting = limit.slot();
        tokio::pin!(waiting);
        assert!(waiting.as_mut().now_or_never().is_none());
        drop(held);
        assert!(waiting.await.is_some());
        assert_eq!(limit.reached(), 2);
    }

    #[test]
    fn reaching_the_limit_is_logged_once_per_interval_with_a_count() {
        let limit = ConnectionLimit::new(1);
        let t0 = Instant::now();
        drop(limit.try_slot().unwrap());
        assert_eq!(limit.log_due(t0), Some(1));
        drop(limit.try_slot().unwrap());
        drop(limit.try_slot().unwrap());
        assert_eq!(limit.log_due(t0 + Duration::from_secs(1)), None);
        assert_eq!(limit.log_due(t0 + LIMIT_LOG_INTERVAL), Some(2));
        assert_eq!(limit.reached(), 3);
    }
}
