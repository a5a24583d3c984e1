//! The node commands: `server`, `worker` and `up`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nexa_actors::{
    CommandStage, ControlPlane, ControlPlaneConfig, StageRegistry, WorkerConfig, WorkerNode,
    builtin_stages_serving, local_gpus,
};
use nexa_runtime::WorkerId;
use nexa_transport::Trust;
use tracing::info;

use crate::http::HttpApi;
use crate::http_worker::{HttpUplink, Registration};
use crate::options::{OfferArgs, PlaneArgs, ServerArgs, UpArgs, WorkerArgs};

/// Makes `dir` and the folders above it that are missing, for this user only (a folder that
/// exists keeps its mode): a data folder holds jobs' params, logs and the cluster's secrets.
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The join token: given, or kept in the data folder (made on first start).
fn join_token(plane: &PlaneArgs) -> Result<String> {
    if let Some(token) = &plane.token {
        if token.len() < 16 {
            bail!("the join token must be at least 16 characters long");
        }
        return Ok(token.clone());
    }
    let path = plane.data.join("join_token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        return Ok(token.trim().to_owned());
    }
    private_dir(&plane.data)
        .with_context(|| format!("cannot create the data folder {}", plane.data.display()))?;
    let token =
        crate::http::auth::random_hex(16).context("cannot read random bytes for a join token")?;
    write_private(&path, &token).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(token)
}

/// How the banner tells a worker the join token, without printing it (a terminal's scrollback
/// and logs are not secret): the file it is kept in, or the variable to set.
fn join_hint(plane: &PlaneArgs) -> String {
    match &plane.token {
        Some(_) => "(NEXA_JOIN_TOKEN set to the join token given)".to_owned(),
        None => format!("--token-file {}", plane.data.join("join_token").display()),
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())
}

/// The data folder, and where the jobs are when they are not in it.
fn data_note(plane: &PlaneArgs) -> String {
    match plane.database_url {
        Some(_) => format!("{} (jobs in PostgreSQL)", plane.data.display()),
        None => plane.data.display().to_string(),
    }
}

/// A control plane with its HTTP API.
struct Plane {
    plane: Arc<ControlPlane>,
    http: HttpApi,
    token: String,
}

impl Plane {
    async fn shutdown(self) {
        self.http.stop().await;
        self.plane.shutdown().await;
    }
}

async fn start_plane(listen: SocketAddr, args: &PlaneArgs) -> Result<Plane> {
    let (plane, token) = start_control_plane(listen, args).await?;
    let plane = Arc::new(plane);
    let http = match HttpApi::start(plane.clone(), &args.data, args.http) {
        Ok(http) => http,
        Err(e) => {
            plane.shutdown().await;
            return Err(e);
        }
    };
    Ok(Plane { plane, http, token })
}

async fn start_control_plane(
    listen: SocketAddr,
    plane: &PlaneArgs,
) -> Result<(ControlPlane, String)> {
    let token = join_token(plane)?;
    let mut config = ControlPlaneConfig::new(listen, &plane.data, token.clone());
    if !(plane.lease_ttl.is_finite() && (0.5..=3600.0).contains(&plane.lease_ttl)) {
        bail!("--lease-ttl must be between 0.5 and 3600 seconds");
    }
    config.store.lease_ttl = Duration::from_secs_f64(plane.lease_ttl);
    if !(plane.worker_retention_hours.is_finite()
        && (0.01..=24.0 * 365.0).contains(&plane.worker_retention_hours))
    {
        bail!("--worker-retention-hours must be between 0.01 and 8760");
    }
    config.worker_retention = Duration::from_secs_f64(plane.worker_retention_hours * 3600.0);
    if let Some(days) = plane.retain_days {
        // From a second (for trying it out) to a century.
        if !(days.is_finite() && (1.0 / 86_400.0..=36_500.0).contains(&days)) {
            bail!("--retain-days must be between 0.0000116 (one second) and 36500");
        }
        config.job_retention = Some(Duration::from_secs_f64(days * 86_400.0));
    }
    config.artifacts_remote = plane.artifacts.clone();
    config.database_url = plane.database_url.clone();
    let plane = ControlPlane::start(config).await.map_err(|e| {
        let hint = match &e {
            nexa_actors::StartError::Server(nexa_transport::ServerError::Bind { .. }) => {
                "; is another nexa running there? pick another address with --listen"
            }
            _ => "",
        };
        anyhow::anyhow!("cannot start the control plane: {e}{hint}")
    })?;
    Ok((plane, token))
}

