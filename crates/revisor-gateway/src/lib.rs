//! The data plane: a reverse proxy that routes by host (and tag) to revisions split by weight, picks
//! replicas by load, enforces Knative's breaker and timeouts, streams bodies both ways, retries only
//! what is safe, and records per-revision metrics without locks.
//!
//! Routing state is an immutable [`RouteTable`] swapped atomically by [`Gateway::publish`]; a request
//! finishes on the table it started with, so publishing never disturbs requests in flight.

mod body;
pub mod compare;
mod endpoint;
mod h1;
mod metrics;
mod proxy;
mod routes;

pub use endpoint::{Breaker, Endpoint};
pub use metrics::{
    sample, Labels, MetricsCollector, MetricsSnapshot, NotCounted, RevisionMetrics, DIFF_BUCKETS, LATENCY_BUCKETS_MS,
    NOT_COUNTED_REASONS,
};
pub use proxy::TAG_HEADER;
pub use routes::{
    HeaderMatchSpec, HeaderRouteSpec, MatchSpec, MirrorSpec, Protocol, RevisionSpec, RoutesSpec, ServiceSpec,
    TargetSpec,
};

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::body::RequestBody;
use crate::routes::{Activation, HeaderRoute, HostRoute, Matcher, Mirror, RevisionTarget, RouteTable, ServiceRoute};

/// Limits of the gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// Largest request head (request line and headers) accepted.
    pub max_header_bytes: usize,
    /// Largest request body accepted; 0 is no limit.
    pub max_body_bytes: u64,
    /// Requests held per revision while it has no ready replica (scaled to zero, starting); beyond
    /// this a request is refused with 503.
    pub activation_queue_depth: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_header_bytes: 64 * 1024,
            max_body_bytes: 64 * 1024 * 1024,
            activation_queue_depth: 1000,
        }
    }
}

pub(crate) type HttpClient = Client<HttpConnector, RequestBody>;

thread_local! {
    /// Upstream connection pools, one pair per thread: a request and its pooled connections stay on
    /// the thread (and runtime) that serves it, so no request hops threads on its way through.
    static CLIENTS: (HttpClient, HttpClient) = (client(false), client(true));
}

/// Runs `f` with this thread's client for `protocol`.
pub(crate) fn with_client<R>(protocol: Protocol, f: impl FnOnce(&HttpClient) -> R) -> R {
    CLIENTS.with(|(http1, h2c)| match protocol {
        Protocol::Http1 => f(http1),
        Protocol::H2c => f(h2c),
    })
}

/// Called when a request waits for a revision without ready replicas: (namespace, revision, requests
/// held). It must return quickly; the gateway calls it from its request path.
pub type ActivateFn = Arc<dyn Fn(&str, &str, usize) + Send + Sync>;

pub(crate) struct Inner {
    pub(crate) routes: ArcSwap<RouteTable>,
    registry: Mutex<Registry>,
    pub(crate) config: GatewayConfig,
    /// Bumped on every publish, so held requests can wait for a new table.
    pub(crate) published: watch::Sender<u64>,
    pub(crate) activator: OnceLock<ActivateFn>,
    /// Connections the gateway's own HTTP/1 path handed to hyper.
    pub(crate) handed_off: std::sync::atomic::AtomicU64,
    /// Each worker thread's open client connections, once [`Gateway::spawn_workers`] started them.
    workers: OnceLock<Arc<[AtomicUsize]>>,
}

impl Inner {
    /// Tells the autoscaler that requests are waiting for a revision.
    pub(crate) fn poke(&self, namespace: &str, revision: &str, held: usize) {
        if let Some(f) = self.activator.get() {
            f(namespace, revision, held);
        }
    }
}

/// Objects that outlive route snapshots: replicas (with their in-flight counts) and metrics.
#[derive(Default)]
struct Registry {
    endpoints: HashMap<SocketAddr, Arc<Endpoint>>,
    metrics: BTreeMap<Labels, Arc<RevisionMetrics>>,
    /// One breaker per revision, shared by its tag and split routes, kept while its capacity holds.
    breakers: HashMap<(String, String), Arc<Breaker>>,
    activations: HashMap<(String, String), Arc<Activation>>,
}

/// The gateway. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

