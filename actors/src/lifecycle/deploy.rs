//! [`DeployStage`]: a model served over HTTP by a replica on the worker, proven ready first.
//!
//! The replica loads the model (a registered `name[:N]`, or a model file's URI) into an
//! inference thread of its own, on the job's GPU when it has one and the worker is built with
//! CUDA, else on the CPU, and serves it on the worker:
//!
//! | route | what |
//! |---|---|
//! | `GET /v2/health/live`, `GET /v2/health/ready` | the Open Inference Protocol's probes |
//! | `GET /v2/models/{name}`, `GET /v2/models/{name}/ready` | the model's metadata and readiness |
//! | `POST /v2/models/{name}/infer` | one `FP32` input tensor of shape `[rows, features]` |
//! | `POST /predict` | `{"inputs": [[...], ...]}` rows, for people with curl |
//!
//! It is ready only once a smoke test passes: rows of the test split of the dataset the model
//! learned from (or, for a model given by URI, rows drawn from a fixed seed) sent through its
//! own HTTP server get the predictions the model makes in-process, as `evaluate` makes them.
//! Then it tells the control plane its URL in every heartbeat (the control plane routes the
//! endpoint's stable URL to it), and serves until the job is cancelled: cancelling a deploy
//! job is undeploying it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use ndarray::Array2;
use nexa_compute::{Backend, CpuBackend, Head, Mlp, argmax_rows};
use nexa_runtime::{JobOutput, JobParams, JobType};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::{Device, compute_error, fetch_model, load_dataset};
use crate::stage::{BoxFuture, Stage, StageContext, StageError};

/// The most rows one request may carry.
pub const MAX_ROWS: usize = 4096;

/// Rows the smoke test sends.
const SMOKE_ROWS: usize = 32;

/// How long the smoke test waits for its answer (the first request of a replica on a GPU
/// may wait for kernels to load).
const SMOKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `deploy` jobs; see the module docs.
#[derive(Clone, Debug, Default)]
pub struct DeployStage {
    /// The address replicas listen on and the control plane reaches them at.
    host: Option<String>,
    probes: HealthProbes,
}

impl DeployStage {
    /// Replicas listening on `host` (an IP address or name the control plane can reach;
    /// the default is 127.0.0.1, for a worker on the control plane's machine).
    pub fn on(host: impl Into<String>) -> Self {
        Self {
            host: Some(host.into()),
            ..Self::default()
        }
    }

    /// Replicas health-probed as `probes` says.
    pub fn probed(self, probes: HealthProbes) -> Self {
        Self { probes, ..self }
    }
}

/// How a ready replica is health-probed: every `every`, one row of its smoke test goes
/// through its own HTTP server and must come back within `timeout` with the model's own
/// prediction. After one failure the endpoint stops routing to it until a probe passes again;
/// after `failures` in a row it is a crashed replica, which the worker restarts within the
/// stage's restart budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthProbes {
    /// Between two probes.
    pub every: Duration,
    /// The longest a probe waits for its answer.
    pub timeout: Duration,
    /// Failed probes in a row that make the replica crashed.
    pub failures: u32,
}

impl Default for HealthProbes {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
            failures: 3,
        }
    }
}

/// The health probe of a ready replica: one row and the model's own prediction for it.
struct Probe {
    row: Array2<f32>,
    want: Array2<f32>,
    head: Head,
}

