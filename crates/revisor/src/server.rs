//! `revisor serve`: opens the store, starts the gateway, the local runtime, the controller and the admin
//! API, and on a signal stops accepting, drains every replica and exits.

use std::sync::Arc;

use anyhow::{Context, Result};
use revisor_controller::{Controller, ControllerConfig};
use revisor_gateway::Gateway;
use revisor_local::{LocalBackend, LocalConfig};
use revisor_rollout_controller::{HttpProviders, RolloutController, SystemClock};
use revisor_runtime::Runtime;
use revisor_store::Store;
use tokio::net::TcpListener;

use crate::admin::{router, AdminState};
use crate::config::ServerConfig;

/// The store file inside the data dir.
pub const STORE_FILE: &str = "revisor.redb";
/// Replica logs, `logs/<namespace>/<revision>/replica-<n>.log`, inside the data dir.
pub const LOGS_DIR: &str = "logs";

pub async fn serve(cfg: ServerConfig) -> Result<()> {
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let token = crate::auth::server_token(&cfg.data_dir, cfg.admin_token_file.as_deref())?;
    let store_path = cfg.data_dir.join(STORE_FILE);
    let store =
        Store::open(&store_path).with_context(|| "is another `revisor serve` using this data dir? pass --data-dir")?;
    let gateway_listener = std::net::TcpListener::bind(cfg.gateway_addr).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "gateway address {} is in use: pass --gateway-addr (or set gateway-addr under [server] in revisor.toml)",
            cfg.gateway_addr
        ),
        _ => anyhow::Error::new(e).context(format!("binding the gateway to {}", cfg.gateway_addr)),
    })?;
    let gateway_addr = gateway_listener.local_addr()?;
    let (admin_listener, admin_addr) = bind_admin(cfg.admin_addr).await?;

    let gateway = Gateway::new(cfg.gateway.clone());
    let logs = cfg.data_dir.join(LOGS_DIR);
    let counts = gateway.clone();
    let exe = std::env::current_exe().context("finding the revisor executable")?;
    let in_flight: revisor_runtime::InFlight = Arc::new(move |addr| counts.in_flight(addr));
    let runtime = if cfg.prefork {
        Runtime::with_prefork(logs.clone(), in_flight, exe.clone())
    } else {
        Runtime::new(logs.clone(), in_flight)
    };
    let local = LocalConfig {
        images: cfg.images.clone(),
        revisor_exe: exe,
        model_cache: Some(cfg.data_dir.join("models")),
        progress_deadline: cfg.progress_deadline,
        termination_grace: cfg.termination_grace,
        autoscaler: cfg.autoscaler.clone(),
    };
    let backend = LocalBackend::start(store.clone(), runtime, gateway.clone(), local);
    let controller = ControllerConfig {
        domain: cfg.domain.clone(),
        gateway_port: gateway_addr.port(),
        rollout_duration: cfg.rollout_duration,
        gateway_ip: if gateway_addr.ip().is_unspecified() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            gateway_addr.ip()
        },
    };
    Controller::new(store.clone(), controller.clone())
        .with_backend(Arc::new(backend.clone()), cfg.defaults.clone())
        .spawn();
    let world = revisor_controller::StoreWorld::new(store.clone(), controller);
    let providers = HttpProviders::new(backend.metrics_source());
    let rollouts = RolloutController::new(world, providers, SystemClock);
    let outcomes = rollouts.outcomes();
    tokio::spawn(rollouts.run());
    revisor_controller::gc::spawn(store.clone(), cfg.gc.clone(), std::time::Duration::from_secs(30));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let gateway_threads = gateway
        .spawn_workers(gateway_listener, workers, stop_rx)
        .context("starting the gateway")?;
    eprintln!("revisor: gateway listening on http://{gateway_addr}");
    // Credentials first: whoever sees the address can find the token.
    let (guard, tls) = admin_access(&cfg, token, admin_addr)?;
    eprintln!(
        "revisor: admin API listening on https://{admin_addr} (data in {})",
        cfg.data_dir.display()
    );
    // One registry, one exposition: the gateway's per-revision series, the autoscaler's, the Rollouts'.
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(gateway.metrics_collector()));
    registry.register_collector(Box::new(backend.autoscaler_collector()));
    // The Rollouts' state, read at each scrape, and what the Rollout controller saw end.
    let reader = store.clone();
    registry.register_collector(Box::new(revisor_rollout_controller::RolloutCollector::new(move || {
        reader.list::<revisor_api::Rollout>(None).unwrap_or_default()
    })));
    outcomes.register(&mut registry);
    let state = AdminState {
        store,
        defaults: Arc::new(cfg.defaults),
        gateway: Some(gateway),
        logs: Some(logs),
        metrics: Some(Arc::new(registry)),
    };
    serve_admin(admin_listener, crate::admin::guard::guarded(router(state), guard), tls).await?;
    eprintln!("revisor: stopping: draining replicas");
    stop_tx.send_replace(true);
    backend.shutdown().await;
    tokio::task::spawn_blocking(move || gateway_threads.into_iter().for_each(|t| drop(t.join()))).await?;
    eprintln!("revisor: stopped");
    Ok(())
}

