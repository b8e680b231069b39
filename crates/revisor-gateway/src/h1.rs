//! The gateway's own HTTP/1.1 path for the common request, and the connection loop every client
//! connection starts in.
//!
//! A plain HTTP/1.1 request (origin-form target, one Host, a body of at most [`BODY_LIMIT`] bytes by
//! Content-Length, no `Expect`, no `Transfer-Encoding`) to an HTTP/1 revision with a ready replica and
//! no mirrored copy is relayed here: its head is parsed in place with `httparse`, written upstream with
//! the hop-by-hop headers left out and `X-Forwarded-For` added, over a connection from this worker's
//! own [`Pool`], and the response is relayed back with its framing kept (or a close-delimited body
//! re-framed as chunked). The request runs on the connection's own task from start to end: no
//! channel, no second task, no per-request allocation of a URI or header map.
//!
//! Everything else (HTTP/2 with prior knowledge, HTTP/1.0, chunked or large request bodies,
//! `Expect: 100-continue`, mirrored requests, revisions waiting for a replica, h2c revisions, requests
//! the gateway refuses while routing, anything `httparse` does not accept) is handed, with the bytes
//! already read, to hyper and [`crate::proxy::handle`] for the rest of the connection: those paths
//! behave exactly as before. The decision is made before anything is counted or sent, so a request is
//! never half-handled by both.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use hyper::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::body::Accounting;
use crate::endpoint::pick;
use crate::proxy::{resolve, Peer, TAG_HEADER};
use crate::routes::{Protocol, RevisionTarget};
use crate::Inner;

/// Request bodies up to this size (by Content-Length) are read whole, then sent with the head in one
/// write; larger ones stream through hyper's path.
pub const BODY_LIMIT: usize = 64 * 1024;
/// Headers per message, as hyper allows.
const MAX_HEADERS: usize = 100;
/// How long a connection may take to send a request head, or idle between requests (hyper's
/// default header read timeout, which the gateway had before).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle upstream connections are kept this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest upstream response head.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Whether a header is hop-by-hop (proxy.rs's list; a request's `Upgrade` too), never relayed.
fn hop_by_hop(name: &str, request: bool) -> bool {
    crate::proxy::HOP_BY_HOP
        .iter()
        .any(|h| h.as_str().eq_ignore_ascii_case(name))
        || (request && name.eq_ignore_ascii_case("upgrade"))
}

/// One worker's idle upstream HTTP/1 connections, by replica. Connections are taken most recently
/// used first; one idle longer than [`IDLE_TIMEOUT`], or that its replica closed while it idled, is
/// dropped instead of used.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<PoolInner>,
}

#[derive(Default)]
struct PoolInner {
    by_addr: HashMap<SocketAddr, Vec<(TcpStream, Instant)>>,
    swept: Option<Instant>,
}

impl Pool {
    fn checkout(&self, addr: SocketAddr) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap();
        let list = idle.by_addr.get_mut(&addr)?;
        let now = Instant::now();
        while let Some((s, at)) = list.pop() {
            if now.duration_since(at) < IDLE_TIMEOUT && alive(&s) {
                return Some(s);
            }
        }
        None
    }

    fn checkin(&self, addr: SocketAddr, s: TcpStream) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap();
        // Now and then, forget connections idle too long (replicas that are gone among them).
        if idle
            .swept
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(5))
        {
            idle.swept = Some(now);
            for list in idle.by_addr.values_mut() {
                list.retain(|(_, at)| now.duration_since(*at) < IDLE_TIMEOUT);
            }
            idle.by_addr.retain(|_, l| !l.is_empty());
        }
        idle.by_addr.entry(addr).or_default().push((s, now));
    }
}

/// Whether an idle connection is still open: nothing has arrived on it since its last response was
/// read whole (a read that leaves the socket drained clears its readiness, so a quiet connection
/// costs no system call here). End of stream, or bytes the replica should not have sent, mean no.
fn alive(s: &TcpStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match s.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut b = [0u8; 1];
            matches!(s.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
    }
}