impl Probe {
    /// HealthProbes the replica at `url` until it fails `probes.failures` times in a row, and says
    /// why; the endpoint does not route to it while its latest probe failed.
    async fn watch(
        &self,
        client: &reqwest::Client,
        url: &str,
        probes: HealthProbes,
        ctx: &StageContext,
    ) -> StageError {
        let mut failed = 0;
        loop {
            tokio::time::sleep(probes.every).await;
            let answer = ask(client, url, &self.row, probes.timeout).await;
            match answer.and_then(|got| same_predictions(self.head, &self.want, &got)) {
                Ok(()) => {
                    if failed > 0 {
                        ctx.logs.line(format!(
                            "the replica answers its health probe again; serving at {url}"
                        ));
                        ctx.serving.ready(url);
                    }
                    failed = 0;
                }
                Err(why) => {
                    failed += 1;
                    if failed == 1 {
                        ctx.serving.gone();
                    }
                    ctx.logs.line(format!(
                        "health probe {failed} of {} failed: {why}; not routed to meanwhile",
                        probes.failures
                    ));
                    if failed >= probes.failures {
                        return StageError::Crashed(format!(
                            "the replica failed {failed} health probes in a row (the last: {why})"
                        ));
                    }
                }
            }
        }
    }
}

/// `rows` sent to the replica at `url` as a client would (`POST /predict`): its answer, or
/// why there is none within `timeout`.
async fn ask(
    client: &reqwest::Client,
    url: &str,
    rows: &Array2<f32>,
    timeout: Duration,
) -> Result<Value, String> {
    let body = json!({"inputs": rows.rows().into_iter().map(|r| r.to_vec()).collect::<Vec<_>>()});
    let url = format!("{url}/predict");
    let res = client
        .post(&url)
        .timeout(timeout)
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| format!("no answer from {url}: {e}"))?;
    let status = res.status().as_u16();
    let text = res.text().await.map_err(|e| format!("{url}: {e}"))?;
    if status != 200 {
        return Err(format!("{url} answered {status}: {text}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("{url} answered {e}"))
}

/// A batch of rows to predict, and where the answer goes.
type Request = (Array2<f32>, oneshot::Sender<Result<Array2<f32>, String>>);

/// What the HTTP handlers share.
struct Replica {
    /// The name it serves under (the model's name, or the job's target).
    name: String,
    /// The model's shape.
    inputs: usize,
    outputs: usize,
    head: Head,
    /// The inference thread.
    requests: mpsc::Sender<Request>,
    /// Whether the smoke test passed.
    ready: std::sync::atomic::AtomicBool,
    served: AtomicU64,
}

impl Replica {
    async fn predict(&self, rows: Array2<f32>) -> Result<Array2<f32>, String> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send((rows, tx))
            .await
            .map_err(|_| "the model is unloaded".to_owned())?;
        let out = rx.await.map_err(|_| "the model stopped".to_owned())?;
        self.served.fetch_add(1, Ordering::Relaxed);
        out
    }

    /// `rows` as a matrix of this model's width, or why not.
    fn matrix(&self, rows: Vec<Vec<f32>>) -> Result<Array2<f32>, String> {
        let n = rows.len();
        if n == 0 || n > MAX_ROWS {
            return Err(format!("send 1 to {MAX_ROWS} rows; got {n}"));
        }
        if let Some((i, row)) = rows
            .iter()
            .enumerate()
            .find(|(_, r)| r.len() != self.inputs)
        {
            return Err(format!(
                "row {i} has {} values; the model takes {}",
                row.len(),
                self.inputs
            ));
        }
        self.matrix_of(rows.concat(), n, self.inputs)
    }

    /// `flat`, `n` rows of `width` values one after the other, as a matrix of this model's
    /// width, or why not.
    fn matrix_of(&self, flat: Vec<f32>, n: usize, width: usize) -> Result<Array2<f32>, String> {
        if n == 0 || n > MAX_ROWS {
            return Err(format!("send 1 to {MAX_ROWS} rows; got {n}"));
        }
        if width != self.inputs {
            return Err(format!(
                "row 0 has {width} values; the model takes {}",
                self.inputs
            ));
        }
        if let Some(at) = flat.iter().position(|x| !x.is_finite()) {
            return Err(format!(
                "row {} holds {}, which is not a finite number",
                at / width,
                flat[at]
            ));
        }
        Array2::from_shape_vec((n, width), flat).map_err(|e| e.to_string())
    }

    /// The plain answer: each row's outputs, and for a classifier its class.
    fn answer(&self, out: &Array2<f32>) -> Value {
        let predictions: Vec<Vec<f32>> = out.rows().into_iter().map(|r| r.to_vec()).collect();
        match self.head {
            Head::Classification => {
                json!({"predictions": predictions, "classes": argmax_rows(out)})
            }
            Head::Regression => json!({"predictions": predictions}),
        }
    }
}

/// An error as the API gives them: `{"error": {"code", "message"}}`.
fn error(status: actix_web::http::StatusCode, message: impl Into<String>) -> HttpResponse {
    let code = match status.as_u16() {
        400 => "bad_request",
        404 => "not_found",
        _ => "unavailable",
    };
    HttpResponse::build(status).json(json!({"error": {"code": code, "message": message.into()}}))
}

fn bad(message: impl Into<String>) -> HttpResponse {
    error(actix_web::http::StatusCode::BAD_REQUEST, message)
}

#[derive(Deserialize)]
struct PredictBody {
    inputs: Vec<Vec<f32>>,
}

async fn predict(replica: web::Data<Replica>, body: web::Bytes) -> HttpResponse {
    let body: PredictBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return bad(format!(
                "send {{\"inputs\": [[...], ...]}}, one array of numbers per row: {e}"
            ));
        }
    };
    let rows = match replica.matrix(body.inputs) {
        Ok(m) => m,
        Err(e) => return bad(e),
    };
    match replica.predict(rows).await {
        Ok(out) => HttpResponse::Ok().json(replica.answer(&out)),
        Err(e) => error(actix_web::http::StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// One tensor of the Open Inference Protocol.
#[derive(Deserialize)]
struct Tensor {
    name: String,
    shape: Vec<usize>,
    datatype: String,
    data: Value,
}

#[derive(Deserialize)]
struct InferBody {
    id: Option<String>,
    inputs: Vec<Tensor>,
}

fn numbers(data: &Value, out: &mut Vec<f32>) -> Result<(), String> {
    match data {
        Value::Array(items) => items.iter().try_for_each(|v| numbers(v, out)),
        Value::Number(n) => {
            out.push(n.as_f64().ok_or("a number out of range")? as f32);
            Ok(())
        }
        other => Err(format!("tensor data holds {other}, not a number")),
    }
}

async fn infer(
    replica: web::Data<Replica>,
    name: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    if *name != replica.name {
        return error(
            actix_web::http::StatusCode::NOT_FOUND,
            format!("this replica serves {:?}, not {name:?}", replica.name),
        );
    }
    let body: InferBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return bad(format!("not an inference request: {e}")),
    };
    let [input] = body.inputs.as_slice() else {
        return bad(format!(
            "send one input tensor (the rows); got {}",
            body.inputs.len()
        ));
    };
    if !input.datatype.eq_ignore_ascii_case("FP32") && !input.datatype.eq_ignore_ascii_case("FP64")
    {
        return bad(format!("input {:?}: datatype must be FP32", input.name));
    }
    let [rows, width] = input.shape.as_slice() else {
        return bad(format!(
            "input {:?}: shape must be [rows, {}]",
            input.name, replica.inputs
        ));
    };
    let mut flat = Vec::new();
    if let Err(e) = numbers(&input.data, &mut flat) {
        return bad(format!("input {:?}: {e}", input.name));
    }
    if flat.len() != rows * width {
        return bad(format!(
            "input {:?}: shape {:?} needs {} values; got {}",
            input.name,
            input.shape,
            rows * width,
            flat.len()
        ));
    }
    let matrix = match replica.matrix_of(flat, *rows, *width) {
        Ok(m) => m,
        Err(e) => return bad(format!("input {:?}: {e}", input.name)),
    };
    match replica.predict(matrix).await {
        Ok(out) => {
            let (n, k) = out.dim();
            let mut outputs = vec![json!({
                "name": "output",
                "shape": [n, k],
                "datatype": "FP32",
                "data": out.iter().copied().collect::<Vec<f32>>(),
            })];
            if replica.head == Head::Classification {
                outputs.push(json!({
                    "name": "class",
                    "shape": [n],
                    "datatype": "INT64",
                    "data": argmax_rows(&out),
                }));
            }
            HttpResponse::Ok().json(json!({
                "model_name": replica.name,
                "id": body.id,
                "outputs": outputs,
            }))
        }
        Err(e) => error(actix_web::http::StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn metadata(replica: web::Data<Replica>, name: web::Path<String>) -> HttpResponse {
    if *name != replica.name {
        return error(
            actix_web::http::StatusCode::NOT_FOUND,
            format!("this replica serves {:?}, not {name:?}", replica.name),
        );
    }
    let mut outputs =
        vec![json!({"name": "output", "datatype": "FP32", "shape": [-1, replica.outputs]})];
    if replica.head == Head::Classification {
        outputs.push(json!({"name": "class", "datatype": "INT64", "shape": [-1]}));
    }
    HttpResponse::Ok().json(json!({
        "name": replica.name,
        "platform": "nexa-forge-mlp",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, replica.inputs]}],
        "outputs": outputs,
    }))
}

async fn ready(replica: web::Data<Replica>) -> HttpResponse {
    if replica.ready.load(Ordering::SeqCst) {
        HttpResponse::Ok().json(json!({"ready": true}))
    } else {
        error(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            "the model is loaded but its smoke test has not passed yet",
        )
    }
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"live": true}))
}

