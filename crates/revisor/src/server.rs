//! `revisor serve`: opens the store, starts the controller and the admin API, and stops cleanly on a signal.

use std::sync::Arc;

use anyhow::{Context, Result};
use revisor_controller::{Controller, ControllerConfig};
use revisor_store::Store;
use tokio::net::TcpListener;

use crate::admin::{router, AdminState};
use crate::config::ServerConfig;

/// The store file inside the data dir.
pub const STORE_FILE: &str = "revisor.redb";

pub async fn serve(cfg: ServerConfig) -> Result<()> {
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let store_path = cfg.data_dir.join(STORE_FILE);
    let store =
        Store::open(&store_path).with_context(|| "is another `revisor serve` using this data dir? pass --data-dir")?;
    let controller = ControllerConfig {
        domain: cfg.domain.clone(),
        gateway_port: cfg.gateway_addr.port(),
    };
    Controller::new(store.clone(), controller).spawn();
    let listener = TcpListener::bind(cfg.admin_addr)
        .await
        .with_context(|| format!("binding the admin API to {}", cfg.admin_addr))?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() {
        tracing::warn!("the admin API listens on {local}, beyond loopback, and has no authentication");
    }
    eprintln!(
        "revisor: admin API listening on http://{local} (data in {})",
        cfg.data_dir.display()
    );
    let state = AdminState {
        store,
        defaults: Arc::new(cfg.defaults),
    };
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("admin API")?;
    eprintln!("revisor: stopped");
    Ok(())
}

async fn shutdown_signal() {
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
