//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use nexa_runtime::{Gpu, JobType};
use nexa_transport::Fingerprint;

/// Nexa Forge: ML lifecycle jobs (generate, audit, distill, train, evaluate, deploy) on
/// ephemeral GPU workers.
#[derive(Debug, Parser)]
#[command(name = "nexa", version)]
pub(crate) struct Cli {
    /// Log as human-readable text or as JSON lines (on stderr). NEXA_LOG sets the level.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "NEXA_LOG_FORMAT"
    )]
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a control plane and one local worker in this process (data in ./var).
    Up(UpArgs),
    /// Run the control plane: the job store and the port workers join.
    Server(ServerArgs),
    /// Join a control plane and run jobs.
    Worker(WorkerArgs),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Move a control plane's jobs between stores.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Submit a job: `nexa submit generate --param domain=physics --param num_samples=1000`.
    Submit(SubmitArgs),
    /// List jobs, newest first.
    Jobs(JobsArgs),
    /// Show one job.
    Job(JobArgs),
    /// Print a job's log (`-f` to follow it until the job ends).
    Logs(LogsArgs),
    /// Cancel a job.
    Cancel(CancelArgs),
    /// Delete a finished job with its log (a job that made a model version is kept).
    Delete(JobArgs),
    /// List the workers.
    Workers(ClientArgs),
    /// Wait for a job to finish, showing its progress; exits non-zero unless it succeeded.
    Wait(WaitArgs),
    /// List a job's artifacts, or download one.
    #[command(subcommand)]
    Artifacts(ArtifactsCommand),
    /// List the registered models, or show one with its versions and lineage.
    Models(ModelsArgs),
    /// Show each job type's params, with their defaults (no server needed).
    Params(ParamsArgs),
    /// List the deployed models (endpoints) and their replicas.
    Endpoints(ClientArgs),
    /// Ask a deployed model for predictions: `nexa predict iris --input rows.json`.
    Predict(PredictArgs),
    /// Undeploy an endpoint: cancel the deploy job of each of its replicas.
    Undeploy(UndeployArgs),
    /// Run pipelines (a DAG of job and gate steps, from a TOML or JSON file) and watch them.
    #[command(subcommand)]
    Pipeline(PipelineCommand),
    /// Measure the platform: `nexa bench run bench/throughput.toml --out a.json`, then
    /// `nexa bench compare a.json b.json`.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Run a scenario (a TOML file, flags, or both: flags win) and report its figures.
    Run(Box<BenchRunArgs>),
    /// Compare two results of `nexa bench run --out`, figure by figure.
    Compare(BenchCompareArgs),
}