/// An upstream client with the gateway's settings (no Nagle, a 2 s connect timeout, idle connections
/// kept 60 s without a cap), over any request body; `examples/bare_proxy.rs` uses it too, so the bench's
/// reference relay has exactly the gateway's client.
pub fn client<B>(http2_only: bool) -> Client<HttpConnector, B>
where
    B: hyper::body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(usize::MAX)
        .http2_only(http2_only)
        .build(connector)
}

impl Gateway {
    pub fn new(config: GatewayConfig) -> Gateway {
        Gateway {
            inner: Arc::new(Inner {
                routes: ArcSwap::from_pointee(RouteTable::default()),
                registry: Mutex::new(Registry::default()),
                config,
                published: watch::channel(0).0,
                activator: OnceLock::new(),
                handed_off: Default::default(),
                workers: OnceLock::new(),
            }),
        }
    }

    /// Builds a new route table from `spec` and swaps it in atomically.
    pub fn publish(&self, spec: &RoutesSpec) {
        let mut reg = self.inner.registry.lock().unwrap();
        let table = build(&mut reg, spec);
        self.inner.routes.store(Arc::new(table));
        self.inner.published.send_modify(|n| *n += 1);
        // Forget replicas that neither the new table nor any request in flight refers to.
        reg.endpoints.retain(|_, e| Arc::strong_count(e) > 1);
        reg.breakers.retain(|_, b| Arc::strong_count(b) > 1);
        reg.activations.retain(|_, a| Arc::strong_count(a) > 1);
    }

    /// Sets what to call when a request waits for a revision that has no ready replica (the
    /// autoscaler's poke). Only the first call has an effect.
    pub fn set_activator(&self, f: ActivateFn) {
        let _ = self.inner.activator.set(f);
    }

    /// Requests held now, waiting for a replica of the revision.
    pub fn held(&self, namespace: &str, revision: &str) -> usize {
        self.inner
            .registry
            .lock()
            .unwrap()
            .activations
            .get(&(namespace.to_string(), revision.to_string()))
            .map(|a| a.held())
            .unwrap_or(0)
    }

    /// Requests in flight to a replica, across every route snapshot still in use.
    pub fn in_flight(&self, addr: SocketAddr) -> usize {
        self.inner
            .registry
            .lock()
            .unwrap()
            .endpoints
            .get(&addr)
            .map(|e| e.in_flight())
            .unwrap_or(0)
    }

