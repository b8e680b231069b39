//! The request path: match the host (and tag), pick a revision by weight, a replica by load, pass the
//! breaker, and stream the request through, retrying only what is safe to retry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{PathAndQuery, Scheme};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};

use crate::body::{Accounting, BodySlot, GatewayBody, ResponseBody, Tee};
use crate::endpoint::{pick, Endpoint};
use crate::metrics::NotCounted;
use crate::routes::{HostRoute, Matcher, Protocol, RevisionTarget, RouteTable};
use crate::Inner;

/// The header that selects a tag, as in Knative.
pub const TAG_HEADER: &str = "knative-serving-tag";

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

pub(crate) const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// The client at the other end of a connection, as each of its requests needs it: its IP as a
/// header value (for `X-Forwarded-For`), made once per connection.
#[derive(Clone)]
pub struct Peer {
    ip: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Peer {
        let ip = HeaderValue::from_maybe_shared(Bytes::from(addr.ip().to_string()))
            .expect("an IP address is a valid header value");
        Peer { ip }
    }

    /// The client's IP, as text.
    pub fn ip(&self) -> &[u8] {
        self.ip.as_bytes()
    }
}

pub fn local(status: StatusCode, message: String) -> Response<GatewayBody> {
    let mut resp = Response::new(GatewayBody::Local(Full::new(Bytes::from(format!(
        "revisor gateway: {message}\n"
    )))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn host_of(req: &Request<Incoming>) -> Option<&str> {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())?;
    Some(without_port(raw))
}

/// A Host value without its port, keeping IPv6 literals whole.
pub(crate) fn without_port(raw: &str) -> &str {
    match raw.rfind(':') {
        Some(i) if !raw[i..].contains(']') => &raw[..i],
        _ => raw,
    }
}

pub async fn handle(inner: Arc<Inner>, req: Request<Incoming>, peer: Peer) -> Response<GatewayBody> {
    // RFC 9112 3.2: a request with more than one Host header is answered 400 (which one routes would
    // otherwise be up to whoever reads it).
    if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
        return local(
            StatusCode::BAD_REQUEST,
            "the request has more than one Host header".into(),
        );
    }
    let Some(host) = host_of(&req) else {
        return local(StatusCode::BAD_REQUEST, "the request has no Host header".into());
    };
    let host = host.to_ascii_lowercase();
    let tag = req
        .headers()
        .get(TAG_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let table = inner.routes.load_full();
    let picked = resolve(&table, &host, tag.as_deref(), &has_header(req.headers()));
    match picked {
        Ok((target, mirror)) => proxy(&inner, target, mirror, req, &peer, (&host, tag.as_deref())).await,
        Err(resp) => *resp,
    }
}

/// Where a request was addressed: its host and its tag header (its headers, for header routes, are
/// the request's own).
type RouteKey<'a> = (&'a str, Option<&'a str>);

/// A response the gateway gives itself instead of proxying.
type Refusal = Box<Response<GatewayBody>>;

/// Whether a request's headers hold one that a header route's matcher accepts.
pub(crate) type HasHeader<'a> = dyn Fn(&HeaderName, &Matcher) -> bool + 'a;

fn has_header(headers: &HeaderMap) -> impl Fn(&HeaderName, &Matcher) -> bool + '_ {
    move |name, m| {
        headers
            .get_all(name)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| m.matches(v)))
    }
}