async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out after 2s"))??;
    s.set_nodelay(true)?;
    Ok(s)
}

/// A byte stream with bytes already read put back in front: how a connection is handed to hyper.
pub struct Rewind<IO> {
    pre: Bytes,
    io: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// How a connection's life continues after one request.
enum Next {
    /// Read the next request.
    KeepAlive,
    /// Close the connection (the client asked, the gateway is stopping, or the response could not be
    /// finished).
    Close,
}

/// A request the fast path takes: where it goes and what the upstream is sent.
struct Plan {
    target: Arc<RevisionTarget>,
    head_len: usize,
    body_len: usize,
    safe: bool,
    head: bool,
    close: bool,
}

/// Serves one client connection: requests the fast path takes are relayed here; at the first that it
/// does not, the connection is handed to hyper with everything read so far.
pub(crate) async fn serve<IO>(
    inner: Arc<Inner>,
    mut io: IO,
    peer: Peer,
    pool: Arc<Pool>,
    half_close: bool,
    mut shutdown: Option<watch::Receiver<bool>>,
) -> Result<(), String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = BytesMut::with_capacity(8192);
    let mut out: Vec<u8> = Vec::with_capacity(2048);
    let mut ubuf = BytesMut::with_capacity(32 * 1024);
    // One timer per connection, reset for each wait: the next head, then each request's deadline.
    let mut timer = Box::pin(tokio::time::sleep(HEAD_TIMEOUT));
    let max_head = inner.config.max_header_bytes;
    loop {
        // A whole request head, or a reason to stop.
        let plan = loop {
            if !buf.is_empty() {
                match plan(&inner, &buf, &peer, &mut out) {
                    Parsed::Fast(p) => break p,
                    Parsed::Partial if buf.len() <= max_head => {}
                    Parsed::Partial | Parsed::Other => {
                        inner.handed_off.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let io = Rewind { pre: buf.freeze(), io };
                        return crate::serve_hyper(inner, io, peer, half_close, shutdown).await;
                    }
                }
            }
            if buf.capacity() - buf.len() < 2048 {
                buf.reserve(8192);
            }
            timer.as_mut().reset((Instant::now() + HEAD_TIMEOUT).into());
            let idle = buf.is_empty();
            let read = tokio::select! {
                biased;
                r = io.read_buf(&mut buf) => r,
                _ = timer.as_mut() => return Ok(()),
                _ = stopped(&mut shutdown), if idle => return Ok(()),
            };
            match read {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        };
        buf.advance(plan.head_len);
        let next = relay(
            plan, &mut io, &mut buf, &mut out, &mut ubuf, &pool, &mut timer, half_close, &shutdown,
        )
        .await;
        match next {
            Next::KeepAlive => {}
            Next::Close => {
                let _ = io.shutdown().await;
                return Ok(());
            }
        }
    }
}

async fn stopped(shutdown: &mut Option<watch::Receiver<bool>>) {
    match shutdown {
        Some(rx) => {
            let _ = rx.wait_for(|s| *s).await;
        }
        None => std::future::pending().await,
    }
}

fn stopping(shutdown: &Option<watch::Receiver<bool>>) -> bool {
    // The only change a shutdown signal makes is to `true`.
    shutdown.as_ref().is_some_and(|rx| rx.has_changed().unwrap_or(true))
}

enum Parsed {
    Fast(Plan),
    Partial,
    /// Not for the fast path: hyper serves it.
    Other,
}

/// A header value as text, by the rule hyper's `HeaderValue::to_str` applies (visible ASCII and tab).
fn text(v: &[u8]) -> Option<&str> {
    if v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)) {
        std::str::from_utf8(v).ok()
    } else {
        None
    }
}

