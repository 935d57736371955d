//! Overload protection: a bound on requests in flight, answered with 503 and `Retry-After`
//! at saturation instead of queueing without end, and a token bucket per principal, answered
//! with 429. Both are checked before any work is done for the request, so shedding is cheap.
//!
//! Between the two outcomes sits a short, bounded admission queue: at saturation up to
//! `max_inflight` more requests wait (first come, first served) up to [`QUEUE_WAIT`] for a
//! slot. A burst then costs latency instead of a 503 and a client's retry, and the server
//! never idles while shed clients sleep out their `Retry-After`; memory stays bounded by twice
//! `max_inflight` requests.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use custody_core::PrincipalId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Longest a request waits in the admission queue for a slot before it is shed.
pub const QUEUE_WAIT: Duration = Duration::from_millis(250);

/// The server's limits.
#[derive(Debug)]
pub struct Limits {
    inflight: std::sync::Arc<Semaphore>,
    /// Places in the admission queue.
    waiting: std::sync::Arc<Semaphore>,
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
            waiting: std::sync::Arc::new(Semaphore::new(max_inflight.max(1))),
            rate: if rate.is_finite() && rate > 0.0 { rate } else { 0.0 },
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for one request: at once if one is free, else after a wait of at most
    /// [`QUEUE_WAIT`] in the admission queue; `None` if the queue is full or the wait ran out.
    pub async fn enter(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.inflight.clone().try_acquire_owned() {
            return Some(permit);
        }
        let _place = self.waiting.clone().try_acquire_owned().ok()?;
        tokio::time::timeout(QUEUE_WAIT, self.inflight.clone().acquire_owned()).await.ok()?.ok()
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

    #[tokio::test]
    async fn inflight_is_bounded_and_the_queue_too() {
        let l = std::sync::Arc::new(Limits::new(2, 0.0, 1));
        let a = l.enter().await.unwrap();
        let _b = l.enter().await.unwrap();
        // Saturated: the next one waits its turn and is shed after QUEUE_WAIT.
        let t = Instant::now();
        assert!(l.enter().await.is_none());
        assert!(t.elapsed() >= QUEUE_WAIT);
        // A waiter gets the slot as soon as one frees up.
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.enter().await }
        });
        tokio::task::yield_now().await;
        drop(a);
        let _held = waiter.await.unwrap().expect("the waiter got the freed slot");
        // With two waiting (the queue holds max_inflight = 2), a third is shed at once.
        let (l1, l2) = (l.clone(), l.clone());
        let w1 = tokio::spawn(async move { l1.enter().await.is_some() });
        let w2 = tokio::spawn(async move { l2.enter().await.is_some() });
        tokio::task::yield_now().await;
        assert!(l.enter().await.is_none());
        // Shed without waiting: the two queued before it are still in their wait.
        assert!(!w1.is_finished() && !w2.is_finished(), "a full queue sheds at once");
        assert!(!w1.await.unwrap() && !w2.await.unwrap(), "no slot freed within QUEUE_WAIT");
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
