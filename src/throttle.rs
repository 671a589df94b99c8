//! Log at most once per key per interval, so a flood of bad input from one sender is
//! counted in full but logged once.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Remembers when each key was last logged. Bounded: past `MAX_KEYS` keys, old entries
/// are forgotten, so a sender spoofing many addresses cannot grow it.
#[derive(Debug)]
pub struct LogThrottle<K> {
    interval: Duration,
    last: HashMap<K, Instant>,
}

const MAX_KEYS: usize = 1024;

impl<K: Eq + Hash + Clone> LogThrottle<K> {
    pub fn new(interval: Duration) -> LogThrottle<K> {
        LogThrottle {
            interval,
            last: HashMap::new(),
        }
    }

    /// Whether an event of `key` at `now` should be logged.
    pub fn allow(&mut self, key: &K, now: Instant) -> bool {
        if let Some(at) = self.last.get(key) {
            if now.saturating_duration_since(*at) < self.interval {
                return false;
            }
        }
        if self.last.len() >= MAX_KEYS {
            let interval = self.interval;
            self.last
                .retain(|_, at| now.saturating_duration_since(*at) < interval);
            if self.last.len() >= MAX_KEYS {
                self.last.clear();
            }
        }
        self.last.insert(key.clone(), now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_logged_once_per_interval() {
        let mut t = LogThrottle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(t.allow(&"a", t0));
        assert!(!t.allow(&"a", t0 + Duration::from_secs(9)));
        assert!(t.allow(&"b", t0 + Duration::from_secs(9)));
        assert!(t.allow(&"a", t0 + Duration::from_secs(10)));
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut t = LogThrottle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        for i in 0..10 * MAX_KEYS {
            assert!(t.allow(&i, t0));
        }
        assert!(t.last.len() <= MAX_KEYS);
    }
}