    /// Connections handed from the gateway's own HTTP/1 path to hyper, at the first request that path
    /// does not take (see the `h1` module).
    pub fn handed_off(&self) -> u64 {
        self.inner.handed_off.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A prometheus-client collector of every revision's counters, read at each scrape.
    pub fn metrics_collector(&self) -> MetricsCollector {
        let gateway = self.clone();
        MetricsCollector::new(move || gateway.metrics())
    }

    /// Calls `f` with each route's labels and its [`RevisionMetrics::load`]: what the autoscaler
    /// samples every second, without a copy of every counter. `f` runs under the registry's lock: it
    /// must not call the gateway.
    pub fn for_each_load(&self, mut f: impl FnMut(&Labels, f64, u64)) {
        let reg = self.inner.registry.lock().unwrap();
        for (labels, m) in &reg.metrics {
            let (busy, requests) = m.load();
            f(labels, busy, requests);
        }
    }

    /// Every revision's counters.
    pub fn metrics(&self) -> Vec<MetricsSnapshot> {
        self.inner
            .registry
            .lock()
            .unwrap()
            .metrics
            .values()
            .map(|m| m.snapshot())
            .collect()
    }

    /// Serves on `workers` threads, each with its own single-threaded runtime and upstream pools (the
    /// shape of HAProxy's `nbthread`): a request never changes thread. Connections are spread evenly:
    /// the thread that accepts one keeps it when no other thread has fewer open connections, and
    /// otherwise hands it to the one with fewest (the kernel alone wakes whichever thread it likes,
    /// and left one thread with most of the connections). Each thread stops when `shutdown` turns true.
    pub fn spawn_workers(
        &self,
        listener: std::net::TcpListener,
        workers: usize,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
        listener.set_nonblocking(true)?;
        let workers = workers.max(1);
        let live: Arc<[AtomicUsize]> = (0..workers).map(|_| AtomicUsize::new(0)).collect();
        let stopped: Arc<[AtomicBool]> = (0..workers).map(|_| AtomicBool::new(false)).collect();
        let _ = self.inner.workers.set(live.clone());
        let (peers, inboxes): (Vec<_>, Vec<_>) = (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let peers: Arc<[Handoff]> = peers.into();
        let mut handles = Vec::new();
        for (me, inbox) in inboxes.into_iter().enumerate() {
            let listener = listener.try_clone()?;
            let (gw, shutdown) = (self.clone(), shutdown.clone());
            let spread = Spread {
                me,
                live: live.clone(),
                stopped: stopped.clone(),
                peers: peers.clone(),
                inbox,
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = std::thread::Builder::new()
                .name(format!("gateway-{me}"))
                .spawn(move || {
                    rt.block_on(async move {
                        match TcpListener::from_std(listener) {
                            Ok(l) => gw.serve_spread(l, shutdown, Some(spread)).await,
                            Err(e) => tracing::error!("gateway worker {me}: {e}"),
                        }
                    })
                })?;
            handles.push(handle);
        }
        Ok(handles)
    }

    /// Open client connections on each worker thread of [`Gateway::spawn_workers`] (empty before it).
    pub fn worker_connections(&self) -> Vec<usize> {
        self.inner
            .workers
            .get()
            .map(|live| live.iter().map(|n| n.load(Ordering::Relaxed)).collect())
            .unwrap_or_default()
    }

    /// Serves one connection on any byte stream, as `serve` does each accepted one (the fuzzer feeds
    /// the gateway's request handling this way, without sockets). With `half_close`, the end of the
    /// client's stream does not cancel the request in progress (the fuzzer ends its input that way;
    /// `serve` does not, since that end is how a client that went away is noticed).
    pub async fn serve_connection<IO>(
        &self,
        io: IO,
        remote: std::net::SocketAddr,
        half_close: bool,
    ) -> Result<(), String>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let pool = Arc::new(h1::Pool::default());
        h1::serve(self.inner.clone(), io, proxy::Peer::new(remote), pool, half_close, None).await
    }

    /// Serves until `shutdown` turns true; connections in progress are finished gracefully (within
    /// 30 s). Each connection starts on the gateway's own HTTP/1 path ([`h1`]), which hands it to
    /// hyper at the first request that path does not take; upstream HTTP/1 connections are pooled
    /// per call (per worker thread under [`Gateway::spawn_workers`]).
    pub async fn serve(&self, listener: TcpListener, shutdown: watch::Receiver<bool>) {
        self.serve_spread(listener, shutdown, None).await
    }

    /// `serve`, as one of several worker threads when `spread` is given: a connection accepted here
    /// goes to the thread with fewest, and connections other threads hand over are served here.
    async fn serve_spread(&self, listener: TcpListener, shutdown: watch::Receiver<bool>, mut spread: Option<Spread>) {
        let pool = Arc::new(h1::Pool::default());
        // One clone per connection: the count says when the last one has finished.
        let live = Arc::new(());
        let mut stop = shutdown.clone();
        loop {
            let (stream, remote) = tokio::select! {
                biased;
                _ = stopped(&mut stop) => break,
                Some((s, remote)) = handed(&mut spread) => match TcpStream::from_std(s) {
                    Ok(stream) => (stream, remote),
                    Err(e) => {
                        if let Some(sp) = &spread {
                            sp.live[sp.me].fetch_sub(1, Ordering::Relaxed);
                        }
                        tracing::warn!("gateway: taking over a connection from {remote}: {e}");
                        continue;
                    }
                },
                r = listener.accept() => match r {
                    Ok((stream, remote)) => match &spread {
                        None => (stream, remote),
                        Some(sp) => match sp.place(stream, remote) {
                            Some(stream) => (stream, remote),
                            None => continue,
                        },
                    },
                    Err(e) => {
                        tracing::warn!("gateway accept: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let (inner, pool, shutdown, live) = (self.inner.clone(), pool.clone(), shutdown.clone(), live.clone());
            let counted = spread.as_ref().map(|sp| Counted(sp.live.clone(), sp.me));
            tokio::spawn(async move {
                let _live = (live, counted);
                if let Err(e) = h1::serve(inner, stream, proxy::Peer::new(remote), pool, false, Some(shutdown)).await {
                    tracing::debug!("gateway connection from {remote}: {e}");
                }
            });
        }
        drop(listener);
        if let Some(sp) = spread.as_mut() {
            sp.stop();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while Arc::strong_count(&live) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A connection accepted by one worker thread for another.
type Handoff = mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>;

/// One worker thread's part in spreading connections: every thread's open connections, and a way
/// to hand a connection to each.
struct Spread {
    me: usize,
    live: Arc<[AtomicUsize]>,
    /// Threads that no longer take connections (stopping, or gone): never picked.
    stopped: Arc<[AtomicBool]>,
    peers: Arc<[Handoff]>,
    inbox: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
}

impl Spread {
    /// Counts a connection this thread accepted on the thread with fewest, and gives it back to be
    /// served here if that is this thread; otherwise hands it over. When that thread turns out to have
    /// stopped, it is never picked again and the connection is served here.
    fn place(&self, stream: TcpStream, remote: SocketAddr) -> Option<TcpStream> {
        let to = self.fewest();
        if to == self.me {
            self.live[to].fetch_add(1, Ordering::Relaxed);
            return Some(stream);
        }
        let s = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("gateway: handing a connection from {remote} to worker {to}: {e}");
                return None;
            }
        };
        self.live[to].fetch_add(1, Ordering::Relaxed);
        let Err(mpsc::error::SendError((s, _))) = self.peers[to].send((s, remote)) else {
            return None;
        };
        self.live[to].fetch_sub(1, Ordering::Relaxed);
        self.stopped[to].store(true, Ordering::Relaxed);
        match TcpStream::from_std(s) {
            Ok(stream) => {
                self.live[self.me].fetch_add(1, Ordering::Relaxed);
                Some(stream)
            }
            Err(e) => {
                tracing::warn!("gateway: taking back a connection from {remote}: {e}");
                None
            }
        }
    }

    /// Takes no more connections: later hand-overs fail (and their threads keep them), and those
    /// handed over already are closed, as idle connections are at a stop.
    fn stop(&mut self) {
        self.stopped[self.me].store(true, Ordering::Relaxed);
        self.inbox.close();
        while let Ok((s, _)) = self.inbox.try_recv() {
            drop(s);
            self.live[self.me].fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The thread with fewest open connections, this one on a tie.
    fn fewest(&self) -> usize {
        let mut best = (self.live[self.me].load(Ordering::Relaxed), self.me);
        for (i, n) in self.live.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n < best.0 && !self.stopped[i].load(Ordering::Relaxed) {
                best = (n, i);
            }
        }
        best.1
    }
}

/// A connection counted on a worker thread until it ends.
struct Counted(Arc<[AtomicUsize]>, usize);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0[self.1].fetch_sub(1, Ordering::Relaxed);
    }
}

/// The next connection another worker thread handed to this one (never, without spreading).
async fn handed(spread: &mut Option<Spread>) -> Option<(std::net::TcpStream, SocketAddr)> {
    match spread {
        Some(sp) => sp.inbox.recv().await,
        None => std::future::pending().await,
    }
}

/// The connection builder: HTTP/1 and h2c, with the configured header limits.
fn builder(config: &GatewayConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(config.max_header_bytes.max(8192))
        .timer(hyper_util::rt::TokioTimer::new());
    builder.http2().max_header_list_size(config.max_header_bytes as u32);
    builder
}

/// Serves a connection with hyper and [`proxy::handle`]: every request the gateway's own HTTP/1 path
/// does not take, and the rest of its connection. When `shutdown` turns true, the connection finishes
/// what it is doing and closes.
pub(crate) async fn serve_hyper<IO>(
    inner: Arc<Inner>,
    io: IO,
    peer: proxy::Peer,
    half_close: bool,
    mut shutdown: Option<watch::Receiver<bool>>,
) -> Result<(), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = builder(&inner.config);
    builder.http1().half_close(half_close);
    let svc = hyper::service::service_fn(move |req| {
        let (inner, peer) = (inner.clone(), peer.clone());
        async move { Ok::<_, std::convert::Infallible>(proxy::handle(inner, req, peer).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    if let Some(rx) = shutdown.as_mut() {
        tokio::select! {
            r = conn.as_mut() => return r.map_err(|e| e.to_string()),
            _ = stopped(rx) => conn.as_mut().graceful_shutdown(),
        }
    }
    conn.await.map_err(|e| e.to_string())
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

fn build(reg: &mut Registry, spec: &RoutesSpec) -> RouteTable {
    let mut table = RouteTable::default();
    let revisions: HashMap<(&str, &str), &RevisionSpec> = spec
        .revisions
        .iter()
        .map(|r| ((r.namespace.as_str(), r.name.as_str()), r))
        .collect();
    for svc in &spec.services {
        let mut split = Vec::new();
        let mut total = 0;
        let mut tags = HashMap::new();
        for t in &svc.targets {
            let Some(rev) = revisions.get(&(svc.namespace.as_str(), t.revision.as_str())) else {
                continue;
            };
            let untagged = target(reg, rev, "");
            table
                .revisions
                .entry((svc.namespace.clone(), t.revision.clone()))
                .or_insert_with(|| untagged.clone());
            if t.percent > 0 {
                total += t.percent;
                split.push((total, untagged));
            }
            if let Some(tag) = &t.tag {
                let tagged = target(reg, rev, tag);
                tags.insert(tag.clone(), tagged.clone());
                if let Some(host) = &t.tag_host {
                    table.hosts.insert(host.to_ascii_lowercase(), HostRoute::Tag(tagged));
                }
            }
        }
        fn find<'a>(
            svc: &ServiceSpec,
            revisions: &HashMap<(&str, &str), &'a RevisionSpec>,
            name: &str,
        ) -> Option<&'a RevisionSpec> {
            svc.targets
                .iter()
                .find(|t| t.revision == name)
                .and_then(|t| revisions.get(&(svc.namespace.as_str(), t.revision.as_str())).copied())
        }
        let mut header_routes = Vec::new();
        for h in &svc.header_routes {
            let Some(rev) = find(svc, &revisions, &h.revision) else {
                continue;
            };
            let mut matches = Vec::new();
            for m in &h.matches {
                let Ok(name) = hyper::header::HeaderName::from_bytes(m.name.as_bytes()) else {
                    continue;
                };
                let matcher = match &m.value {
                    MatchSpec::Exact(v) => Matcher::Exact(v.clone()),
                    MatchSpec::Prefix(v) => Matcher::Prefix(v.clone()),
                    MatchSpec::Regex(v) => match regex_lite::Regex::new(v) {
                        Ok(r) => Matcher::Regex(r),
                        Err(e) => {
                            tracing::warn!(service = %svc.name, "header route regex {v:?}: {e}");
                            continue;
                        }
                    },
                };
                matches.push((name, matcher));
            }
            if matches.len() == h.matches.len() && !matches.is_empty() {
                header_routes.push(HeaderRoute {
                    matches,
                    target: target(reg, rev, ""),
                });
            }
        }
        let mirror = svc.mirror.as_ref().and_then(|m| {
            let to = find(svc, &revisions, &m.to)?;
            (m.percent > 0 && m.from != m.to).then(|| Mirror {
                from: m.from.clone(),
                to: target(reg, to, "mirror"),
                percent: m.percent.min(100),
            })
        });
        let route = ServiceRoute {
            name: svc.name.clone(),
            header_routes,
            mirror,
            split,
            total,
            tags,
        };
        table
            .hosts
            .insert(svc.host.to_ascii_lowercase(), HostRoute::Split(Arc::new(route)));
    }
    table
}

fn target(reg: &mut Registry, rev: &RevisionSpec, tag: &str) -> Arc<RevisionTarget> {
    let endpoints: Vec<Arc<Endpoint>> = rev
        .endpoints
        .iter()
        .map(|a| {
            reg.endpoints
                .entry(*a)
                .or_insert_with(|| Arc::new(Endpoint::new(*a)))
                .clone()
        })
        .collect();
    let labels = Labels {
        namespace: rev.namespace.clone(),
        service: rev.service.clone(),
        revision: rev.name.clone(),
        tag: tag.into(),
    };
    let metrics = reg
        .metrics
        .entry(labels.clone())
        .or_insert_with(|| Arc::new(RevisionMetrics::new(labels)))
        .clone();
    let cc = rev.container_concurrency as usize;
    let capacity = cc * endpoints.len();
    let breaker = (capacity > 0).then(|| {
        let key = (rev.namespace.clone(), rev.name.clone());
        let b = reg
            .breakers
            .entry(key)
            .or_insert_with(|| Arc::new(Breaker::new(capacity, 10 * capacity)));
        if b.capacity() != capacity {
            *b = Arc::new(Breaker::new(capacity, 10 * capacity));
        }
        b.clone()
    });
    let activation = reg
        .activations
        .entry((rev.namespace.clone(), rev.name.clone()))
        .or_default()
        .clone();
    Arc::new(RevisionTarget {
        namespace: rev.namespace.clone(),
        name: rev.name.clone(),
        activation,
        endpoints,
        breaker,
        timeout: rev.timeout,
        protocol: rev.protocol,
        metrics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Worker 0's part of a spread over two workers, worker 1's inbox, and a connection to place.
    async fn two_workers(
        live: [usize; 2],
    ) -> (
        Spread,
        mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
        TcpListener,
    ) {
        let (to0, inbox0) = mpsc::unbounded_channel();
        let (to1, inbox1) = mpsc::unbounded_channel();
        let spread = Spread {
            me: 0,
            live: live.iter().map(|&n| AtomicUsize::new(n)).collect(),
            stopped: (0..2).map(|_| AtomicBool::new(false)).collect(),
            peers: vec![to0, to1].into(),
            inbox: inbox0,
        };
        (spread, inbox1, TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    async fn accepted(l: &TcpListener) -> (TcpStream, SocketAddr) {
        let (_client, accepted) = tokio::join!(TcpStream::connect(l.local_addr().unwrap()), l.accept());
        accepted.unwrap()
    }

    fn counts(sp: &Spread) -> Vec<usize> {
        sp.live.iter().map(|n| n.load(Ordering::Relaxed)).collect()
    }

    #[tokio::test]
    async fn a_connection_goes_to_the_thread_with_fewest_and_a_tie_stays() {
        let (sp, mut inbox1, l) = two_workers([1, 0]).await;
        let (s, remote) = accepted(&l).await;
        assert!(sp.place(s, remote).is_none(), "handed to worker 1");
        assert_eq!(inbox1.try_recv().unwrap().1, remote);
        assert_eq!(counts(&sp), [1, 1]);
        let (s, remote) = accepted(&l).await;
        assert!(sp.place(s, remote).is_some(), "a tie stays here");
        assert_eq!(counts(&sp), [2, 1]);
    }

    /// The review of issue 18's spread: a worker that has stopped (or never started) must not become
    /// the place every new connection is sent to and dropped.
    #[tokio::test]
    async fn a_stopped_thread_is_skipped_and_its_connection_served_here() {
        let (sp, inbox1, l) = two_workers([1, 0]).await;
        drop(inbox1);
        let (s, remote) = accepted(&l).await;
        assert!(sp.place(s, remote).is_some(), "served here when worker 1 is gone");
        assert_eq!(counts(&sp), [2, 0]);
        let (s, remote) = accepted(&l).await;
        assert!(sp.place(s, remote).is_some(), "worker 1 is not picked again");
        assert_eq!(counts(&sp), [3, 0]);
    }

    #[tokio::test]
    async fn a_stopping_thread_closes_what_was_handed_to_it_and_takes_no_more() {
        let (mut sp, _inbox1, l) = two_workers([1, 0]).await;
        let to0 = sp.peers[0].clone();
        let (s, remote) = accepted(&l).await;
        to0.send((s.into_std().unwrap(), remote)).unwrap();
        sp.stop();
        assert_eq!(
            counts(&sp),
            [0, 0],
            "the handed connection is closed and no longer counted"
        );
        assert!(sp.stopped[0].load(Ordering::Relaxed));
        let (s, remote) = accepted(&l).await;
        assert!(to0.send((s.into_std().unwrap(), remote)).is_err(), "no more hand-overs");
    }
}