/// Where `revisor serve --backend knative` finds its cluster and Prometheus.
pub struct KnativeFlags {
    pub kubeconfig: Option<std::path::PathBuf>,
    pub context: Option<String>,
    pub namespace: Option<String>,
    pub prometheus: Option<String>,
}

/// `revisor serve --backend knative`: no store, gateway or replicas here; the cluster holds the
/// objects and Knative runs them. Watches the cluster, runs the Rollout controller over it, and serves
/// the admin API (applies go to the cluster).
pub async fn serve_knative(cfg: ServerConfig, flags: KnativeFlags) -> Result<()> {
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| {
        format!(
            "creating data dir {} (for the admin API's token and CA)",
            cfg.data_dir.display()
        )
    })?;
    let token = crate::auth::server_token(&cfg.data_dir, cfg.admin_token_file.as_deref())?;
    let (client, url) = revisor_kube::connect(flags.kubeconfig.as_deref(), flags.context.as_deref()).await?;
    let (cluster, changes) = revisor_kube::Cluster::start(client, flags.namespace.clone())
        .await
        .with_context(|| format!("the Kubernetes API server at {url}"))?;
    let metrics = revisor_kube::ClusterMetrics::new(flags.prometheus.as_deref());
    let world = revisor_kube::KnativeWorld::new(cluster.clone(), changes).with_prometheus(flags.prometheus.is_some());
    tokio::spawn(RolloutController::new(world, HttpProviders::new(metrics), SystemClock).run());
    let (admin_listener, admin_addr) = bind_admin(cfg.admin_addr).await?;
    let (guard, tls) = admin_access(&cfg, token, admin_addr)?;
    eprintln!(
        "revisor: driving Knative Serving in {}; admin API listening on https://{admin_addr}",
        flags
            .namespace
            .as_deref()
            .map(|n| format!("namespace {n}"))
            .unwrap_or("every namespace".into())
    );
    let state = crate::admin::cluster::ClusterState {
        cluster,
        defaults: Arc::new(cfg.defaults),
    };
    let app = crate::admin::guard::guarded(crate::admin::cluster::router(state), guard);
    serve_admin(admin_listener, app, tls).await?;
    eprintln!("revisor: stopped");
    Ok(())
}

/// How long open admin connections (a followed log) may take to finish once the server stops.
const ADMIN_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Serves the admin API over TLS until a stop signal, then lets open requests finish for at most
/// `ADMIN_CLOSE_WAIT`: a client following a log never holds the server (and its replicas) up.
async fn serve_admin(listener: TcpListener, app: axum::Router, tls: Arc<rustls::ServerConfig>) -> Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = tx.send(true);
    });
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = Arc::new(hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()));
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("admin API accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = rx.wait_for(|stop| *stop) => break,
        };
        let (acceptor, app, builder, watcher) = (acceptor.clone(), app.clone(), builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            // A handshake that never finishes (a plain-HTTP client, a stalled peer) is dropped.
            let handshake = tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await;
            let stream = match handshake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!("admin API TLS handshake with {remote}: {e}");
                    return;
                }
                Err(_) => return,
            };
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!("admin API connection from {remote}: {e}");
            }
        });
    }
    if tokio::time::timeout(ADMIN_CLOSE_WAIT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!(
            "closing admin connections still open {}s after the stop signal",
            ADMIN_CLOSE_WAIT.as_secs()
        );
    }
    Ok(())
}

/// The admin API's listener, with a warning when it is reachable beyond loopback.
async fn bind_admin(addr: std::net::SocketAddr) -> Result<(TcpListener, std::net::SocketAddr)> {
    let listener = TcpListener::bind(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "admin API address {addr} is in use: pass --admin-addr (or set admin-addr under [server] in revisor.toml)"
        ),
        _ => anyhow::Error::new(e).context(format!("binding the admin API to {addr}")),
    })?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        tracing::warn!(
            "the admin API listens on {bound}, beyond loopback: clients need its CA \
             (DATA_DIR/tls/ca.crt) and token"
        );
    }
    Ok((listener, bound))
}

/// The admin API's guard and TLS, with the token and the CA written where the CLI on this machine
/// finds them by itself.
fn admin_access(
    cfg: &ServerConfig,
    token: String,
    bound: std::net::SocketAddr,
) -> Result<(crate::admin::guard::Guard, Arc<rustls::ServerConfig>)> {
    let tls = crate::tls::admin_tls(&cfg.data_dir, bound, &cfg.admin_tls_sans)?;
    let mut urls = vec![format!("https://{bound}")];
    if bound.ip().is_unspecified() {
        urls.push(format!("https://127.0.0.1:{}", bound.port()));
    }
    for url in &urls {
        if let Err(e) = crate::auth::remember(url, &token, &tls.ca_pem) {
            tracing::warn!("the CLI will need --token-file and --certificate-authority: {e:#}");
        }
    }
    let guard = crate::admin::guard::Guard::new(token, bound);
    eprintln!("revisor: the admin API's CA is {}", tls.ca_path.display());
    match &cfg.admin_token_file {
        Some(f) => eprintln!("revisor: the admin API takes the token in {}", f.display()),
        None => eprintln!(
            "revisor: the admin API takes the token in {}; a browser logs in with {}",
            cfg.data_dir.join(crate::auth::TOKEN_FILE).display(),
            guard.login_link(&urls[urls.len() - 1])
        ),
    }
    Ok((guard, tls.config))
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
