//! Upstream HTTP/1 connections of the gateway's own: one pool per thread (the gateway serves on one
//! single-threaded runtime per core), and each connection polled by the request that uses it, while
//! it waits for the response head and then from its response body, instead of by a task of its own
//! that a channel hands requests to (hyper's pooled client). That saves a task hand-off and a wakeup
//! per request. When the body has been read to its end, the connection goes back to the pool.
//!
//! A pooled connection the upstream closed while it was idle is found out when it is taken: its
//! connection future has ended, or hyper gives the request back unsent; the request then goes on
//! another connection. A request that was sent and failed is the caller's to retry or not.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::RequestBody;

/// A connection's future, boxed once when it is made (it is large, and moves in and out of the pool).
type Conn = Box<Connection<TokioIo<TcpStream>, RequestBody>>;

/// An idle connection: its sender, its connection future, and since when it idles.
struct Idle {
    sender: SendRequest<RequestBody>,
    conn: Conn,
    since: Instant,
}

/// Idle connections older than this are closed rather than used.
const IDLE_FOR: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle connections kept per upstream address and thread.
const MAX_IDLE: usize = 512;

/// How often a thread's whole pool is swept of connections idle too long: those to replicas that
/// are gone would otherwise keep their descriptors.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

struct Pool {
    idle: HashMap<SocketAddr, Vec<Idle>>,
    swept: Instant,
}

thread_local! {
    static IDLE: RefCell<Pool> = RefCell::new(Pool { idle: HashMap::new(), swept: Instant::now() });
}

/// Why a request got no response.
#[derive(Debug)]
pub enum Error {
    /// No connection could be made: nothing was sent.
    Connect(std::io::Error),
    Http(hyper::Error),
}

impl Error {
    pub fn is_connect(&self) -> bool {
        matches!(self, Error::Connect(_))
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Connect(e) => write!(f, "connecting: {e}"),
            Error::Http(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect(e) => e.source(),
            Error::Http(e) => e.source(),
        }
    }
}

fn checkout(addr: SocketAddr) -> Option<Idle> {
    IDLE.with(|pool| {
        let mut pool = pool.borrow_mut();
        let list = pool.idle.get_mut(&addr)?;
        while let Some(i) = list.pop() {
            if i.since.elapsed() < IDLE_FOR && !i.sender.is_closed() {
                return Some(i);
            }
        }
        None
    })
}

fn checkin(addr: SocketAddr, sender: SendRequest<RequestBody>, conn: Conn) {
    if sender.is_closed() {
        return;
    }
    IDLE.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.swept.elapsed() >= SWEEP_EVERY {
            pool.swept = Instant::now();
            pool.idle.retain(|_, list| {
                list.retain(|i| i.since.elapsed() < IDLE_FOR && !i.sender.is_closed());
                !list.is_empty()
            });
        }
        let list = pool.idle.entry(addr).or_default();
        if list.len() < MAX_IDLE {
            list.push(Idle {
                sender,
                conn,
                since: Instant::now(),
            });
        }
    });
}

async fn connect(addr: SocketAddr) -> Result<(SendRequest<RequestBody>, Conn), Error> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| Error::Connect(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")))?
        .map_err(Error::Connect)?;
    let _ = stream.set_nodelay(true);
    http1::handshake(TokioIo::new(stream))
        .await
        .map(|(sender, conn)| (sender, Box::new(conn)))
        .map_err(|e| Error::Connect(std::io::Error::other(e)))
}

/// Sends `req` to `addr` on a pooled connection (or a new one) and waits for the response head.
pub async fn request(addr: SocketAddr, mut req: Request<RequestBody>) -> Result<Response<Pooled>, Error> {
    // The request line carries the path only (origin form), as hyper's pooled client writes it.
    if let Some(pq) = req.uri().path_and_query().cloned() {
        *req.uri_mut() = Uri::from(pq);
    }
    loop {
        let (mut sender, mut conn, fresh) = match checkout(addr) {
            Some(i) => (i.sender, i.conn, false),
            None => {
                let (s, c) = connect(addr).await?;
                (s, c, true)
            }
        };
        // Ready to send: the connection is polled meanwhile, and found closed if it was.
        let ready = poll_fn(|cx| {
            if let Poll::Ready(r) = Pin::new(&mut *conn).poll(cx) {
                return Poll::Ready(Err(r.err()));
            }
            sender.poll_ready(cx).map(|r| r.map_err(Some))
        })
        .await;
        match ready {
            Ok(()) => {}
            Err(_) if !fresh => continue,
            Err(Some(e)) => return Err(Error::Http(e)),
            Err(None) => {
                return Err(Error::Connect(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "the upstream closed a new connection",
                )))
            }
        }
        let mut sending = std::pin::pin!(sender.try_send_request(req));
        let mut conn_ended = false;
        let answer = poll_fn(|cx| {
            if !conn_ended && Pin::new(&mut *conn).poll(cx).is_ready() {
                conn_ended = true;
            }
            sending.as_mut().poll(cx)
        })
        .await;
        match answer {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                let mut pooled = Pooled {
                    body,
                    keep: (!conn_ended).then_some((sender, conn)),
                    addr,
                };
                if pooled.body.is_end_stream() {
                    pooled.release();
                }
                return Ok(Response::from_parts(parts, pooled));
            }
            Err(mut e) => match e.take_message() {
                // Never written: an idle connection that had gone stale; another takes it.
                Some(back) if !fresh => req = back,
                _ => return Err(Error::Http(e.into_error())),
            },
        }
    }
}

/// A response body from a pooled connection: reading it drives the connection, which goes back to
/// the pool once the body has ended (dropped before that, the connection closes).
pub struct Pooled {
    body: Incoming,
    keep: Option<(SendRequest<RequestBody>, Conn)>,
    addr: SocketAddr,
}

impl Pooled {
    fn release(&mut self) {
        if let Some((sender, conn)) = self.keep.take() {
            checkin(self.addr, sender, conn);
        }
    }
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some((_, conn)) = this.keep.as_mut() {
            if Pin::new(&mut **conn).poll(cx).is_ready() {
                // Closed (or failed): the body gets its end or its error from it.
                this.keep = None;
            }
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        let ended = match &frame {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.body.is_end_stream(),
            Poll::Ready(Some(Err(_))) => {
                this.keep = None;
                false
            }
            Poll::Pending => false,
        };
        if ended {
            this.release();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
