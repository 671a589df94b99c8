//! The wall clock of session times (created, last access, expiry, tombstones), read in one
//! place below every part that stamps a session. Session times are Unix milliseconds, not
//! `Instant`s, because they travel between processes and appear in `/session`.
//!
//! Pure logic never calls this: it takes `now_ms` as an argument, and only the async
//! drivers (the HTTP handlers, the replication links and port) read the clock and pass it
//! down.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; 0 for a clock set before 1970, `u64::MAX` beyond
/// what fits, so a broken clock is never a panic.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_reads_a_time_after_this_code_was_written() {
        // 2024-01-01T00:00:00Z: a clock reading before it is not the Unix epoch's.
        assert!(now_ms() > 1_704_067_200_000);
    }
}