/// Parses the request head at the front of `buf` and, when the fast path takes the request, writes
/// the upstream request's head into `out`.
fn plan(inner: &Inner, buf: &[u8], peer: &Peer, out: &mut Vec<u8>) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Other;
    };
    if !path.starts_with('/') {
        return Parsed::Other;
    }
    let mut host = None;
    let mut hosts = 0;
    let mut length = None;
    let mut tag = None;
    let mut close = false;
    let mut named: Vec<&str> = Vec::new();
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = text(h.value);
        } else if name.eq_ignore_ascii_case("content-length") {
            let Some(n) = text(h.value).and_then(|v| v.parse::<u64>().ok()) else {
                return Parsed::Other;
            };
            if length.is_some() {
                return Parsed::Other;
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") || name.eq_ignore_ascii_case("expect") {
            return Parsed::Other;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in text(h.value).unwrap_or("").split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if !token.is_empty() {
                    named.push(token);
                }
            }
        } else if name.eq_ignore_ascii_case(TAG_HEADER) {
            tag = text(h.value);
        }
    }
    let Some(host) = host.filter(|_| hosts == 1) else {
        return Parsed::Other;
    };
    let body_len = length.unwrap_or(0);
    let limit = inner.config.max_body_bytes;
    if body_len > BODY_LIMIT as u64 || (limit > 0 && body_len > limit) {
        return Parsed::Other;
    }
    // The host without its port (IPv6 literals kept whole), lower case.
    let host = crate::proxy::without_port(host);
    let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    };
    let table = inner.routes.load();
    let headers = &*req.headers;
    let has = |name: &hyper::header::HeaderName, m: &crate::routes::Matcher| {
        headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case(name.as_str()) && text(h.value).is_some_and(|v| m.matches(v)))
    };
    let target = match resolve(&table, &host, tag, &has) {
        Ok((target, None)) if target.protocol == Protocol::Http1 && !target.endpoints.is_empty() => target,
        _ => return Parsed::Other,
    };
    // The upstream request's head.
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut xff: Option<&[u8]> = None;
    for h in headers.iter() {
        let name = h.name;
        if hop_by_hop(name, true) || named.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            continue;
        }
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            xff = xff.or(Some(h.value));
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prev) = xff {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(peer.ip());
    out.extend_from_slice(b"\r\n\r\n");
    Parsed::Fast(Plan {
        target,
        head_len,
        body_len: body_len as usize,
        safe: matches!(method, "GET" | "HEAD" | "OPTIONS"),
        head: method == "HEAD",
        close,
    })
}

/// How far a request got, for what a timeout does.
#[derive(Default)]
struct Progress {
    /// The request's body was read (and taken out of the connection's buffer).
    body_taken: bool,
    /// The response head was (or is being) written to the client.
    sent_head: bool,
}

/// Why a relay stopped short.
enum Failure {
    /// The gateway answers itself (nothing of the response was sent yet).
    Local(StatusCode, String),
    /// The client went away.
    ClientGone,
    /// The response was cut short after its head was sent: only closing the connection tells.
    Abort,
}

/// Relays one request the fast path took, answering the client (or not, if it went away).
#[allow(clippy::too_many_arguments)]
async fn relay<IO>(
    plan: Plan,
    io: &mut IO,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    ubuf: &mut BytesMut,
    pool: &Pool,
    timer: &mut Pin<Box<tokio::time::Sleep>>,
    half_close: bool,
    shutdown: &Option<watch::Receiver<bool>>,
) -> Next
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let target = plan.target.clone();
    let started = Instant::now();
    let mut acct = Accounting::start(&target.metrics, started);
    // One deadline per request: it bounds the body's arrival, the wait for the response head, then
    // the response body.
    timer.as_mut().reset((started + target.timeout).into());
    let mut progress = Progress::default();
    let result = tokio::select! {
        biased;
        r = exchange(&plan, io, buf, out, ubuf, pool, &mut acct, &mut progress, half_close, shutdown) => r,
        _ = timer.as_mut() => Err(if progress.sent_head {
            Failure::Abort
        } else {
            acct.outcome = Ok(504);
            Failure::Local(StatusCode::GATEWAY_TIMEOUT, format!("revision {:?} did not answer within {:?}", target.name, target.timeout))
        }),
    };
    let close = plan.close || stopping(shutdown);
    match result {
        Ok(reusable_client) => {
            drop(acct);
            if close || !reusable_client {
                Next::Close
            } else {
                Next::KeepAlive
            }
        }
        Err(Failure::ClientGone) | Err(Failure::Abort) => Next::Close,
        Err(Failure::Local(status, message)) => {
            drop(acct);
            // A body never read whole leaves the connection's framing unknown: close it.
            let close = close || !progress.body_taken;
            out.clear();
            local(out, status, &message, close);
            if io.write_all(out).await.is_err() || close {
                return Next::Close;
            }
            Next::KeepAlive
        }
    }
}