/// The revision a request goes to: by host (a tag's own host, or the service's, where the tag header
/// can select a tag), then by header route, then by weight; and the revision a copy goes to, when
/// the request is one of those mirrored.
pub(crate) fn resolve(
    table: &RouteTable,
    host: &str,
    tag: Option<&str>,
    has: &HasHeader<'_>,
) -> Result<(Arc<RevisionTarget>, Option<Arc<RevisionTarget>>), Refusal> {
    match table.hosts.get(host) {
        None => Err(Box::new(local(
            StatusCode::NOT_FOUND,
            format!("no service for host {host:?}"),
        ))),
        Some(HostRoute::Tag(t)) => Ok((t.clone(), None)),
        Some(HostRoute::Split(route)) => {
            let by_tag = tag.and_then(|t| route.tags.get(t));
            let by_header = || {
                route
                    .header_routes
                    .iter()
                    .find(|h| h.matches.iter().all(|(name, m)| has(name, m)))
                    .map(|h| &h.target)
            };
            match by_tag.or_else(by_header).or_else(|| route.pick()) {
                Some(t) => {
                    let mirror = route
                        .mirror
                        .as_ref()
                        .filter(|m| by_tag.is_none() && m.from == t.name && fastrand::u32(0..100) < m.percent);
                    Ok((t.clone(), mirror.map(|m| m.to.clone())))
                }
                None => Err(Box::new(local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("service {:?} has no traffic targets", route.name),
                ))),
            }
        }
    }
}

/// The activator's part: holds a request for a revision without ready replicas, tells the
/// autoscaler, and waits (within the request's deadline) for a route table that gives the revision
/// replicas. If the revision leaves the routes meanwhile, the request is routed afresh.
async fn activate(
    inner: &Inner,
    mut target: Arc<RevisionTarget>,
    route: RouteKey<'_>,
    headers: &HeaderMap,
    deadline: &mut std::pin::Pin<Box<tokio::time::Sleep>>,
) -> Result<Arc<RevisionTarget>, Refusal> {
    let Some(_held) = target.activation.enter(inner.config.activation_queue_depth) else {
        let msg = format!(
            "revision {:?} has no ready replica and {} requests already wait for one",
            target.name, inner.config.activation_queue_depth
        );
        return Err(Box::new(local(StatusCode::SERVICE_UNAVAILABLE, msg)));
    };
    let mut published = inner.published.subscribe();
    loop {
        // Look again after subscribing, so a table published in between is not missed.
        let table = inner.routes.load_full();
        target = match table.revisions.get(&(target.namespace.clone(), target.name.clone())) {
            Some(t) => t.clone(),
            None => resolve(&table, route.0, route.1, &has_header(headers))?.0,
        };
        if !target.endpoints.is_empty() {
            return Ok(target);
        }
        inner.poke(&target.namespace, &target.name, target.activation.held().max(1));
        tokio::select! {
            biased;
            changed = published.changed() => if changed.is_err() {
                return Err(Box::new(local(StatusCode::SERVICE_UNAVAILABLE, "the gateway is shutting down".into())));
            },
            _ = deadline.as_mut() => {
                let msg = format!("revision {:?} got no ready replica within its timeout", target.name);
                return Err(Box::new(local(StatusCode::GATEWAY_TIMEOUT, msg)));
            }
        }
    }
}

fn too_large(inner: &Inner, req: &Request<Incoming>) -> bool {
    let limit = inner.config.max_body_bytes;
    limit > 0
        && req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > limit)
}

/// Mirrored requests are read whole first (to be sent twice); larger ones are not mirrored.
const MIRROR_BODY_LIMIT: u64 = 1 << 20;
/// Answers larger than this are not compared.
const COMPARE_LIMIT: usize = 4 << 20;

