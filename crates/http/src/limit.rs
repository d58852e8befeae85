//! Rate limits: a token bucket per key (an account, a client address, a
//! user), refilled continuously. A refused request learns how long to wait
//! (`Retry-After`). Buckets live in this process; behind a load balancer
//! each server limits on its own. Memory is bounded: at most
//! [`MAX_ENTRIES`] keys per limiter; past that, full buckets are dropped
//! first, then the least recently used.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys kept per limiter (and per [`KnownClients`]) at most.
pub const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A limit of `per_minute` requests per key, with bursts up to `per_minute`.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    max_entries: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// A limiter; `per_minute == 0` never limits.
    pub fn new(per_minute: u32) -> Self {
        Self::bounded(per_minute, MAX_ENTRIES)
    }

    /// A limiter keeping at most `max_entries` keys.
    pub fn bounded(per_minute: u32, max_entries: usize) -> Self {
        Self {
            per_minute,
            max_entries: max_entries.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Keys held now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True if no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Bucket>> {
        match self.buckets.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        }
    }

    /// Takes one token for `key`; `Err(wait)` if there is none.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let cap = f64::from(self.per_minute);
        let rate = cap / 60.0; // tokens per second
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() >= self.max_entries && !map.contains_key(key) {
            // Full buckets hold no information: drop them first.
            map.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < cap);
            if map.len() >= self.max_entries {
                // Still full (many keys under attack): forget the least
                // recently used half. A forgotten key starts full again,
                // which only ever helps a key nobody used for the longest.
                let mut ages: Vec<Instant> = map.values().map(|b| b.at).collect();
                let mid = ages.len() / 2;
                ages.select_nth_unstable(mid);
                let cut = ages[mid];
                map.retain(|_, b| b.at > cut);
            }
        }
        let b = map.entry(key.to_string()).or_insert(Bucket {
            tokens: cap,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(cap);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }
}

/// Client addresses that logged in successfully to an account recently
/// (key: account and address), so the per-account limit that holds back
/// guessing from everywhere else does not lock the real user out.
#[derive(Debug)]
pub struct KnownClients {
    ttl: Duration,
    max_entries: usize,
    seen: Mutex<HashMap<String, Instant>>,
}

impl KnownClients {
    /// Remembers a success for `ttl`, at most `max_entries` of them.
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            ttl,
            max_entries: max_entries.max(1),
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        match self.seen.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        }
    }

    /// Records a successful login of `key`.
    pub fn remember(&self, key: &str) {
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() >= self.max_entries && !map.contains_key(key) {
            let ttl = self.ttl;
            map.retain(|_, at| now.duration_since(*at) < ttl);
            if map.len() >= self.max_entries
                && let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(key.to_string(), now);
    }

    /// True if `key` logged in successfully within the time to live.
    pub fn knows(&self, key: &str) -> bool {
        self.lock()
            .get(key)
            .is_some_and(|at| at.elapsed() < self.ttl)
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True if no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Seconds for `Retry-After`: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refuses_per_key() {
        let l = RateLimiter::new(3);
        for _ in 0..3 {
            assert!(l.check("a").is_ok());
        }
        let wait = l.check("a").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(l.check("b").is_ok(), "keys are independent");
        assert!(RateLimiter::new(0).check("a").is_ok());
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
    }

    #[test]
    fn memory_is_bounded_and_busy_keys_survive() {
        let l = RateLimiter::bounded(2, 100);
        // A key the attacker keeps empty.
        l.check("victim").unwrap();
        l.check("victim").unwrap();
        for i in 0..10_000 {
            let _ = l.check(&format!("spray{i}"));
            let _ = l.check(&format!("spray{i}"));
            assert!(l.len() <= 100, "{} keys held", l.len());
        }
        let k = KnownClients::new(Duration::from_secs(60), 50);
        for i in 0..1000 {
            k.remember(&format!("a{i}"));
            assert!(k.len() <= 50);
        }
        assert!(k.knows("a999"));
        assert!(!k.knows("a0"), "the oldest was evicted");
    }
}