/// A response of the gateway's own, as `proxy::local` makes it.
fn local(out: &mut Vec<u8>, status: StatusCode, message: &str, close: bool) {
    let body_len = "revisor gateway: ".len() + message.len() + 1;
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {body_len}\r\ndate: ",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    date(out);
    out.extend_from_slice(b"\r\n");
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    let _ = write!(out, "\r\nrevisor gateway: {message}\n");
}

/// Appends the current time as an HTTP date, formatted at most once a second per thread.
fn date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs || c.1.is_empty() {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(c.1.as_bytes());
    });
}

/// How the upstream's response body is framed.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the upstream closes: re-framed as chunked for the client.
    Close,
}

/// Sends the request upstream (retrying what is safe to retry), then relays the response. `Ok` says
/// whether the client connection can take another request.
#[allow(clippy::too_many_arguments)]
async fn exchange<IO>(
    plan: &Plan,
    io: &mut IO,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    ubuf: &mut BytesMut,
    pool: &Pool,
    acct: &mut Accounting,
    progress: &mut Progress,
    half_close: bool,
    shutdown: &Option<watch::Receiver<bool>>,
) -> Result<bool, Failure>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let target = &plan.target;
    let rev = &target.name;
    // The body, whole, sent in the same write as the head.
    while buf.len() < plan.body_len {
        buf.reserve(plan.body_len - buf.len());
        match io.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(Failure::ClientGone),
            Ok(_) => {}
        }
    }
    out.extend_from_slice(&buf[..plan.body_len]);
    buf.advance(plan.body_len);
    progress.body_taken = true;
    if let Err(msg) = crate::proxy::pass_breaker(target, acct).await {
        return Err(Failure::Local(StatusCode::SERVICE_UNAVAILABLE, msg));
    }
    let mut skip = None;
    let mut fresh = false;
    let (mut up, addr) = loop {
        let Some(ep) = pick(&target.endpoints, target.breaker.is_some(), skip) else {
            acct.outcome = Ok(502);
            let msg = format!("revision {rev:?}: no replica could be reached");
            return Err(Failure::Local(StatusCode::BAD_GATEWAY, msg));
        };
        acct.in_flight = Some(ep.acquire());
        let pooled = if fresh { None } else { pool.checkout(ep.addr) };
        let reused = pooled.is_some();
        let mut up = match pooled {
            Some(s) => s,
            None => match connect(ep.addr).await {
                Ok(s) => s,
                Err(e) => {
                    // Nothing reached the replica: another one may take it.
                    if skip.is_none() && target.endpoints.len() > 1 {
                        tracing::debug!(revision = %rev, replica = %ep.addr, "retrying on another replica: {e}");
                        skip = Some(ep.addr);
                        fresh = false;
                        continue;
                    }
                    acct.outcome = Ok(502);
                    let msg = format!("revision {rev:?}, replica {}: connecting: {e}", ep.addr);
                    return Err(Failure::Local(StatusCode::BAD_GATEWAY, msg));
                }
            },
        };
        ubuf.clear();
        match send(&mut up, out, ubuf, io, buf, half_close).await {
            Ok(()) => break (up, ep.addr),
            Err(SendError::ClientGone) => return Err(Failure::ClientGone),
            Err(SendError::Upstream(e, answered)) => {
                // A connection the replica closed while it idled: once more on a new one, when
                // nothing of an answer came and the request is safe to send twice.
                if reused && !answered && plan.safe && !fresh {
                    fresh = true;
                    continue;
                }
                if !answered && plan.safe && plan.body_len == 0 && skip.is_none() && target.endpoints.len() > 1 {
                    tracing::debug!(revision = %rev, replica = %ep.addr, "retrying on another replica: {e}");
                    skip = Some(ep.addr);
                    fresh = false;
                    continue;
                }
                acct.outcome = Ok(502);
                let msg = format!("revision {rev:?}, replica {}: {e}", ep.addr);
                return Err(Failure::Local(StatusCode::BAD_GATEWAY, msg));
            }
        }
    };
    // `ubuf` starts with a whole response head (1xx answers already skipped).
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = resp.parse(ubuf) else {
        unreachable!("send returns with a whole response head");
    };
    let status = resp.code.unwrap_or(502);
    let mut framing = None;
    let mut upstream_close = resp.version != Some(1);
    let mut has_date = false;
    let mut length = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = text(h.value).and_then(|v| v.rsplit(',').next()).map(str::trim);
            framing = Some(if last.is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
                Framing::Chunked
            } else {
                Framing::Close
            });
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = text(h.value).and_then(|v| v.trim().parse::<u64>().ok());
            match (n, length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => {
                    acct.outcome = Ok(502);
                    let msg = format!("revision {rev:?}, replica {addr}: the response's content-length is invalid");
                    return Err(Failure::Local(StatusCode::BAD_GATEWAY, msg));
                }
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in text(h.value).unwrap_or("").split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    upstream_close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && resp.version == Some(0) {
                    upstream_close = false;
                }
            }
        } else if h.name.eq_ignore_ascii_case("date") {
            has_date = true;
        }
    }
    let framing = if plan.head || status == 204 || status == 304 {
        Framing::None
    } else {
        framing.unwrap_or(match length {
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        })
    };
    acct.outcome = Ok(status);
    // The client's response head.
    out.clear();
    let _ = write!(out, "HTTP/1.1 {status} ");
    match resp.reason {
        Some(r) if !r.is_empty() => out.extend_from_slice(r.as_bytes()),
        _ => out.extend_from_slice(
            StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("")
                .as_bytes(),
        ),
    }
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        if hop_by_hop(h.name, false) || (framing == Framing::Chunked && h.name.eq_ignore_ascii_case("content-length")) {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if matches!(framing, Framing::Chunked | Framing::Close) {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        date(out);
        out.extend_from_slice(b"\r\n");
    }
    let close = plan.close || stopping(shutdown);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    ubuf.advance(head_len);
    progress.sent_head = true;
    relay_body(framing, &mut up, io, out, ubuf).await?;
    if !upstream_close && framing != Framing::Close && ubuf.is_empty() {
        pool.checkin(addr, up);
    }
    Ok(!close)
}