/// A benchmark scenario's settings, each overriding the scenario file's.
#[derive(Debug, Args)]
pub(crate) struct BenchRunArgs {
    /// The scenario file (TOML; the fields are these flags' names with underscores).
    pub(crate) scenario: Option<PathBuf>,
    /// Write the result, as JSON, to this file.
    #[arg(long, short)]
    pub(crate) out: Option<PathBuf>,
    /// The scenario's name, for the report.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Jobs measured (after the warm-up); ignored with --duration.
    #[arg(long)]
    pub(crate) jobs: Option<u64>,
    /// Run for this many seconds instead of a number of jobs.
    #[arg(long)]
    pub(crate) duration: Option<f64>,
    /// Jobs run first, unmeasured.
    #[arg(long)]
    pub(crate) warmup: Option<u64>,
    /// Clients submitting and waiting at once (a closed loop: each submits, waits for the
    /// result, and submits again).
    #[arg(long)]
    pub(crate) clients: Option<u32>,
    /// Jobs per second arriving on their own (an open loop), instead of --clients.
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Jobs per submit: above 1, a batch (POST /api/jobs/batch, ControlPlane::submit_batch)
    /// waited for together.
    #[arg(long)]
    pub(crate) batch: Option<u32>,
    /// How clients reach the control plane: `library` (its Rust API), `http` (its HTTP
    /// API, over kept-alive connections) or `python` (the Python SDK, NexaForgeClient, in a
    /// `python3` beside: NEXA_BENCH_PYTHON names another).
    #[arg(long, value_enum)]
    pub(crate) client: Option<BenchClient>,
    /// The job type submitted (bench workers run every type as a no-op).
    #[arg(long)]
    pub(crate) job_type: Option<JobType>,
    /// Bench workers (each runs every job as a no-op, so the platform's own cost is what
    /// is measured).
    #[arg(long)]
    pub(crate) workers: Option<u32>,
    /// Jobs each bench worker runs at once.
    #[arg(long)]
    pub(crate) slots: Option<u32>,
    /// The control plane's store: `redb` (a file), `memory`, or `postgres` (--database-url).
    #[arg(long, value_enum)]
    pub(crate) store: Option<BenchStore>,
    /// The PostgreSQL database for --store postgres: one of its own (an empty database or
    /// schema), since the run's jobs stay there.
    #[arg(
        long,
        value_name = "URL",
        env = "NEXA_BENCH_DATABASE_URL",
        hide_env_values = true
    )]
    pub(crate) database_url: Option<String>,
    /// Stop a bench worker abruptly every this many seconds (and start another): its jobs
    /// run again once their lease runs out.
    #[arg(long, value_name = "SECONDS")]
    pub(crate) kill_worker_every: Option<f64>,
    /// Jobs that no worker can take, queued before the run: a control plane with a deep
    /// queue.
    #[arg(long)]
    pub(crate) queued: Option<u64>,
    /// Workers registered through the library that heartbeat once a second (and never ask
    /// for work) during the run.
    #[arg(long)]
    pub(crate) simulated_workers: Option<u32>,
    /// Run against a running control plane's HTTP API instead of one started here (its
    /// own workers run the jobs, with --params).
    #[arg(long, value_name = "URL")]
    pub(crate) api: Option<String>,
    /// The API token, for --api.
    #[arg(long, env = "NEXA_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// The submitted jobs' params, as JSON (default: the smallest valid params of the type).
    #[arg(long, value_name = "JSON")]
    pub(crate) params: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct BenchCompareArgs {
    /// The first result (the baseline).
    pub(crate) before: PathBuf,
    /// The second result.
    pub(crate) after: PathBuf,
    /// Every figure, the store calls' one by one included.
    #[arg(long)]
    pub(crate) all: bool,
}

/// How bench clients reach the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BenchClient {
    /// Its Rust API, in this process.
    Library,
    /// Its HTTP API.
    Http,
    /// The Python SDK over its HTTP API, in another process.
    Python,
}

/// The store of a benchmark's control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BenchStore {
    /// One redb file, as `nexa up` keeps it.
    Redb,
    /// In memory: the platform without a disk.
    Memory,
    /// PostgreSQL.
    Postgres,
}

#[derive(Debug, Subcommand)]
pub(crate) enum PipelineCommand {
    /// Run the pipeline a file declares (`.toml` or `.json`): `nexa pipeline run physics.toml`.
    Run(PipelineRunArgs),
    /// Show a run: each step's state, job, outputs and gate verdict.
    Status(PipelineIdArgs),
    /// List the runs, newest first.
    List(ClientArgs),
    /// Cancel a run and its running steps.
    Cancel(PipelineIdArgs),
    /// Run an ended run again, reusing the steps whose work is unchanged.
    Rerun(PipelineRerunArgs),
}

