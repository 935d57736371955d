//! Overload protection: a bound on requests in flight, answered with 503 and `Retry-After`
//! at saturation instead of queueing without end, and a token bucket per principal, answered
//! with 429. Both are checked before any work is done for the request, so shedding is cheap.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use custody_core::PrincipalId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The server's limits.
#[derive(Debug)]
pub struct Limits {
    inflight: std::sync::Arc<Semaphore>,
    /// Sustained requests per second per principal; 0 turns the limit off.
    rate: f64,
    /// Requests a principal may send at once above the rate.
    burst: f64,
    buckets: Mutex<HashMap<PrincipalId, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Most principals tracked; past this, idle full buckets are dropped.
const MAX_BUCKETS: usize = 100_000;

impl Limits {
    /// `max_inflight` requests at once (at least 1); `rate` requests/s per principal with
    /// `burst` (rate 0: unlimited).
    pub fn new(max_inflight: usize, rate: f64, burst: u32) -> Self {
        Self {
            inflight: std::sync::Arc::new(Semaphore::new(max_inflight.max(1))),
            rate: if rate.is_finite() && rate > 0.0 { rate } else { 0.0 },
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for one request, or `None` at saturation.
    pub fn enter(&self) -> Option<OwnedSemaphorePermit> {
        self.inflight.clone().try_acquire_owned().ok()
    }

    /// Takes one token from `principal`'s bucket; `Err(seconds)` until one is available.
    ///
    /// # Errors
    /// The whole seconds (at least 1) to wait before retrying.
    pub fn admit(&self, principal: &PrincipalId) -> Result<(), u32> {
        if self.rate == 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_BUCKETS {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let b = buckets.entry(principal.clone()).or_insert(Bucket { tokens: self.burst, at: now });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - b.tokens) / self.rate;
            Err(wait.ceil().clamp(1.0, 3600.0) as u32)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn inflight_is_bounded() {
        let l = Limits::new(2, 0.0, 1);
        let a = l.enter().unwrap();
        let _b = l.enter().unwrap();
        assert!(l.enter().is_none());
        drop(a);
        assert!(l.enter().is_some());
    }

    #[test]
    fn buckets_are_per_principal() {
        let l = Limits::new(8, 1.0, 3);
        let (p, q) = (PrincipalId::new("p").unwrap(), PrincipalId::new("q").unwrap());
        for _ in 0..3 {
            l.admit(&p).unwrap();
        }
        assert_eq!(l.admit(&p), Err(1));
        l.admit(&q).unwrap();
        assert!(Limits::new(8, 0.0, 1).admit(&p).is_ok());
    }
}