enum SendError {
    /// The upstream failed; `bool` says whether any of its answer arrived.
    Upstream(String, bool),
    ClientGone,
}

/// Writes the request (head and body, in `out`) and reads until `ubuf` starts with a final response
/// head. While it waits, the client's connection is watched: bytes it sends (a pipelined request)
/// are kept in `buf`, and its end (unless `half_close`) abandons the request.
async fn send<IO>(
    up: &mut TcpStream,
    out: &[u8],
    ubuf: &mut BytesMut,
    io: &mut IO,
    buf: &mut BytesMut,
    half_close: bool,
) -> Result<(), SendError>
where
    IO: AsyncRead + Unpin,
{
    if let Err(e) = up.write_all(out).await {
        return Err(SendError::Upstream(format!("sending the request: {e}"), false));
    }
    loop {
        if !ubuf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(ubuf) {
                Ok(httparse::Status::Complete(n)) => match resp.code {
                    Some(101) => {
                        return Err(SendError::Upstream(
                            "the replica switched protocols unasked".into(),
                            true,
                        ))
                    }
                    Some(c) if (100..200).contains(&c) => {
                        ubuf.advance(n);
                        continue;
                    }
                    _ => return Ok(()),
                },
                Ok(httparse::Status::Partial) if ubuf.len() <= MAX_RESPONSE_HEAD => {}
                Ok(httparse::Status::Partial) => {
                    return Err(SendError::Upstream("the response head is too large".into(), true))
                }
                Err(e) => return Err(SendError::Upstream(format!("invalid response: {e}"), true)),
            }
        }
        if ubuf.capacity() - ubuf.len() < 4096 {
            ubuf.reserve(32 * 1024);
        }
        let answered = !ubuf.is_empty();
        let watch = !half_close && buf.len() < 64 * 1024;
        if watch && buf.capacity() - buf.len() < 1024 {
            buf.reserve(8192);
        }
        tokio::select! {
            biased;
            r = up.read_buf(ubuf) => match r {
                Ok(0) => return Err(SendError::Upstream("the connection closed before the response".into(), answered)),
                Ok(_) => {}
                Err(e) => return Err(SendError::Upstream(format!("reading the response: {e}"), answered)),
            },
            r = io.read_buf(buf), if watch => match r {
                Ok(0) | Err(_) => return Err(SendError::ClientGone),
                Ok(_) => {}
            },
        }
    }
}