#[derive(Debug, Args)]
pub(crate) struct PipelineRunArgs {
    /// The pipeline: TOML or JSON (`name`, and `steps` by name).
    pub(crate) file: PathBuf,
    /// Wait for the run to end, showing its steps; exits non-zero unless it succeeded.
    #[arg(long)]
    pub(crate) wait: bool,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct PipelineIdArgs {
    /// The run, like pl-3.
    pub(crate) id: String,
    /// Wait for the run to end (status only).
    #[arg(long)]
    pub(crate) wait: bool,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct PipelineRerunArgs {
    /// The run, like pl-3.
    pub(crate) id: String,
    /// Run this step and every step after it again, even if unchanged.
    #[arg(long, value_name = "STEP")]
    pub(crate) from: Option<String>,
    /// The pipeline as fixed (TOML or JSON); the run's own when absent.
    #[arg(long, value_name = "FILE")]
    pub(crate) file: Option<PathBuf>,
    /// Wait for the new run to end.
    #[arg(long)]
    pub(crate) wait: bool,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct UndeployArgs {
    /// The endpoint: the deploy job's target, or the model's name.
    pub(crate) endpoint: String,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct PredictArgs {
    /// The endpoint: the deploy job's target, or the model's name.
    pub(crate) endpoint: String,
    /// A JSON file of rows (`[[1.0, 2.0], ...]`, or `{"inputs": [...]}`); `-` reads stdin.
    #[arg(long, value_name = "FILE", conflicts_with = "rows")]
    pub(crate) input: Option<PathBuf>,
    /// The rows inline, as JSON: `--rows '[[5.1, 3.5, 1.4]]'`.
    #[arg(long)]
    pub(crate) rows: Option<String>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ParamsArgs {
    /// One job type (default: all of them).
    pub(crate) job_type: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ArtifactsCommand {
    /// The artifacts a job made.
    List(JobArgs),
    /// Download an artifact (checked against its SHA-256).
    Get(ArtifactGetArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ArtifactGetArgs {
    /// The artifact: its URI (`nexa://artifacts/<sha256>`) or its SHA-256.
    pub(crate) artifact: String,
    /// Where to write it: a file, or a folder to put it in under its own name (default: the
    /// current folder).
    #[arg(short, long)]
    pub(crate) output: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ModelsArgs {
    /// A model's name, to show its versions.
    pub(crate) name: Option<String>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum StoreCommand {
    /// Copy every job, log line and worker of a data folder's store into an empty PostgreSQL
    /// database (stop the control plane first): `nexa store copy --from var --to
    /// postgres://nexa@db/nexa`, then start it with `--database-url`.
    Copy(StoreCopyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct StoreCopyArgs {
    /// The data folder whose store (nexa_forge.db) to copy.
    #[arg(long, value_name = "DIR")]
    pub(crate) from: PathBuf,
    /// The PostgreSQL database to copy into; it must hold no job.
    #[arg(long, value_name = "URL", env = "DATABASE_URL", hide_env_values = true)]
    pub(crate) to: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Make an API token and print it (only its hash is kept: in the data folder, or in the
    /// database with --database-url).
    Create(TokenCreateArgs),
    /// List the tokens by name and scope (never the tokens: only hashes are kept).
    List(TokenListArgs),
    /// Revoke every token of a name; a running server refuses them at once.
    Revoke(TokenRevokeArgs),
}

/// Where a control plane keeps its tokens.
#[derive(Debug, Args)]
pub(crate) struct TokenPlaceArgs {
    /// The data folder of the server the tokens are for.
    #[arg(long, default_value = "var", env = "NEXA_DATA")]
    pub(crate) data: PathBuf,
    /// The PostgreSQL database of the control planes the tokens are for, when they keep their
    /// jobs in one (their tokens are kept there, for all of them).
    #[arg(long, value_name = "URL", env = "DATABASE_URL", hide_env_values = true)]
    pub(crate) database_url: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct TokenListArgs {
    #[command(flatten)]
    pub(crate) place: TokenPlaceArgs,
}

#[derive(Debug, Args)]
pub(crate) struct TokenRevokeArgs {
    /// The name the token was made with.
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) place: TokenPlaceArgs,
}

#[derive(Debug, Args)]
pub(crate) struct TokenCreateArgs {
    #[command(flatten)]
    pub(crate) place: TokenPlaceArgs,
    /// A name to recognise the token by in the tokens file.
    #[arg(long, default_value = "token")]
    pub(crate) name: String,
    /// The token may read but not submit, cancel or act as a worker.
    #[arg(long, conflicts_with = "worker")]
    pub(crate) read_only: bool,
    /// A worker credential: it registers workers over HTTP and reports on their jobs (and
    /// reads), but cannot submit or cancel jobs. User tokens cannot act as workers.
    #[arg(long)]
    pub(crate) worker: bool,
}

/// Where the API is, for the client commands.
#[derive(Debug, Args, Clone)]
pub(crate) struct ClientArgs {
    /// The API's address, or several separated by commas: control planes sharing a
    /// PostgreSQL database, of which the leader answers (the others do not listen).
    #[arg(
        long,
        default_value = "http://127.0.0.1:8000/api",
        env = "NEXA_API_URL"
    )]
    pub(crate) api: String,
    /// The API token, if the server requires one.
    #[arg(long, env = "NEXA_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    /// The job type: generate, audit, distill, train, evaluate or deploy.
    pub(crate) job_type: Option<String>,
    /// A parameter as KEY=VALUE (repeatable); VALUE is read as JSON when it parses, else as text.
    /// For train and distill, names that are not params become hyperparameters.
    #[arg(long = "param", short = 'p', value_name = "KEY=VALUE")]
    pub(crate) params: Vec<String>,
    /// The whole request as a JSON file (as POST /api/jobs takes it); `-` reads stdin.
    #[arg(long, conflicts_with_all = ["job_type", "params"])]
    pub(crate) file: Option<PathBuf>,
    /// Higher runs first (-1000 to 1000).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) priority: Option<i32>,
    /// GPUs the job needs.
    #[arg(long)]
    pub(crate) gpus: Option<u32>,
    /// Tries in all.
    #[arg(long)]
    pub(crate) max_attempts: Option<u32>,
    /// Seconds one attempt may run.
    #[arg(long)]
    pub(crate) timeout: Option<u64>,
    /// Submitting again with the same key makes no second job.
    #[arg(long)]
    pub(crate) idempotency_key: Option<String>,
    /// Wait for the job to finish.
    #[arg(long)]
    pub(crate) wait: bool,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct JobsArgs {
    /// Only jobs in this state.
    #[arg(long)]
    pub(crate) status: Option<String>,
    /// Only jobs of this type.
    #[arg(long = "type")]
    pub(crate) job_type: Option<String>,
    /// Only jobs that ran on this worker.
    #[arg(long)]
    pub(crate) worker: Option<String>,
    /// How many.
    #[arg(long, default_value_t = 20)]
    pub(crate) limit: usize,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct JobArgs {
    /// The job, like job-7.
    pub(crate) id: String,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    /// The job, like job-7.
    pub(crate) id: String,
    /// Keep printing lines until the job ends.
    #[arg(long, short = 'f')]
    pub(crate) follow: bool,
    /// The attempt (default: the latest).
    #[arg(long)]
    pub(crate) attempt: Option<u32>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct CancelArgs {
    /// The job, like job-7.
    pub(crate) id: String,
    /// Why, for the job's record.
    #[arg(long)]
    pub(crate) reason: Option<String>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct WaitArgs {
    /// The job, like job-7.
    pub(crate) id: String,
    /// Give up after this many seconds (exit code 2).
    #[arg(long)]
    pub(crate) timeout: Option<f64>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// Settings of the control plane.
#[derive(Debug, Args)]
pub(crate) struct PlaneArgs {
    /// The data folder: the store (nexa_forge.db), the certificate (tls/) and the join token.
    #[arg(long, default_value = "var", env = "NEXA_DATA")]
    pub(crate) data: PathBuf,
    /// Keep the jobs in this PostgreSQL database instead of the data folder, e.g.
    /// postgres://nexa:PASSWORD@db.internal/nexa?sslmode=require (the tables are made, or
    /// migrated, at start).
    #[arg(long, value_name = "URL", env = "DATABASE_URL", hide_env_values = true)]
    pub(crate) database_url: Option<String>,
    /// The join token workers must present; made and kept in the data folder when absent.
    #[arg(long, env = "NEXA_JOIN_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Seconds a lease lasts without a heartbeat (workers heartbeat every 0.5 s); a worker
    /// silent this long is presumed lost and its job runs again elsewhere.
    #[arg(long, default_value_t = 2.5)]
    pub(crate) lease_ttl: f64,
    /// Hours after which a worker not heard from is forgotten (it can register again).
    #[arg(long, default_value_t = 24.0)]
    pub(crate) worker_retention_hours: f64,
    /// Delete finished jobs (with their logs) this many days after they finished; jobs that
    /// made a model version, and jobs still needed by others, are kept. Default: keep all.
    #[arg(long, value_name = "DAYS")]
    pub(crate) retain_days: Option<f64>,
    /// Where the HTTP API and the dashboard listen (TCP). Beyond loopback, a token is
    /// required (`nexa token create`).
    #[arg(long, default_value = "127.0.0.1:8000", env = "NEXA_HTTP")]
    pub(crate) http: SocketAddr,
    /// Keep artifacts' bytes in object storage, e.g. s3://bucket/prefix (credentials and
    /// endpoint from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL;
    /// gs:// and az:// likewise). Default: the data folder.
    #[arg(long, value_name = "URI", env = "NEXA_ARTIFACTS")]
    pub(crate) artifacts: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// The UDP address workers connect to.
    #[arg(long, default_value = "0.0.0.0:7443")]
    pub(crate) listen: SocketAddr,
    #[command(flatten)]
    pub(crate) plane: PlaneArgs,
}

/// What a worker offers and runs.
#[derive(Debug, Args)]
pub(crate) struct OfferArgs {
    /// Run jobs of a type with your own program, e.g. --handler train='python3 train.py'.
    /// Repeat for more types.
    #[arg(long = "handler", value_name = "TYPE=COMMAND", value_parser = parse_handler)]
    pub(crate) handlers: Vec<(JobType, String)>,
    /// A GPU this worker offers, as MODEL:MEMORY_MB or MEMORY_MB (repeat per GPU).
    #[arg(long = "gpu", value_name = "MODEL:MEMORY_MB", value_parser = parse_gpu)]
    pub(crate) gpus: Vec<Gpu>,
    /// A label jobs can ask for, as KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub(crate) labels: Vec<(String, String)>,
    /// Jobs run at once.
    #[arg(long, default_value_t = 1)]
    pub(crate) slots: usize,
    /// Seconds a cancelled job's program gets to stop before it is killed.
    #[arg(long, default_value_t = 10)]
    pub(crate) cancel_grace: u64,
    /// The least seconds between two training checkpoints a built-in train or distill job
    /// keeps with the control plane (0: every checkpoint it writes).
    #[arg(long, default_value_t = 5.0)]
    pub(crate) checkpoint_interval: f64,
    /// A folder whose files built-in stages may read by path or file:// URI (repeatable).
    /// Paths outside every root, through `..` or a symlink, are refused. `nexa up` adds the
    /// folder it runs in and its data folder.
    #[arg(long = "data-root", value_name = "DIR")]
    pub(crate) data_roots: Vec<PathBuf>,
    /// The address this worker's deploy replicas listen on, which the control plane must
    /// reach (default 127.0.0.1: a worker on the control plane's machine).
    #[arg(long, value_name = "HOST")]
    pub(crate) serve_host: Option<String>,
    /// Threads the built-in stages' CPU kernels may use (default: every core). Any number
    /// gives the same results, bit for bit.
    #[arg(long, env = "NEXA_THREADS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) threads: Option<u32>,
}

#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// The control plane's QUIC address (HOST:PORT), or several separated by commas: control
    /// planes sharing one PostgreSQL database, of which the worker joins whichever leads.
    #[arg(long, env = "NEXA_SERVER", required_unless_present = "api")]
    pub(crate) server: Option<String>,
    /// Trust the control plane whose certificate has this fingerprint (printed by `nexa server`).
    #[arg(long, env = "NEXA_FINGERPRINT", conflicts_with = "ca")]
    pub(crate) fingerprint: Option<Fingerprint>,
    /// Trust the control plane's certificate through this CA file (PEM).
    #[arg(long)]
    pub(crate) ca: Option<PathBuf>,
    /// The cluster's join token. Prefer --token-file or NEXA_JOIN_TOKEN: a command line is
    /// visible to every local user.
    #[arg(
        long,
        env = "NEXA_JOIN_TOKEN",
        hide_env_values = true,
        required_unless_present_any = ["token_file", "api"]
    )]
    pub(crate) token: Option<String>,
    /// A file holding the cluster's join token (the control plane keeps it in
    /// `<data>/join_token`); it wins over --token and NEXA_JOIN_TOKEN.
    #[arg(long, value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// Join over HTTP instead of QUIC, through the API at this URL (like
    /// http://host:8000/api), where UDP does not pass.
    /// The QUIC settings (--server, --fingerprint, --ca, the join token) are then not used.
    #[arg(long, env = "NEXA_API_URL")]
    pub(crate) api: Option<String>,
    /// With --api: the worker credential (`nexa token create --worker`), when the server has
    /// tokens. Prefer --worker-token-file or NEXA_WORKER_TOKEN.
    #[arg(
        long,
        env = "NEXA_WORKER_TOKEN",
        hide_env_values = true,
        requires = "api"
    )]
    pub(crate) worker_token: Option<String>,
    /// With --api: a file holding the worker credential; it wins over --worker-token.
    #[arg(long, value_name = "FILE", requires = "api")]
    pub(crate) worker_token_file: Option<PathBuf>,
    /// This worker's name (default: host name and process id).
    #[arg(long, env = "WORKER_ID")]
    pub(crate) name: Option<String>,
    /// Where jobs' checkpoints and outputs go.
    #[arg(long, default_value = "var/worker")]
    pub(crate) work_dir: PathBuf,
    #[command(flatten)]
    pub(crate) offer: OfferArgs,
}

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// The UDP address the control plane listens on (more workers can join it).
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub(crate) listen: SocketAddr,
    #[command(flatten)]
    pub(crate) plane: PlaneArgs,
    #[command(flatten)]
    pub(crate) offer: OfferArgs,
}

fn parse_handler(s: &str) -> Result<(JobType, String), String> {
    let (ty, command) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not TYPE=COMMAND, e.g. train='python3 train.py'"))?;
    let ty: JobType = ty.trim().parse().map_err(|e| format!("{e}"))?;
    if command.trim().is_empty() {
        return Err(format!("the command for {ty} jobs is empty"));
    }
    Ok((ty, command.to_owned()))
}

fn parse_gpu(s: &str) -> Result<Gpu, String> {
    let (model, memory) = match s.rsplit_once(':') {
        Some((model, memory)) => (model.trim().to_owned(), memory),
        None => ("GPU".to_owned(), s),
    };
    let memory_mb: u64 = memory
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not MODEL:MEMORY_MB or MEMORY_MB (e.g. H100:81559)"))?;
    if memory_mb == 0 {
        return Err(format!("{s:?}: a GPU needs some memory"));
    }
    Ok(Gpu { model, memory_mb })
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE, e.g. region=eu-west"))?;
    if k.trim().is_empty() {
        return Err(format!("{s:?}: the label's key is empty"));
    }
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handlers_gpus_and_labels_parse_or_say_why() {
        assert_eq!(
            parse_handler("train=python3 train.py --fast"),
            Ok((JobType::Train, "python3 train.py --fast".into()))
        );
        assert!(
            parse_handler("training=x")
                .unwrap_err()
                .contains("unknown job type")
        );
        assert!(parse_handler("train").unwrap_err().contains("TYPE=COMMAND"));
        assert_eq!(
            parse_gpu("NVIDIA H100:81559"),
            Ok(Gpu {
                model: "NVIDIA H100".into(),
                memory_mb: 81_559
            })
        );
        assert_eq!(parse_gpu("24576").unwrap().memory_mb, 24_576);
        assert!(parse_gpu("H100:lots").is_err());
        assert_eq!(parse_label("region=eu"), Ok(("region".into(), "eu".into())));
        assert!(parse_label("=eu").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