/// The replica's HTTP server on `host`, any free port: the port, and the server to run.
fn listen(
    replica: web::Data<Replica>,
    host: &str,
) -> Result<(u16, actix_web::dev::Server), StageError> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(replica.clone())
            .app_data(web::PayloadConfig::new(64 << 20))
            .route("/v2/health/live", web::get().to(live))
            .route("/v2/health/ready", web::get().to(ready))
            .route("/v2/models/{name}", web::get().to(metadata))
            .route("/v2/models/{name}/ready", web::get().to(ready))
            .route("/v2/models/{name}/infer", web::post().to(infer))
            .route("/predict", web::post().to(predict))
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(2)
    .bind((host, 0))
    .map_err(|e| StageError::Failed(format!("cannot listen on {host}: {e}")))?;
    let port = server
        .addrs()
        .first()
        .map(|a| a.port())
        .ok_or_else(|| StageError::Failed("the replica's server has no address".into()))?;
    Ok((port, server.run()))
}

/// The model loaded on `device`, answering batches until every sender is gone.
fn inference_thread(
    device: Device,
    path: std::path::PathBuf,
    mut requests: mpsc::Receiver<Request>,
    loaded: oneshot::Sender<Result<nexa_compute::MlpConfig, StageError>>,
) {
    fn serve<B: Backend>(
        backend: &B,
        path: &std::path::Path,
        requests: &mut mpsc::Receiver<Request>,
        loaded: oneshot::Sender<Result<nexa_compute::MlpConfig, StageError>>,
    ) {
        let model = match Mlp::load(backend, path) {
            Ok(m) => m,
            Err(e) => {
                let _ = loaded.send(Err(compute_error("model", e)));
                return;
            }
        };
        let _ = loaded.send(Ok(model.config().clone()));
        while let Some((rows, reply)) = requests.blocking_recv() {
            let _ = reply.send(model.predict(backend, &rows).map_err(|e| e.to_string()));
        }
    }
    match device {
        Device::Cpu => serve(&CpuBackend, &path, &mut requests, loaded),
        #[cfg(feature = "cuda")]
        Device::Cuda(ordinal) => match nexa_compute::CudaBackend::new(ordinal) {
            Ok(backend) => serve(&backend, &path, &mut requests, loaded),
            Err(e) => {
                let _ = loaded.send(Err(StageError::Failed(format!(
                    "cannot use GPU {ordinal}: {e}"
                ))));
            }
        },
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => serve(&CpuBackend, &path, &mut requests, loaded),
    }
}

