//! Bodies that stream through the gateway: a request body that can be taken back for a retry if it was
//! never sent, and a response body that holds the request's accounting until it ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

use crate::endpoint::InFlightGuard;
use crate::metrics::{NotCounted, RevisionMetrics};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client's request body as sent upstream. A body-less request needs nothing shared; a request
/// with a body shares it with the proxy, so that it can be sent again to another replica if it was
/// never polled.
pub enum RequestBody {
    Empty,
    /// A body read whole first (a mirrored request, sent twice).
    Full(Option<Bytes>),
    Shared {
        slot: Arc<Mutex<Slot>>,
        limit: u64,
        seen: u64,
    },
}

pub struct Slot {
    body: Option<Incoming>,
    polled: bool,
    /// Reading the client's body failed (malformed chunking, too large, the client went away).
    client_failed: bool,
}

/// The proxy's handle on a request body it may want back.
#[derive(Clone)]
pub enum BodySlot {
    Empty,
    Buffered(Bytes),
    Shared { slot: Arc<Mutex<Slot>>, limit: u64 },
}

impl BodySlot {
    pub fn new(body: Incoming, limit: u64) -> Self {
        if body.is_end_stream() {
            return BodySlot::Empty;
        }
        BodySlot::Shared {
            slot: Arc::new(Mutex::new(Slot {
                body: Some(body),
                polled: false,
                client_failed: false,
            })),
            limit,
        }
    }

    /// Whether any of the body has been sent (or asked for) upstream.
    pub fn was_polled(&self) -> bool {
        match self {
            BodySlot::Empty | BodySlot::Buffered(_) => false,
            BodySlot::Shared { slot, .. } => slot.lock().unwrap().polled,
        }
    }

    /// Whether the client's body failed to read: the upstream's failure then is the client's doing.
    pub fn client_failed(&self) -> bool {
        match self {
            BodySlot::Empty | BodySlot::Buffered(_) => false,
            BodySlot::Shared { slot, .. } => slot.lock().unwrap().client_failed,
        }
    }

    pub fn body(&self) -> RequestBody {
        match self {
            BodySlot::Empty => RequestBody::Empty,
            BodySlot::Buffered(b) => RequestBody::Full(Some(b.clone())),
            BodySlot::Shared { slot, limit } => RequestBody::Shared {
                slot: slot.clone(),
                limit: *limit,
                seen: 0,
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("request body is larger than {0} bytes")]
pub struct BodyTooLarge(pub u64);

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let (slot, limit, seen) = match self.get_mut() {
            RequestBody::Shared { slot, limit, seen } => (slot, limit, seen),
            RequestBody::Full(data) => return Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            RequestBody::Empty => return Poll::Ready(None),
        };
        let mut guard = slot.lock().unwrap();
        guard.polled = true;
        let Some(inner) = guard.body.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    *seen += d.len() as u64;
                    if *limit > 0 && *seen > *limit {
                        guard.client_failed = true;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(*limit)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                guard.client_failed = true;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Full(d) => d.is_none(),
            RequestBody::Shared { slot, .. } => slot.lock().unwrap().body.as_ref().is_none_or(|b| b.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Full(d) => SizeHint::with_exact(d.as_ref().map(|d| d.len() as u64).unwrap_or(0)),
            RequestBody::Shared { slot, .. } => slot
                .lock()
                .unwrap()
                .body
                .as_ref()
                .map(|b| b.size_hint())
                .unwrap_or_else(|| SizeHint::with_exact(0)),
        }
    }
}

/// Everything a proxied request holds until its response ends: the replica's in-flight count, the
/// breaker slot, and the metrics it is recorded in.
pub struct Accounting {
    pub metrics: Arc<RevisionMetrics>,
    pub started: Instant,
    /// How the request ended: the revision's status, or why it does not count. Until a status is set,
    /// a request dropped on the way (its client went away) is `ClientClosed`.
    pub outcome: Result<u16, NotCounted>,
    pub in_flight: Option<InFlightGuard>,
    pub permit: Option<OwnedSemaphorePermit>,
}

impl Accounting {
    /// Starts a request's accounting: counted in flight from `started`, `ClientClosed` until it
    /// gets an outcome.
    pub fn start(metrics: &Arc<RevisionMetrics>, started: Instant) -> Accounting {
        metrics.start(started);
        Accounting {
            metrics: metrics.clone(),
            started,
            outcome: Err(NotCounted::ClientClosed),
            in_flight: None,
            permit: None,
        }
    }
}

impl Drop for Accounting {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        match self.outcome {
            Ok(status) => self.metrics.finish(status, self.started, elapsed),
            Err(why) => self.metrics.finish_not_counted(why, self.started, elapsed),
        }
    }
}

/// A proxied response body: streams the upstream's frames, ends with an error at the request's deadline.
pub struct ResponseBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    accounting: Option<Accounting>,
    tee: Option<Tee>,
}

/// A copy of a response body as it streams by (up to a limit), handed over when it ends whole.
pub struct Tee {
    buf: Vec<u8>,
    limit: usize,
    tx: Option<tokio::sync::oneshot::Sender<Bytes>>,
}

impl Tee {
    pub fn new(limit: usize, tx: tokio::sync::oneshot::Sender<Bytes>) -> Tee {
        Tee {
            buf: Vec::new(),
            limit,
            tx: Some(tx),
        }
    }

    fn data(&mut self, d: &Bytes) {
        if self.buf.len() + d.len() > self.limit {
            self.tx = None;
        } else if self.tx.is_some() {
            self.buf.extend_from_slice(d);
        }
    }

    fn end(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Bytes::from(std::mem::take(&mut self.buf)));
        }
    }
}

impl ResponseBody {
    /// `deadline` is the request's own timer, carried on from waiting for the response head.
    pub fn new(inner: Incoming, deadline: Pin<Box<tokio::time::Sleep>>, accounting: Accounting) -> Self {
        ResponseBody {
            inner,
            deadline,
            accounting: Some(accounting),
            tee: None,
        }
    }

    /// Copies the body as it streams, for comparison with a mirrored answer.
    pub fn with_tee(mut self, tee: Option<Tee>) -> Self {
        self.tee = tee;
        self
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the revision's timeout passed while the response was streaming")]
pub struct StreamTimeout;

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                self.accounting = None;
                if let Some(t) = self.tee.as_mut() {
                    t.end();
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.accounting = None;
                self.tee = None;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(Some(Ok(f))) => {
                let ended = self.inner.is_end_stream();
                if let (Some(t), Some(d)) = (self.tee.as_mut(), f.data_ref()) {
                    t.data(d);
                    // With a known length the last frame may be the last poll.
                    if ended {
                        t.end();
                    }
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.accounting = None;
                    Poll::Ready(Some(Err(Box::new(StreamTimeout))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the gateway answers with: a proxied stream, or its own short message.
pub enum GatewayBody {
    Proxied(ResponseBody),
    Local(Full<Bytes>),
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            GatewayBody::Proxied(b) => Pin::new(b).poll_frame(cx),
            GatewayBody::Local(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Proxied(b) => b.is_end_stream(),
            GatewayBody::Local(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Proxied(b) => b.size_hint(),
            GatewayBody::Local(b) => b.size_hint(),
        }
    }
}
