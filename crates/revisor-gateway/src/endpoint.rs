//! Replicas as the gateway sees them (in-flight counts for least-loaded picking and draining), and
//! Knative's breaker for `containerConcurrency`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One ready replica. The same object lives across route snapshots, so counts survive a swap.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `addr` as a URI authority, made once.
    pub authority: hyper::http::uri::Authority,
    in_flight: AtomicUsize,
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Self {
        let authority = addr
            .to_string()
            .parse()
            .expect("socket addresses are valid authorities");
        Endpoint {
            addr,
            authority,
            in_flight: AtomicUsize::new(0),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn acquire(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.clone())
    }
}

/// Counts one request in flight to an endpoint until dropped.
pub struct InFlightGuard(Arc<Endpoint>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Picks a replica: with a concurrency limit, the least loaded of all (so none exceeds the limit while
/// the breaker holds capacity); without one, the less loaded of two random choices.
pub fn pick(endpoints: &[Arc<Endpoint>], limited: bool, skip: Option<SocketAddr>) -> Option<&Arc<Endpoint>> {
    let candidates = || endpoints.iter().filter(|e| Some(e.addr) != skip);
    let n = candidates().count();
    match n {
        0 => None,
        1 => candidates().next(),
        _ if limited => candidates().min_by_key(|e| e.in_flight()),
        _ => {
            let a = fastrand::usize(0..n);
            let mut b = fastrand::usize(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (ea, eb) = (candidates().nth(a)?, candidates().nth(b)?);
            Some(if eb.in_flight() < ea.in_flight() { eb } else { ea })
        }
    }
}

/// Knative's breaker: `capacity` requests in flight (containerConcurrency × replicas), at most
/// `queue` more waiting; beyond that a request is refused at once.
#[derive(Debug)]
pub struct Breaker {
    capacity: usize,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue: usize,
}

/// Why the breaker refused a request.
#[derive(Debug, PartialEq, Eq)]
pub struct Overloaded;

impl Breaker {
    pub fn new(capacity: usize, queue: usize) -> Self {
        Breaker {
            capacity,
            slots: Arc::new(Semaphore::new(capacity)),
            waiting: AtomicUsize::new(0),
            queue,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Waits for a slot, or refuses at once when the queue is full.
    pub async fn enter(&self) -> Result<OwnedSemaphorePermit, Overloaded> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Overloaded);
        }
        let permit = self.slots.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        permit.map_err(|_| Overloaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_breaker_queues_then_refuses() {
        let b = Breaker::new(1, 1);
        let first = b.enter().await.unwrap();
        let b = Arc::new(b);
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.enter().await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        while b.waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(b.enter().await.unwrap_err(), Overloaded, "the queue of one is full");
        drop(first);
        assert_eq!(waiter.await.unwrap(), Ok(()));
    }

    #[test]
    fn limited_picking_takes_the_least_loaded() {
        let eps: Vec<_> = (0..3)
            .map(|i| Arc::new(Endpoint::new(([127, 0, 0, 1], 1000 + i).into())))
            .collect();
        let _a = eps[0].acquire();
        let _b = eps[2].acquire();
        assert_eq!(pick(&eps, true, None).unwrap().addr.port(), 1001);
        assert_eq!(pick(&eps, true, Some(eps[1].addr)).unwrap().addr.port(), 1000);
        assert!(pick(&eps[..1], false, Some(eps[0].addr)).is_none());
    }
}