/// Rows for the smoke test: the first rows of the test split of the dataset the model
/// learned from, when the registry knows it; else rows drawn from a fixed seed.
async fn smoke_rows(
    ctx: &StageContext,
    dataset: Option<&str>,
    inputs: usize,
) -> Result<(Array2<f32>, String), StageError> {
    if let Some(uri) = dataset {
        let data = load_dataset(&ctx.artifacts, uri).await?;
        let part = match data.planned_split() {
            Some(split) => {
                let split = split.map_err(|e| compute_error("the dataset's split", e))?;
                (split.test, format!("the test split of {uri}"))
            }
            None => (data, uri.to_owned()),
        };
        let (data, from) = part;
        let features = data.features();
        if features.ncols() == inputs && !data.is_empty() {
            let n = data.len().min(SMOKE_ROWS);
            return Ok((features.slice(ndarray::s![..n, ..]).to_owned(), from));
        }
    }
    // A generator of its own (splitmix64), so the rows are the same on every replica.
    let mut state = 0x5eed_u64;
    let rows = Array2::from_shape_fn((SMOKE_ROWS, inputs), |_| {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) as f64 / u64::MAX as f64 * 4.0 - 2.0) as f32
    });
    Ok((rows, "rows drawn from a fixed seed".to_owned()))
}

