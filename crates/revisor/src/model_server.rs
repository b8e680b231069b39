//! `revisor model-server`, `revisor example-models` and `revisor rewrite-model`: the model server as a
//! process (what a model revision runs), the example models written to disk, and a model written as
//! the ONNX Runtime engine opens it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use revisor_model::batching::BatchConfig;
use revisor_model::{router, Model, Runner};

/// Loads and warms the model first, and only then listens: a TCP readiness probe (Knative's default)
/// cannot pass before the model can answer.
/// Where the model comes from.
pub struct Source<'a> {
    pub uri: &'a str,
    pub sha256: Option<&'a str>,
    pub cache: Option<std::path::PathBuf>,
    /// The largest download accepted (`--max-model-bytes`).
    pub max_bytes: u64,
    pub engine: revisor_model::model::Engine,
}

/// The batching flags, checked.
pub fn batching(max_size: Option<usize>, max_delay: &str) -> Result<Option<BatchConfig>> {
    let Some(max_size) = max_size else { return Ok(None) };
    let max_delay =
        revisor_api::units::parse_go_duration(max_delay).map_err(|e| anyhow::anyhow!("--max-batch-delay: {e}"))?;
    Ok(Some(BatchConfig { max_size, max_delay }))
}

pub fn run(
    source: &Source,
    name: &str,
    version: &str,
    host: &str,
    port: Option<u16>,
    batching: Option<BatchConfig>,
) -> Result<()> {
    let port = match port {
        Some(p) => p,
        None => std::env::var("PORT")
            .context("no --port given and $PORT is not set")?
            .parse()
            .context("$PORT is not a port number")?,
    };
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .with_context(|| format!("--host {host:?} is not an IP address"))?;
    revisor_model::return_freed_memory_at_once();
    let started = std::time::Instant::now();
    let cache = source
        .cache
        .clone()
        .unwrap_or_else(revisor_model::storage::default_cache);
    let m = Model::load_with(
        source.uri,
        source.sha256,
        &cache,
        name,
        version,
        &source.engine,
        source.max_bytes,
    )?;
    m.warm_up()?;
    eprintln!(
        "revisor model-server: model {name:?} version {version:?} loaded and warmed up in {:?}",
        started.elapsed()
    );
    let model = Arc::new(m);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let runner = match batching {
            Some(cfg) => Runner::batching(model, cfg).map_err(anyhow::Error::msg)?,
            None => Runner::new(model),
        };
        let state = Arc::new(runner);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        eprintln!("revisor model-server: listening on http://{addr}");
        axum::serve(listener, router(state))
            .with_graceful_shutdown(crate::server::shutdown_signal())
            .await?;
        Ok(())
    })
}

/// Writes the example models (tabular v1, v2, and the faulty v3) into `dir`.
pub fn write_examples(dir: &Path) -> Result<()> {
    for p in revisor_model::examples::write_all(dir).with_context(|| format!("writing into {}", dir.display()))? {
        println!("{}", p.display());
    }
    Ok(())
}

/// `revisor rewrite-model`: writes `model` as the ONNX Runtime engine opens it into `out` and says
/// what was rewritten; a file that is not an ONNX model is an error and writes nothing.
pub fn rewrite_model(model: &Path, out: &Path) -> Result<()> {
    use revisor_model::rewrite::{rewrite, NotRewritten};
    let bytes = std::fs::read(model).with_context(|| format!("reading {}", model.display()))?;
    let (written, said) = match rewrite(&bytes) {
        Ok(Some((rewritten, done))) => (rewritten, format!("rewritten: {done}")),
        Ok(None) => (bytes, "nothing to rewrite: written as it is".to_string()),
        Err(e @ NotRewritten::NotOnnx(_)) => bail!("{}: {e}", model.display()),
        Err(e @ NotRewritten::ExternalData) => (
            bytes,
            format!("not rewritten ({e}): written as it is; the files it names are not copied beside it"),
        ),
        Err(e @ NotRewritten::Kept(_)) => (bytes, format!("not rewritten ({e}): written as it is")),
    };
    std::fs::write(out, written).with_context(|| format!("writing {}", out.display()))?;
    println!("{}: {said}", out.display());
    Ok(())
}