/// The built-in stages, then the handlers given, which take precedence.
fn stages(offer: &OfferArgs) -> StageRegistry {
    if let Some(threads) = offer.threads {
        nexa_actors::set_cpu_threads(threads as usize);
    }
    let interval = Duration::try_from_secs_f64(offer.checkpoint_interval)
        .unwrap_or(nexa_actors::CHECKPOINT_INTERVAL);
    let mut stages = builtin_stages_serving(interval, offer.serve_host.clone());
    for (job_type, command) in &offer.handlers {
        stages.register(
            *job_type,
            CommandStage::new(command, Duration::from_secs(offer.cancel_grace)),
        );
    }
    stages
}

fn worker_config(
    server: SocketAddr,
    trust: Trust,
    token: &str,
    name: WorkerId,
    offer: &OfferArgs,
    work_dir: &Path,
) -> WorkerConfig {
    // Output paths a worker reports must mean the same thing from anywhere.
    let work_dir = std::path::absolute(work_dir).unwrap_or_else(|_| work_dir.to_path_buf());
    let mut config = WorkerConfig::new(server, trust, token, name, stages(offer), work_dir);
    config.gpus = if offer.gpus.is_empty() {
        local_gpus()
    } else {
        offer.gpus.clone()
    };
    config.labels = offer.labels.iter().cloned().collect();
    config.slots = offer.slots.max(1);
    config.cancel_grace = Duration::from_secs(offer.cancel_grace);
    config.data_roots = offer
        .data_roots
        .iter()
        .map(|r| std::path::absolute(r).unwrap_or_else(|_| r.clone()))
        .collect();
    config
}

/// How the banner speaks of a worker's GPUs.
fn gpus_note(gpus: &[nexa_runtime::Gpu]) -> String {
    if gpus.is_empty() {
        " on the CPU".to_owned()
    } else {
        let names: Vec<String> = gpus
            .iter()
            .map(|g| format!("{} ({} MiB)", g.model, g.memory_mb))
            .collect();
        format!(
            " on the CPU, and on GPUs for jobs that ask for them: {}",
            names.join(", ")
        )
    }
}

fn default_worker_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    format!("{host}-{}", std::process::id())
}

/// Waits for Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

/// Drains the worker on the first signal; a second one stops it at once.
async fn run_worker(node: WorkerNode) {
    shutdown_signal().await;
    info!("draining: finishing running jobs (press Ctrl-C again to stop now)");
    let drain = node.drain();
    tokio::pin!(drain);
    tokio::select! {
        () = &mut drain => {}
        () = shutdown_signal() => info!("stopping without draining"),
    }
}

pub(crate) async fn server(args: ServerArgs) -> Result<()> {
    let node = start_plane(args.listen, &args.plane).await?;
    let plane = &node.plane;
    let addr = plane.addr();
    let http = advertised(node.http.addr());
    say(&format!(
        "nexa control plane listening on {addr} (QUIC/UDP)\n  dashboard:   http://{http}/\n  API:         http://{http}/api (docs at http://{http}/docs)\n  data:        {}\n  fingerprint: {}\n\
         join a worker with:\n  nexa worker --server {} --fingerprint {} {} --handler train='python3 train.py'\n",
        data_note(&args.plane),
        plane.fingerprint(),
        advertised(addr),
        plane.fingerprint(),
        join_hint(&args.plane)
    ));
    // Until a signal, or until the plane cannot go on (it lost the database's leadership,
    // its scheduler failed): then the process exits with the reason, for its supervisor.
    let served = node.plane.run_until(shutdown_signal()).await;
    info!("shutting down");
    node.shutdown().await;
    served.map_err(|e| anyhow::anyhow!("the control plane stopped: {e}"))
}

/// Prints to stdout; a closed stdout (the reader went away) is not a reason to stop.
fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// The address to print for workers: an unspecified listen address is shown as loopback.
fn advertised(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    }
}

pub(crate) async fn worker(args: WorkerArgs) -> Result<()> {
    if let Some(api) = &args.api {
        return http_worker(api, &args).await;
    }
    let token = match (&args.token_file, &args.token) {
        (Some(file), _) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the join token from {}", file.display()))?
            .trim()
            .to_owned(),
        (None, Some(token)) => token.clone(),
        (None, None) => bail!("give the join token: --token-file FILE or NEXA_JOIN_TOKEN"),
    };
    // HOST:PORT, or several separated by commas: a control plane and its standbys.
    let mut servers = Vec::new();
    for server in args.server.as_deref().unwrap_or_default().split(',') {
        let server = server.trim();
        let addr = server
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve --server {server}"))?
            .next()
            .with_context(|| format!("--server {server} resolves to no address"))?;
        servers.push(addr);
    }
    let server = servers[0];
    let trust = match (args.fingerprint, &args.ca) {
        (Some(fp), _) => Trust::Fingerprint(fp),
        (None, Some(ca)) => Trust::CaFile(ca.clone()),
        (None, None) => bail!(
            "say how to trust the server: --fingerprint (printed by `nexa server`) or --ca FILE"
        ),
    };
    let name = args.name.clone().unwrap_or_else(default_worker_name);
    let name = WorkerId::new(name).context("invalid --name")?;
    let mut config = worker_config(server, trust, &token, name, &args.offer, &args.work_dir);
    config.also = servers[1..].to_vec();
    let node = WorkerNode::start(config)
        .await
        .with_context(|| format!("cannot join the control plane at {server}"))?;
    run_worker(node).await;
    Ok(())
}