/// Whether the replica's answer over HTTP matches `want`, the model's own predictions.
fn same_predictions(head: Head, want: &Array2<f32>, got: &Value) -> Result<(), String> {
    let rows = got["predictions"]
        .as_array()
        .ok_or("the answer has no predictions")?;
    if rows.len() != want.nrows() {
        return Err(format!("{} rows answered for {}", rows.len(), want.nrows()));
    }
    for (i, (row, want_row)) in rows.iter().zip(want.rows()).enumerate() {
        let row = row.as_array().ok_or("a prediction is not an array")?;
        for (j, (x, w)) in row.iter().zip(want_row.iter()).enumerate() {
            let x = x.as_f64().ok_or("a prediction is not a number")? as f32;
            // The JSON text of an f32 reads back as the same f32.
            if x != *w {
                return Err(format!(
                    "row {i}, output {j}: served {x}, the model says {w}"
                ));
            }
        }
    }
    if head == Head::Classification {
        let classes: Vec<u64> = got["classes"]
            .as_array()
            .ok_or("the answer has no classes")?
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        let want: Vec<u64> = argmax_rows(want).into_iter().map(u64::from).collect();
        if classes != want {
            return Err("the served classes differ from the model's".into());
        }
    }
    Ok(())
}

impl Stage for DeployStage {
    fn run(&self, ctx: StageContext) -> BoxFuture<Result<JobOutput, StageError>> {
        let host = self.host.clone().unwrap_or_else(|| "127.0.0.1".to_owned());
        let probes = self.probes;
        Box::pin(async move {
            let JobParams::Deploy(params) = &ctx.spec.params else {
                return Err(ctx.wrong_job_type(JobType::Deploy));
            };
            let (model, path) = fetch_model(&ctx.artifacts, &params.model_id).await?;
            let name = endpoint_name(&params.model_id, &params.target);
            let device = Device::for_job(&ctx.gpus);
            ctx.logs.line(format!(
                "loading {} on {}",
                model.label(),
                device.describe(&ctx.gpus)
            ));
            let (requests, inbox) = mpsc::channel::<Request>(1024);
            let (loaded_tx, loaded) = oneshot::channel();
            let thread_path = path.clone();
            std::thread::Builder::new()
                .name(format!("nexa-replica-{}", ctx.job))
                .spawn(move || inference_thread(device, thread_path, inbox, loaded_tx))
                .map_err(|e| StageError::Failed(format!("cannot start the model's thread: {e}")))?;
            let config = loaded
                .await
                .map_err(|_| StageError::Crashed("the model's thread stopped".into()))??;
            ctx.progress.set(0.3);

            let replica = web::Data::new(Replica {
                name: name.clone(),
                inputs: config.inputs,
                outputs: config.outputs,
                head: config.head,
                requests,
                ready: std::sync::atomic::AtomicBool::new(false),
                served: AtomicU64::new(0),
            });
            let (port, server) = listen(replica.clone(), &host)?;
            let handle = server.handle();
            let serving = tokio::spawn(server);
            let url = format!("http://{host}:{port}");
            let stop = |why: StageError| {
                let handle = handle.clone();
                async move {
                    handle.stop(true).await;
                    why
                }
            };

            // Ready means proven: the model's own predictions, through its own server.
            let dataset = model.version.as_ref().map(|v| v.dataset_uri.clone());
            let (rows, from) = match smoke_rows(&ctx, dataset.as_deref(), config.inputs).await {
                Ok(r) => r,
                Err(e) => return Err(stop(e).await),
            };
            let want = match replica.predict(rows.clone()).await {
                Ok(w) => w,
                Err(e) => return Err(stop(StageError::Failed(e)).await),
            };
            let client = match reqwest::Client::builder().no_proxy().build() {
                Ok(c) => c,
                Err(e) => {
                    let why = format!("cannot make an HTTP client for the smoke test: {e}");
                    return Err(stop(StageError::Failed(why)).await);
                }
            };
            let answered = ask(&client, &url, &rows, SMOKE_TIMEOUT).await;
            let checked = answered.and_then(|got| same_predictions(config.head, &want, &got));
            if let Err(why) = checked {
                return Err(stop(StageError::Failed(format!(
                    "the replica failed its smoke test ({} rows of {from}): {why}",
                    rows.nrows()
                )))
                .await);
            }
            replica.ready.store(true, Ordering::SeqCst);
            ctx.progress.set(1.0);
            ctx.serving.ready(url.clone());
            ctx.logs.line(format!(
                "serving {} as {name:?} at {url}: ready (its smoke test of {} rows of {from} \
                 got the model's own predictions)",
                model.label(),
                rows.nrows()
            ));

            // Serve until undeployed (cancelled), until the server stops by itself, or until
            // it fails its health probes: the supervisor restarts a crashed replica.
            let probe = Probe {
                row: rows.slice(ndarray::s![..1, ..]).to_owned(),
                want: want.slice(ndarray::s![..1, ..]).to_owned(),
                head: config.head,
            };
            tokio::select! {
                () = ctx.cancel.cancelled() => {}
                ended = serving => {
                    ctx.serving.gone();
                    return Err(StageError::Crashed(format!(
                        "the replica's server stopped: {}",
                        ended.map_or_else(|e| e.to_string(), |r| format!("{r:?}"))
                    )));
                }
                why = probe.watch(&client, &url, probes, &ctx) => {
                    ctx.serving.gone();
                    return Err(stop(why).await);
                }
            }
            ctx.serving.gone();
            handle.stop(true).await;
            ctx.logs.line(format!(
                "undeployed after {} requests",
                replica.served.load(Ordering::Relaxed)
            ));
            Err(StageError::Cancelled)
        })
    }
}

