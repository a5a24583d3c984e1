//! Nexa Forge inside a Rust program: a control plane and a worker in this process, a stage of
//! our own for `generate` jobs, and a job submitted, followed and read back.
//!
//! ```sh
//! cargo run -p nexa-actors --example embedded
//! ```

use std::time::Duration;

use nexa_actors::{
    BoxFuture, ControlPlane, ControlPlaneConfig, Stage, StageContext, StageError, StageRegistry,
    WorkerConfig, WorkerNode,
};
use nexa_runtime::{
    GenerateParams, JobOutput, JobParams, JobSpec, JobState, JobType, LogQuery, WorkerId,
};
use nexa_transport::Trust;

/// Makes `num_samples` toy examples for a domain, reporting progress as it goes.
struct ToyGenerator;

impl Stage for ToyGenerator {
    fn run(&self, ctx: StageContext) -> BoxFuture<Result<JobOutput, StageError>> {
        Box::pin(async move {
            let JobParams::Generate(p) = &ctx.spec.params else {
                return Err(StageError::InvalidInput("not a generate job".into()));
            };
            for i in 0..p.num_samples {
                if ctx.cancel.is_cancelled() {
                    return Err(StageError::Cancelled);
                }
                ctx.logs.line(format!("{}: sample {i}", p.domain));
                ctx.progress.set((i + 1) as f64 / p.num_samples as f64);
            }
            let mut output = JobOutput::default();
            output
                .metrics
                .insert("samples".into(), p.num_samples as f64);
            Ok(output)
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = tempfile::tempdir()?;
    let token = "an-example-join-token";
    let plane = ControlPlane::start(ControlPlaneConfig::new(
        "127.0.0.1:0".parse()?,
        data.path(),
        token,
    ))
    .await?;

    let mut stages = StageRegistry::new();
    stages.register(JobType::Generate, ToyGenerator);
    let worker = WorkerNode::start(WorkerConfig::new(
        plane.addr(),
        Trust::Fingerprint(plane.fingerprint()),
        token,
        WorkerId::new("example-worker")?,
        stages,
        data.path().join("worker"),
    ))
    .await?;

    let job = plane
        .submit(JobSpec::new(JobParams::Generate(GenerateParams {
            seed: Some(7),
            ..GenerateParams::new("astronomy", 5)
        })))
        .await?;
    println!("submitted {}", job.id);

    let finished = loop {
        let j = plane.get(job.id).await?;
        if j.state.is_terminal() {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(finished.state, JobState::Succeeded);
    println!(
        "{} {} with {:?}",
        finished.id,
        finished.state,
        finished.output.map(|o| o.metrics)
    );
    for line in plane.logs(job.id, LogQuery::default()).await?.lines {
        println!("  log {}: {}", line.seq, line.text);
    }

    worker.drain().await;
    plane.shutdown().await;
    Ok(())
}