async fn proxy(
    inner: &Inner,
    target: Arc<RevisionTarget>,
    mirror: Option<Arc<RevisionTarget>>,
    req: Request<Incoming>,
    peer: &Peer,
    route: RouteKey<'_>,
) -> Response<GatewayBody> {
    if too_large(inner, &req) {
        let limit = inner.config.max_body_bytes;
        return local(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {limit} bytes"),
        );
    }
    let started = Instant::now();
    let mut acct = Accounting::start(&target.metrics, started);
    // One timer per request: it bounds the wait for a replica, for the response head, then the body.
    let mut deadline = Box::pin(tokio::time::sleep_until((started + target.timeout).into()));
    let target = if target.endpoints.is_empty() {
        match activate(inner, target, route, req.headers(), &mut deadline).await {
            Ok(t) => t,
            Err(resp) => {
                acct.outcome = match resp.status() {
                    // The gateway is shutting down: not the revision's answer.
                    StatusCode::SERVICE_UNAVAILABLE => Err(NotCounted::Shed),
                    status => Ok(status.as_u16()),
                };
                return *resp;
            }
        }
    } else {
        target
    };
    let rev = &target.name;
    if let Err(msg) = pass_breaker(&target, &mut acct).await {
        return local(StatusCode::SERVICE_UNAVAILABLE, msg);
    }
    let (mut parts, body) = req.into_parts();
    let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mirror =
        mirror.filter(|_| hyper::body::Body::is_end_stream(&body) || declared.is_some_and(|n| n <= MIRROR_BODY_LIMIT));
    let mut tee = None;
    let slot = match mirror {
        None => BodySlot::new(body, inner.config.max_body_bytes),
        Some(to) => {
            let bytes = match http_body_util::Limited::new(body, MIRROR_BODY_LIMIT as usize)
                .collect()
                .await
            {
                Ok(c) => c.to_bytes(),
                Err(e) => {
                    acct.outcome = Err(NotCounted::BadRequest);
                    return local(StatusCode::BAD_REQUEST, format!("reading the request body: {e}"));
                }
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            tee = Some(Tee::new(COMPARE_LIMIT, tx));
            spawn_mirror(&parts, bytes.clone(), to, rx);
            BodySlot::Buffered(bytes)
        }
    };
    let mut skip = None;
    loop {
        let Some(ep) = pick(&target.endpoints, target.breaker.is_some(), skip) else {
            acct.outcome = Ok(502);
            return local(
                StatusCode::BAD_GATEWAY,
                format!("revision {rev:?}: no replica could be reached"),
            );
        };
        acct.in_flight = Some(ep.acquire());
        // Headers are copied only when a retry could need them again.
        let headers = if target.endpoints.len() > 1 {
            parts.headers.clone()
        } else {
            std::mem::take(&mut parts.headers)
        };
        let upstream = upstream_request(&parts, headers, &slot, ep, &target, peer);

        let result = tokio::select! {
            biased;
            r = crate::with_client(target.protocol, |c| c.request(upstream)) => Some(r),
            _ = deadline.as_mut() => None,
        };
        match result {
            None => {
                acct.outcome = Ok(504);
                let msg = format!("revision {rev:?} did not answer within {:?}", target.timeout);
                return local(StatusCode::GATEWAY_TIMEOUT, msg);
            }
            Some(Ok(resp)) => return respond(resp, deadline, acct, tee),
            Some(Err(e)) => {
                // Retry once, elsewhere, only what cannot have reached the application twice: a failed
                // connect, or a safe method whose body was never sent and that got no response.
                let retryable = (e.is_connect() || safe) && !slot.was_polled();
                if retryable && skip.is_none() && target.endpoints.len() > 1 {
                    tracing::debug!(revision = %rev, replica = %ep.addr, "retrying on another replica: {e}");
                    skip = Some(ep.addr);
                    continue;
                }
                if slot.client_failed() {
                    // The client's body broke (malformed chunking, too large): a bad request, not
                    // the replica's failure.
                    acct.outcome = Err(NotCounted::BadRequest);
                    let msg = format!("reading the request body: {}", error_chain(&e));
                    return local(StatusCode::BAD_REQUEST, msg);
                }
                acct.outcome = Ok(502);
                let msg = format!("revision {rev:?}, replica {}: {}", ep.addr, error_chain(&e));
                return local(StatusCode::BAD_GATEWAY, msg);
            }
        }
    }
}

/// Waits for the revision's breaker to let the request through (holding its slot in `acct`); a full
/// queue sheds the request, and the error is what to answer with a 503.
pub(crate) async fn pass_breaker(target: &RevisionTarget, acct: &mut Accounting) -> Result<(), String> {
    if let Some(b) = &target.breaker {
        match b.enter().await {
            Ok(p) => acct.permit = Some(p),
            Err(_) => {
                acct.outcome = Err(NotCounted::Shed);
                return Err(format!(
                    "revision {:?} is at capacity and its queue is full",
                    target.name
                ));
            }
        }
    }
    Ok(())
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn upstream_request(
    parts: &hyper::http::request::Parts,
    mut headers: HeaderMap,
    slot: &BodySlot,
    ep: &Endpoint,
    target: &RevisionTarget,
    peer: &Peer,
) -> Request<crate::body::RequestBody> {
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(ep.authority.clone())
        .path_and_query(pq)
        .build()
        .expect("valid uri");
    strip_hop_by_hop(&mut headers);
    if target.protocol == Protocol::H2c {
        headers.remove(header::HOST);
    }
    // The connection's IP as it is (no allocation), or appended to what the client sent.
    let xff = match headers.get(X_FORWARDED_FOR).map(|v| v.as_bytes()) {
        Some(prev) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + peer.ip.len());
            v.extend_from_slice(prev);
            v.extend_from_slice(b", ");
            v.extend_from_slice(peer.ip.as_bytes());
            HeaderValue::from_maybe_shared(Bytes::from(v)).ok()
        }
        None => Some(peer.ip.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    let mut req = Request::new(slot.body());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = match target.protocol {
        Protocol::Http1 => Version::HTTP_11,
        Protocol::H2c => Version::HTTP_2,
    };
    *req.headers_mut() = headers;
    req
}

/// Removes hop-by-hop headers (and those the Connection header names).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| {
            v.split(',')
                .filter_map(|s| HeaderName::from_bytes(s.trim().as_bytes()).ok())
        })
        .collect();
    for h in HOP_BY_HOP
        .iter()
        .chain(named.iter())
        .chain(std::iter::once(&header::UPGRADE))
    {
        headers.remove(h);
    }
}

