//! Nexa Forge inside a Rust program: a control plane and a worker in this process, a stage of
//! our own for `generate` jobs, and a job submitted, its log followed as it is written, and
//! its result read once it ends. Nothing polls: the log and the wait are told of changes.
//!
//! ```sh
//! cargo run -p nexa-actors --example embedded
//! ```

use futures_util::StreamExt;
use nexa_actors::{ControlPlane, FollowFrom, LogEvent, StageError, StageRegistry, WorkerConfig};
use nexa_runtime::{GenerateParams, JobOutput, JobParams, JobSpec, JobState, JobType, WorkerId};
use nexa_transport::Trust;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = tempfile::tempdir()?;
    let token = "an-example-join-token";
    let plane = ControlPlane::builder("127.0.0.1:0".parse()?, data.path(), token)
        .start()
        .await?;

    // A stage of our own: `num_samples` toy examples, with progress as it goes.
    let mut stages = StageRegistry::new();
    stages.register_fn(JobType::Generate, |ctx| async move {
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
    });
    let worker = WorkerConfig::new(
        plane.addr(),
        Trust::Fingerprint(plane.fingerprint()),
        token,
        WorkerId::new("example-worker")?,
        stages,
        data.path().join("worker"),
    )
    .start()
    .await?;

    let job = plane
        .submit(JobSpec::new(JobParams::Generate(GenerateParams {
            seed: Some(7),
            ..GenerateParams::new("astronomy", 5)
        })))
        .await?;
    println!("submitted {}", job.id);

    // The log as it is written, until the job ends.
    let mut log = std::pin::pin!(plane.follow_logs(job.id, FollowFrom::default()));
    while let Some(event) = log.next().await {
        match event? {
            LogEvent::Attempt(n) => println!("  attempt {n}"),
            LogEvent::Line { line, .. } => println!("  log {}: {}", line.seq, line.text),
            LogEvent::End(state) => println!("  ended {state}"),
            _ => {}
        }
    }

    let finished = plane.wait(job.id).await?;
    assert_eq!(finished.state, JobState::Succeeded);
    println!(
        "{} {} with {:?}",
        finished.id,
        finished.state,
        finished.output.map(|o| o.metrics)
    );

    worker.drain().await;
    plane.shutdown().await;
    Ok(())
}