/// `nexa worker --api URL`: the worker joins over HTTP.
async fn http_worker(api: &str, args: &WorkerArgs) -> Result<()> {
    if args.server.is_some() {
        info!("joining over HTTP at {api}; --server (NEXA_SERVER) is not used");
    }
    let credential = match (&args.worker_token_file, &args.worker_token) {
        (Some(file), _) => Some(
            std::fs::read_to_string(file)
                .with_context(|| {
                    format!("cannot read the worker credential from {}", file.display())
                })?
                .trim()
                .to_owned(),
        ),
        (None, token) => token.clone(),
    };
    let name = args.name.clone().unwrap_or_else(default_worker_name);
    let name = WorkerId::new(name).context("invalid --name (WORKER_ID)")?;
    // Where to connect over QUIC and how to trust it are not used over HTTP.
    let (no_server, no_trust) = (
        ([127, 0, 0, 1], 0).into(),
        Trust::CaFile(Default::default()),
    );
    let config = worker_config(no_server, no_trust, "", name, &args.offer, &args.work_dir);
    let registration = Registration {
        worker: config.id.clone(),
        cpus: config.cpus,
        memory_mb: config.memory_mb,
        gpus: config.gpus.clone(),
        labels: config.labels.clone(),
        job_types: config.stages.job_types().collect(),
    };
    let (uplink, welcome, events) = HttpUplink::join(api, credential, registration)
        .await
        .with_context(|| format!("cannot join the control plane at {api}"))?;
    say(&format!(
        "nexa worker {} joined {api} over HTTP{}\n",
        config.id,
        gpus_note(&config.gpus)
    ));
    let node = WorkerNode::start_over(Arc::new(uplink), welcome, events, config)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    run_worker(node).await;
    Ok(())
}

pub(crate) async fn up(args: UpArgs) -> Result<()> {
    let node = start_plane(args.listen, &args.plane).await?;
    let (plane, token) = (&node.plane, &node.token);
    let addr = plane.addr();
    let name = WorkerId::new("local").context("worker name")?;
    let work_dir = args.plane.data.join("worker");
    let mut config = worker_config(
        addr,
        Trust::Fingerprint(plane.fingerprint()),
        token,
        name,
        &args.offer,
        &work_dir,
    );
    // The local worker reads the files of the folder nexa up runs in and of its data folder.
    let here = std::env::current_dir().context("cannot tell the current folder")?;
    let data = std::path::absolute(&args.plane.data).unwrap_or_else(|_| args.plane.data.clone());
    config.data_roots.extend([here, data]);
    let config_gpus = config.gpus.clone();
    let roots: Vec<String> = config
        .data_roots
        .iter()
        .map(|r| r.display().to_string())
        .collect();
    let worker = WorkerNode::start(config)
        .await
        .context("cannot start the local worker")?;
    let http = advertised(node.http.addr());
    let mut banner = format!(
        "nexa is up: control plane on {addr}, data in {}\n  dashboard: http://{http}/\n  API:       http://{http}/api (docs at http://{http}/docs)\n",
        data_note(&args.plane)
    );
    banner.push_str(&format!(
        "  the local worker runs the built-in generate, audit, train, distill and evaluate stages{}{}\n",
        gpus_note(&config_gpus),
        if args.offer.handlers.is_empty() {
            "; --handler TYPE=COMMAND runs your own program instead"
        } else {
            ""
        }
    ));
    banner.push_str(&format!(
        "  it reads local files (paths, file://) under {} only; --data-root DIR adds a folder\n",
        roots.join(", ")
    ));
    banner.push_str(&format!(
        "  more workers can join: nexa worker --server {} --fingerprint {} {} --handler ...\n",
        advertised(addr),
        plane.fingerprint(),
        join_hint(&args.plane)
    ));
    say(&banner);
    // Until a signal (the worker drains), or until the plane cannot go on.
    let failure = tokio::select! {
        () = run_worker(worker) => None,
        why = node.plane.failed() => Some(why),
    };
    node.shutdown().await;
    match failure {
        Some(why) => Err(anyhow::anyhow!("the control plane stopped: {why}")),
        None => Ok(()),
    }
}