/// The name an endpoint serves under: the job's `target` when it names one, else the model's
/// name (a registered model's, without its version).
pub fn endpoint_name(model_id: &str, target: &str) -> String {
    if target != nexa_runtime::DeployParams::DEFAULT_TARGET {
        return target.to_owned();
    }
    if crate::artifacts::is_location(model_id) {
        let file = model_id.rsplit('/').next().unwrap_or(model_id);
        return file.split('.').next().unwrap_or(file).to_owned();
    }
    model_id
        .split_once(':')
        .map_or(model_id, |(name, _)| name)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU8;

    use nexa_runtime::{JobId, JobSpec, TrainParams};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::{Artifacts, LogSink, Progress, Serving};

    const ANSWERS: u8 = 0;
    const HANGS: u8 = 1;
    const WRONG: u8 = 2;

    /// A replica's `/predict` as a socket: it answers `[[0.25, 0.75]]`, answers something
    /// else, or takes the request and never answers, as `mode` says at the time.
    async fn fake_replica(mode: Arc<AtomicU8>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mode = mode.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    let _ = socket.read(&mut buf).await;
                    let body = match mode.load(Ordering::SeqCst) {
                        HANGS => return tokio::time::sleep(Duration::from_secs(3600)).await,
                        WRONG => r#"{"predictions": [[0.5, 0.5]], "classes": [0]}"#,
                        _ => r#"{"predictions": [[0.25, 0.75]], "classes": [1]}"#,
                    };
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        url
    }

    fn context() -> (StageContext, tokio::sync::watch::Receiver<Option<String>>) {
        let (logs, _) = LogSink::channel();
        let (progress, _) = Progress::channel();
        let (serving, routed) = Serving::channel();
        let dir = std::env::temp_dir().join("nexa-probe-test");
        let ctx = StageContext {
            job: JobId(7),
            attempt: 1,
            spec: JobSpec::new(JobParams::Train(TrainParams::new("m", "file:///d.csv"))),
            gpus: vec![],
            logs,
            progress,
            serving,
            cancel: CancellationToken::new(),
            checkpoint_dir: dir.join("checkpoints"),
            output_dir: dir.join("attempt-1"),
            artifacts: Artifacts::local(dir.join("cache")),
        };
        (ctx, routed)
    }

    fn probe() -> Probe {
        Probe {
            row: Array2::from_shape_vec((1, 2), vec![1.0, 2.0]).unwrap(),
            want: Array2::from_shape_vec((1, 2), vec![0.25, 0.75]).unwrap(),
            head: Head::Classification,
        }
    }

    const FAST: HealthProbes = HealthProbes {
        every: Duration::from_millis(20),
        timeout: Duration::from_millis(200),
        failures: 3,
    };

    #[tokio::test]
    async fn a_hung_replica_is_not_routed_to_and_then_crashes_to_be_restarted() {
        let mode = Arc::new(AtomicU8::new(ANSWERS));
        let url = fake_replica(mode.clone()).await;
        let (ctx, mut routed) = context();
        ctx.serving.ready(url.clone());
        let client = reqwest::Client::new();
        let probe = probe();
        let watching = probe.watch(&client, &url, FAST, &ctx);
        tokio::pin!(watching);

        // While it answers, the probe goes on and the replica stays routed to.
        tokio::select! {
            _ = &mut watching => panic!("a healthy replica was given up"),
            () = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        assert_eq!(routed.borrow_and_update().as_deref(), Some(url.as_str()));

        // Hung: no longer routed to after the first failed probe, crashed after the third.
        mode.store(HANGS, Ordering::SeqCst);
        let why = watching.await;
        assert!(
            matches!(&why, StageError::Crashed(m) if m.contains("3 health probes in a row")),
            "{why:?}"
        );
        assert_eq!(*routed.borrow(), None);
    }

    #[tokio::test]
    async fn a_replica_that_answers_again_is_routed_to_again_and_a_wrong_answer_fails_a_probe() {
        let mode = Arc::new(AtomicU8::new(WRONG));
        let url = fake_replica(mode.clone()).await;
        let (ctx, mut routed) = context();
        ctx.serving.ready(url.clone());
        routed.mark_unchanged();
        let client = reqwest::Client::new();
        let probe = probe();
        let probes = HealthProbes {
            failures: 1000,
            ..FAST
        };
        let watching = probe.watch(&client, &url, probes, &ctx);
        tokio::pin!(watching);
        // A wrong prediction is a failed probe: the replica is taken out of the endpoint.
        tokio::select! {
            _ = &mut watching => panic!("gave up before its failures"),
            changed = routed.changed() => changed.unwrap(),
        }
        assert_eq!(*routed.borrow_and_update(), None);
        mode.store(ANSWERS, Ordering::SeqCst);
        tokio::select! {
            _ = &mut watching => panic!("gave up before its failures"),
            changed = routed.changed() => changed.unwrap(),
        }
        assert_eq!(routed.borrow().as_deref(), Some(url.as_str()));
    }
}