fn respond(
    resp: Response<Incoming>,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    mut acct: Accounting,
    tee: Option<Tee>,
) -> Response<GatewayBody> {
    acct.outcome = Ok(resp.status().as_u16());
    // Only a successful answer is compared with the mirror's.
    let tee = tee.filter(|_| resp.status().is_success());
    let (mut parts, body) = resp.into_parts();
    for h in &HOP_BY_HOP {
        parts.headers.remove(h);
    }
    Response::from_parts(
        parts,
        GatewayBody::Proxied(ResponseBody::new(body, deadline, acct).with_tee(tee)),
    )
}

/// Sends a copy of a request to the mirror target, measures it under the tag `mirror`, discards its
/// answer, and compares it with the primary's (when both are Open Inference Protocol answers).
fn spawn_mirror(
    parts: &hyper::http::request::Parts,
    body: Bytes,
    to: Arc<RevisionTarget>,
    primary: tokio::sync::oneshot::Receiver<Bytes>,
) {
    let Some(ep) = pick(&to.endpoints, false, None).cloned() else {
        return; // no replica: a copy is never held or queued
    };
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers);
    if to.protocol == Protocol::H2c {
        headers.remove(header::HOST);
    }
    let method = parts.method.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        to.metrics.start(started);
        let _in_flight = ep.acquire();
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(ep.authority.clone())
            .path_and_query(pq)
            .build()
            .expect("valid uri");
        let mut req = Request::new(crate::body::RequestBody::Full(Some(body)));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = match to.protocol {
            Protocol::Http1 => Version::HTTP_11,
            Protocol::H2c => Version::HTTP_2,
        };
        *req.headers_mut() = headers;
        let answer = tokio::time::timeout(to.timeout, async {
            let resp = crate::with_client(to.protocol, |c| c.request(req))
                .await
                .map_err(|_| 502u16)?;
            let status = resp.status().as_u16();
            let bytes = http_body_util::Limited::new(resp.into_body(), COMPARE_LIMIT)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .ok();
            Ok::<_, u16>((status, bytes))
        })
        .await;
        let (status, mine) = match answer {
            Ok(Ok((status, bytes))) => (status, bytes.filter(|_| (200..300).contains(&status))),
            Ok(Err(code)) => (code, None),
            Err(_) => (504, None),
        };
        to.metrics.finish(status, started, started.elapsed());
        if let Some(mine) = mine {
            if let Ok(Ok(theirs)) = tokio::time::timeout(to.timeout, primary).await {
                if let Some(c) = crate::compare::compare(&theirs, &mine) {
                    to.metrics.record_comparison(c);
                }
            }
        }
    });
}