/// Relays the response: the head in `out`, then the body as `framing` says, starting with what is
/// already in `ubuf`. Leaves in `ubuf` only bytes past the response's end.
async fn relay_body<IO>(
    framing: Framing,
    up: &mut TcpStream,
    io: &mut IO,
    out: &mut Vec<u8>,
    ubuf: &mut BytesMut,
) -> Result<(), Failure>
where
    IO: AsyncWrite + Unpin,
{
    match framing {
        Framing::None => io.write_all(out).await.map_err(|_| Failure::ClientGone),
        Framing::Length(n) => {
            let mut left = n;
            let first = (left as usize).min(ubuf.len());
            out.extend_from_slice(&ubuf[..first]);
            ubuf.advance(first);
            left -= first as u64;
            io.write_all(out).await.map_err(|_| Failure::ClientGone)?;
            while left > 0 {
                ubuf.clear();
                ubuf.reserve(64 * 1024);
                match up.read_buf(ubuf).await {
                    Ok(0) | Err(_) => return Err(Failure::Abort),
                    Ok(_) => {}
                }
                let take = (left as usize).min(ubuf.len());
                io.write_all(&ubuf[..take]).await.map_err(|_| Failure::ClientGone)?;
                ubuf.advance(take);
                left -= take as u64;
            }
            Ok(())
        }
        Framing::Chunked => {
            let mut chunks = Chunks::default();
            let mut first = true;
            loop {
                let (take, done) = match chunks.feed(ubuf) {
                    Ok(Some(n)) => (n, true),
                    Ok(None) => (ubuf.len(), false),
                    Err(()) => return Err(Failure::Abort),
                };
                if first {
                    out.extend_from_slice(&ubuf[..take]);
                    io.write_all(out).await.map_err(|_| Failure::ClientGone)?;
                    first = false;
                } else if take > 0 {
                    io.write_all(&ubuf[..take]).await.map_err(|_| Failure::ClientGone)?;
                }
                ubuf.advance(take);
                if done {
                    return Ok(());
                }
                ubuf.clear();
                ubuf.reserve(64 * 1024);
                match up.read_buf(ubuf).await {
                    Ok(0) | Err(_) => return Err(Failure::Abort),
                    Ok(_) => {}
                }
            }
        }
        Framing::Close => {
            // Each piece becomes a chunk; the upstream's end, the last chunk.
            if !ubuf.is_empty() {
                chunk(out, ubuf);
            }
            ubuf.clear();
            io.write_all(out).await.map_err(|_| Failure::ClientGone)?;
            loop {
                ubuf.reserve(64 * 1024);
                match up.read_buf(ubuf).await {
                    Ok(0) => break,
                    Err(_) => return Err(Failure::Abort),
                    Ok(_) => {}
                }
                out.clear();
                chunk(out, ubuf);
                ubuf.clear();
                io.write_all(out).await.map_err(|_| Failure::ClientGone)?;
            }
            io.write_all(b"0\r\n\r\n").await.map_err(|_| Failure::ClientGone)
        }
    }
}

fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Follows a chunked body's framing (RFC 9112 7.1) as it streams by, to find where it ends.
#[derive(Default, Debug)]
struct Chunks {
    state: ChunkState,
    size: u64,
}

#[derive(Default, Debug, Clone, Copy, PartialEq)]
enum ChunkState {
    #[default]
    Size,
    /// A chunk extension, up to the line's end.
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// The start of a trailer line (or of the final empty line).
    Trailer,
    TrailerLine,
    EndLf,
}

impl Chunks {
    /// Takes in `data`; says where the body ends in it, if it does. Malformed framing is an error.
    fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, ()> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).unwrap() as u64;
                        self.size = self.size.checked_mul(16).and_then(|s| s.checked_add(d)).ok_or(())?;
                    }
                    b';' | b' ' | b'\t' => self.state = ChunkState::Extension,
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => self.size_line_ended(),
                    _ => return Err(()),
                },
                ChunkState::Extension => {
                    if b == b'\n' {
                        self.size_line_ended();
                    }
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.size_line_ended();
                }
                ChunkState::Data => {
                    let n = (self.size as usize).min(data.len() - i);
                    self.size -= n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::DataCr => match b {
                    b'\r' => self.state = ChunkState::DataLf,
                    b'\n' => self.state = ChunkState::Size,
                    _ => return Err(()),
                },
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailer => match b {
                    b'\r' => self.state = ChunkState::EndLf,
                    b'\n' => return Ok(Some(i + 1)),
                    _ => self.state = ChunkState::TrailerLine,
                },
                ChunkState::TrailerLine => {
                    if b == b'\n' {
                        self.state = ChunkState::Trailer;
                    }
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    return Ok(Some(i + 1));
                }
            }
            i += 1;
        }
        Ok(None)
    }

    fn size_line_ended(&mut self) {
        self.state = if self.size == 0 {
            ChunkState::Trailer
        } else {
            ChunkState::Data
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(input: &[u8]) -> Result<Option<usize>, ()> {
        Chunks::default().feed(input)
    }

    #[test]
    fn chunked_framing_finds_the_end_byte_by_byte_and_whole() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        assert_eq!(ends(body), Ok(Some(end)));
        let mut c = Chunks::default();
        for (i, b) in body.iter().enumerate() {
            match c.feed(std::slice::from_ref(b)).unwrap() {
                Some(1) => {
                    assert_eq!(i + 1, end);
                    return;
                }
                Some(n) => panic!("ended at {n} of a one-byte feed"),
                None => {}
            }
        }
        panic!("no end found byte by byte");
    }

    #[test]
    fn chunked_framing_rejects_what_is_not_chunked() {
        assert_eq!(ends(b"zz\r\n"), Err(()));
        assert_eq!(ends(b"5\r\nhelloX"), Err(()));
        assert_eq!(ends(b"ffffffffffffffffff\r\n"), Err(()));
        assert_eq!(ends(b"0\r\n\r"), Ok(None));
        assert_eq!(ends(b"0\r\n\r\n"), Ok(Some(5)));
    }
}
