//! Dynamic batching (as Triton does it): concurrent requests are merged along the batch dimension into
//! one run, up to a size or a delay, and the outputs are split back, row for row.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tract_onnx::prelude::*;

use crate::error::InferError;
use crate::model::Model;

/// When to run a batch: at `max_size` rows, or `max_delay` after its first request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchConfig {
    pub max_size: usize,
    pub max_delay: Duration,
}

struct Job {
    inputs: Vec<Tensor>,
    rows: usize,
    reply: oneshot::Sender<Result<TVec<Tensor>, InferError>>,
}

/// The sending side of the batching loop.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
}

impl Batcher {
    /// Starts the loop; refuses a model whose inputs do not all start with a batch dimension.
    pub fn start(model: Arc<Model>, cfg: BatchConfig, pool: Arc<tokio::sync::Semaphore>) -> Result<Batcher, String> {
        if cfg.max_size < 2 {
            return Err(format!(
                "--max-batch-size must be at least 2 to batch, got {}",
                cfg.max_size
            ));
        }
        let unbatched: Vec<&str> = model
            .inputs
            .iter()
            .chain(&model.outputs)
            .filter(|s| s.shape.first() != Some(&-1))
            .map(|s| s.name.as_str())
            .collect();
        if !unbatched.is_empty() {
            return Err(format!("dynamic batching needs a batch (first, open) dimension on every input and output; {unbatched:?} have none"));
        }
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(run(model, cfg, pool, rx));
        Ok(Batcher { tx })
    }

    /// Runs one request's tensors as part of a batch.
    pub async fn run(&self, inputs: TVec<TValue>) -> Result<TVec<Tensor>, InferError> {
        let inputs: Vec<Tensor> = inputs.into_iter().map(|v| v.into_tensor()).collect();
        let rows = inputs.first().and_then(|t| t.shape().first().copied()).unwrap_or(1);
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { inputs, rows, reply })
            .await
            .map_err(|_| InferError::Unavailable("the batcher stopped".into()))?;
        rx.await
            .map_err(|_| InferError::Model("the batch was dropped".into()))?
    }
}

async fn run(model: Arc<Model>, cfg: BatchConfig, pool: Arc<tokio::sync::Semaphore>, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        let mut rows = jobs[0].rows;
        let deadline = tokio::time::Instant::now() + cfg.max_delay;
        while rows < cfg.max_size {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(job)) => {
                    rows += job.rows;
                    jobs.push(job);
                }
                _ => break,
            }
        }
        let demand = model.demand();
        let Ok(permit) = pool.clone().acquire_owned().await else {
            return;
        };
        let model = model.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let result = tokio::task::spawn_blocking(move || {
                let _demand = demand;
                execute(&model, jobs)
            })
            .await;
            if let Err(e) = result {
                tracing::error!("batch worker failed: {e}");
            }
        });
    }
}

/// Concatenates the jobs' inputs, runs them once, and answers each job with its rows of the outputs.
fn execute(model: &Model, jobs: Vec<Job>) {
    let merged: Result<TVec<TValue>, TractError> = (0..jobs[0].inputs.len())
        .map(|i| {
            let parts: Vec<&Tensor> = jobs.iter().map(|j| &j.inputs[i]).collect();
            Tensor::stack_tensors(0, &parts).map(|t| t.into_tvalue())
        })
        .collect();
    let outputs = merged.and_then(|inputs| model.run(inputs));
    let mut start = 0;
    for job in jobs {
        let end = start + job.rows;
        let answer = match &outputs {
            Ok(outs) => outs
                .iter()
                .map(|o| o.slice(0, start, end))
                .collect::<TractResult<TVec<Tensor>>>()
                .map_err(|e| InferError::Model(format!("splitting the batch: {e:#}"))),
            Err(e) => Err(InferError::Model(format!("inference failed: {e:#}"))),
        };
        let _ = job.reply.send(answer);
        start = end;
    }
}
