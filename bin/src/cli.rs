//! The client commands: `submit`, `jobs`, `job`, `logs`, `cancel`, `workers`, `wait`,
//! `artifacts list|get`, `models`, and `token create`. They talk to the HTTP API (`--api`, or `NEXA_API_URL`), as any other client
//! would.

// `println!` and `print!` for the commands' output: a reader that goes away (`nexa jobs |
// head -1`) ends the program quietly, as it does `cat`, rather than panicking on the write.
macro_rules! println {
    () => {
        $crate::cli::out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

macro_rules! print {
    ($($arg:tt)*) => {
        $crate::cli::out(format_args!($($arg)*))
    };
}

mod pipeline;

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Map, Value, json};

use crate::http::auth::{self, Scope};
use nexa_runtime::JobType;

use crate::options::{
    ArtifactGetArgs, ArtifactsCommand, CancelArgs, ClientArgs, Command, JobArgs, JobsArgs,
    LogsArgs, ModelsArgs, ParamsArgs, PredictArgs, StoreCommand, SubmitArgs, TokenCommand,
    UndeployArgs,
};

/// Writes the commands' output; a closed stdout ends the program with success.
pub(crate) fn out(text: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("nexa: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// `nexa token create|list|revoke`.
/// `nexa store copy`: a data folder's store into an empty PostgreSQL database.
pub(crate) fn store(cmd: StoreCommand) -> Result<ExitCode> {
    let StoreCommand::Copy(args) = cmd;
    let path = args.from.join("nexa_forge.db");
    if !path.exists() {
        bail!(
            "{} has no store (no {}); name the data folder of a control plane with --from",
            args.from.display(),
            path.display()
        );
    }
    let config = nexa_runtime::StoreConfig::default();
    // Opened at time 0: nothing is recovered (expired) on the way, the jobs move as they are.
    let from = nexa_storage::RedbStore::open_at(&path, config.clone(), nexa_runtime::Timestamp(0))
        .with_context(|| {
            format!(
                "cannot open {} (is its control plane still running?)",
                path.display()
            )
        })?;
    let to = nexa_storage::PgStore::open_at(&args.to, config, nexa_runtime::Timestamp(0))?;
    let held: u64 = nexa_runtime::Store::counts(&to)?
        .iter()
        .map(|(_, n)| n)
        .sum();
    if held > 0 {
        bail!(
            "{} already holds {held} jobs; copy into an empty database (or a schema of its own: \
             add ?options=-csearch_path%3DNAME to the URL)",
            to.location()
        );
    }
    let copied = nexa_runtime::copy(std::sync::Arc::new(from), &to)
        .with_context(|| format!("cannot copy into {}", to.location()))?;
    // The API's tokens and HTTP workers' sessions go along: every control plane on the
    // database reads them there.
    let keep = auth::Keep::open(&args.from, Some(&args.to))?;
    let auth::Keep::Database(db) = &keep else {
        unreachable!("a database was given")
    };
    let mut tokens = 0;
    if auth::list(&keep)?.is_none() {
        let file = args.from.join(auth::TOKENS_FILE);
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                for entry in auth::parse(&text) {
                    auth::add(&keep, &entry)?;
                    tokens += 1;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
        }
    }
    let sessions = crate::http::copy_sessions(&args.from, db)?;
    println!(
        "copied {} jobs, {} log lines, {} workers, {tokens} API tokens and {sessions} HTTP worker sessions from {} into {}\n  start the control plane with --database-url (or DATABASE_URL); artifacts stay in {}",
        copied.jobs,
        copied.log_lines,
        copied.workers,
        path.display(),
        to.location(),
        args.from.join("artifacts").display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Where the tokens of `place` are kept.
fn token_keep(place: &crate::options::TokenPlaceArgs) -> Result<auth::Keep> {
    auth::Keep::open(&place.data, place.database_url.as_deref())
}

pub(crate) fn token(cmd: TokenCommand) -> Result<ExitCode> {
    let args = match cmd {
        TokenCommand::Create(args) => args,
        TokenCommand::List(args) => {
            let keep = token_keep(&args.place)?;
            let tokens = auth::list(&keep)
                .with_context(|| format!("cannot read {}", keep.tokens_place()))?;
            let Some(tokens) = tokens else {
                println!("no tokens: the API answers this machine's programs only");
                return Ok(ExitCode::SUCCESS);
            };
            if tokens.is_empty() {
                println!(
                    "no tokens are left: the server refuses every request until `nexa token create` makes one"
                );
            }
            for token in tokens {
                println!("{}\t{}", token.name, token.scope.as_str());
            }
            return Ok(ExitCode::SUCCESS);
        }
        TokenCommand::Revoke(args) => {
            let keep = token_keep(&args.place)?;
            let removed = auth::revoke(&keep, &args.name)
                .with_context(|| format!("cannot revoke a token in {}", keep.tokens_place()))?;
            if removed == 0 {
                bail!(
                    "no token is named {:?} (nexa token list shows them)",
                    args.name
                );
            }
            eprintln!("revoked {removed} token(s) named {:?}", args.name);
            if auth::list(&keep).is_ok_and(|left| left.is_some_and(|l| l.is_empty())) {
                eprintln!(
                    "no token is left: the server refuses every request until `nexa token create` makes one"
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    let scope = match (args.read_only, args.worker) {
        (true, _) => Scope::Read,
        (_, true) => Scope::Worker,
        _ => Scope::Full,
    };
    let keep = token_keep(&args.place)?;
    let token = auth::create(&keep, scope, &args.name)
        .with_context(|| format!("cannot add a token to {}", keep.tokens_place()))?;
    let server = match &keep {
        auth::Keep::Folder(data) => format!("the server with data in {}", data.display()),
        auth::Keep::Database(db) => format!("the control planes on {}", db.location()),
    };
    eprintln!(
        "made a {} token for {server} (shown once; only its hash is kept):",
        match scope {
            Scope::Read => "read-only",
            Scope::Worker => "worker",
            Scope::Full => "full",
        },
    );
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

/// Runs a client command.
pub(crate) fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Submit(args) => submit(args),
        Command::Jobs(args) => jobs(args),
        Command::Job(args) => job(args),
        Command::Logs(args) => logs(args),
        Command::Cancel(args) => cancel(args),
        Command::Delete(args) => delete(&args),
        Command::Workers(args) => workers(&args),
        Command::Wait(args) => wait(&args.client.clone(), &args.id, args.timeout),
        Command::Artifacts(ArtifactsCommand::List(args)) => artifacts(&args),
        Command::Artifacts(ArtifactsCommand::Get(args)) => download(&args),
        Command::Models(args) => models(&args),
        Command::Params(args) => params(&args),
        Command::Endpoints(args) => endpoints(&args),
        Command::Predict(args) => predict(&args),
        Command::Undeploy(args) => undeploy(&args),
        Command::Pipeline(cmd) => pipeline::run(cmd),
        Command::Up(_)
        | Command::Server(_)
        | Command::Worker(_)
        | Command::Token(_)
        | Command::Store(_)
        | Command::Bench(_) => {
            bail!("not a client command")
        }
    }
}

/// `nexa params [TYPE]`: each job type's params from the definition the server applies.
fn params(args: &ParamsArgs) -> Result<ExitCode> {
    let types = match &args.job_type {
        Some(name) => vec![name.parse::<JobType>()?],
        None => JobType::ALL.to_vec(),
    };
    print!("{}", params_text(&types));
    Ok(ExitCode::SUCCESS)
}

fn params_text(types: &[JobType]) -> String {
    let mut out = String::new();
    for (i, t) in types.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("{t}\n"));
        let width = t.params().iter().map(|f| f.name.len()).max().unwrap_or(0);
        for field in t.params() {
            let need = if field.required {
                "required"
            } else {
                "        "
            };
            out.push_str(&format!("  {:width$}  {need}  {}\n", field.name, field.doc));
        }
    }
    out
}

/// The API, as the client commands see it.
struct Api {
    /// Its addresses: one, or those of control planes sharing a database (`--api A,B`), of
    /// which the one that leads serves.
    bases: Vec<String>,
    /// The address that answered last.
    current: std::cell::Cell<usize>,
    token: Option<String>,
    agent: ureq::Agent,
    streaming: ureq::Agent,
}

/// Whether a request failed before reaching a server (nothing listens there: a standby), so
/// another address may be asked without sending it twice.
fn refused(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::ConnectionFailed => true,
        ureq::Error::Io(io) => io.kind() == std::io::ErrorKind::ConnectionRefused,
        _ => false,
    }
}

impl Api {
    fn new(args: &ClientArgs) -> Self {
        let config = |global: Option<Duration>| {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_connect(Some(Duration::from_secs(5)))
                .timeout_global(global)
                .build()
                .new_agent()
        };
        Self {
            bases: args
                .api
                .split(',')
                .map(|b| b.trim().trim_end_matches('/').to_owned())
                .filter(|b| !b.is_empty())
                .collect(),
            current: std::cell::Cell::new(0),
            token: args.token.clone().filter(|t| !t.is_empty()),
            agent: config(Some(Duration::from_secs(60))),
            streaming: config(None),
        }
    }

    /// Sends the request `make` builds for the URL of `path`, at the address that answered
    /// last, then at the others while nothing listens (a standby's).
    fn send(
        &self,
        path: &str,
        make: impl Fn(&str) -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let n = self.bases.len().max(1);
        let start = self.current.get();
        let mut failure = None;
        for i in 0..n {
            let k = (start + i) % n;
            let base = self.bases.get(k).map_or("", String::as_str);
            match make(&format!("{base}{path}")) {
                Ok(res) => {
                    self.current.set(k);
                    return Ok(res);
                }
                Err(e) if refused(&e) => failure = Some(e),
                Err(e) => return Err(self.unreachable(e)),
            }
        }
        Err(self.unreachable(failure.unwrap_or(ureq::Error::ConnectionFailed)))
    }

    fn unreachable(&self, e: ureq::Error) -> anyhow::Error {
        anyhow!(
            "cannot reach the Nexa Forge API at {}: {e}\n  is it running? start one with `nexa up`, or point --api (NEXA_API_URL) at it",
            self.bases.join(", ")
        )
    }

    fn auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => req.header("Authorization", &format!("Bearer {t}")),
            None => req,
        }
    }

    /// The answer's JSON, or the API's error as an error.
    fn answer(mut res: ureq::http::Response<ureq::Body>) -> Result<(u16, Value)> {
        let status = res.status().as_u16();
        let text = res
            .body_mut()
            .read_to_string()
            .context("cannot read the API's answer")?;
        let value: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .with_context(|| format!("the API answered HTTP {status} with: {text}"))?
        };
        if status >= 400 {
            let error = &value["error"];
            let message = error["message"].as_str().unwrap_or(&text);
            let code = error["code"].as_str().unwrap_or("error");
            let hint = if status == 401 {
                "\n  pass a token with --token or NEXA_TOKEN (make one with `nexa token create`)"
            } else {
                ""
            };
            bail!("{message} ({code}, HTTP {status}){hint}");
        }
        Ok((status, value))
    }

    fn get(&self, path: &str) -> Result<Value> {
        let res = self.send(path, |url| self.auth(self.agent.get(url)).call())?;
        Ok(Self::answer(res)?.1)
    }

    fn delete(&self, path: &str) -> Result<Value> {
        let res = self.send(path, |url| self.auth(self.agent.delete(url)).call())?;
        Self::answer(res).map(|(_, answer)| answer)
    }

    fn post(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Result<(u16, Value)> {
        let res = self.send(path, |url| {
            let mut req = self.auth(self.agent.post(url));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            req.send_json(body)
        })?;
        Self::answer(res)
    }
}

/// `KEY=VALUE`, the value read as JSON when it is JSON (numbers, booleans, lists), else text.
fn param(s: &str) -> Result<(String, Value)> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("--param {s:?} is not KEY=VALUE"))?;
    let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
    Ok((k.trim().to_owned(), value))
}

fn submit_body(args: &SubmitArgs) -> Result<Value> {
    if let Some(path) = &args.file {
        let text = if path.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        } else {
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?
        };
        return serde_json::from_str(&text).context("the job file is not JSON");
    }
    let job_type = args
        .job_type
        .clone()
        .ok_or_else(|| anyhow!("say which job type to submit, or give --file"))?;
    // For job types with hyperparameters, a name that is not one of the type's params is
    // one (`--param learning_rate=3e-4`); anything else goes to the server as given, which
    // names what it refuses.
    let fields = job_type
        .parse::<JobType>()
        .map(|t| t.params())
        .unwrap_or_default();
    let takes_hyper = fields.iter().any(|f| f.name == "hyperparameters");
    let mut params = Map::new();
    let mut hyper = Map::new();
    for p in &args.params {
        let (k, v) = param(p)?;
        if takes_hyper && !fields.iter().any(|f| f.name == k) {
            hyper.insert(k, v);
        } else {
            params.insert(k, v);
        }
    }
    if !hyper.is_empty() {
        params.insert("hyperparameters".into(), Value::Object(hyper));
    }
    let mut body = json!({"job_type": job_type, "params": params});
    let fields = [
        ("priority", args.priority.map(Value::from)),
        ("max_attempts", args.max_attempts.map(Value::from)),
        ("timeout_seconds", args.timeout.map(Value::from)),
        ("resources", args.gpus.map(|g| json!({"gpus": g}))),
    ];
    for (k, v) in fields {
        if let Some(v) = v {
            body[k] = v;
        }
    }
    Ok(body)
}

fn submit(args: SubmitArgs) -> Result<ExitCode> {
    let api = Api::new(&args.client);
    let body = submit_body(&args)?;
    let key = args.idempotency_key.as_deref();
    let headers: Vec<(&str, &str)> = key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
    let (status, job) = api.post("/jobs", &body, &headers)?;
    let id = job["job_id"].as_str().unwrap_or("?").to_owned();
    if args.client.json {
        println!("{job:#}");
    } else {
        let made = if status == 201 {
            "submitted"
        } else {
            "already submitted (same idempotency key)"
        };
        println!("{made} {id} ({})", job["status"].as_str().unwrap_or("?"));
        if let Some(replicas) = job["replica_job_ids"].as_array() {
            let ids: Vec<String> = replicas.iter().map(text).collect();
            println!("  one deploy job per replica: {}", ids.join(", "));
        }
        if let Some(reason) = job["pending_reason"].as_str() {
            println!("  waiting: {reason}");
        }
    }
    if args.wait {
        return wait(&args.client, &id, None);
    }
    Ok(ExitCode::SUCCESS)
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut q = String::new();
    for (k, v) in pairs {
        if let Some(v) = v {
            q.push(if q.is_empty() { '?' } else { '&' });
            q.push_str(k);
            q.push('=');
            q.push_str(&encode(v));
        }
    }
    q
}

fn size(v: &Value) -> String {
    let Some(n) = v.as_u64() else {
        return "-".into();
    };
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / f64::from(1 << 30)),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / f64::from(1 << 10)),
        n => format!("{n} B"),
    }
}

fn artifacts(args: &JobArgs) -> Result<ExitCode> {
    let api = Api::new(&args.client);
    let list = api.get(&format!("/jobs/{}/artifacts", encode(&args.id)))?;
    if args.client.json {
        println!("{list:#}");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = list["artifacts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|a| {
            vec![
                text(&a["name"]),
                text(&a["kind"]),
                size(&a["size"]),
                text(&a["uri"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("{} made no artifacts", args.id);
    } else {
        table(&["NAME", "KIND", "SIZE", "URI"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// The SHA-256 an artifact argument names: a `nexa://artifacts/` URI or the bare digest.
fn artifact_digest(arg: &str) -> Result<String> {
    let hex = arg
        .strip_prefix(nexa_runtime::ARTIFACT_URI_PREFIX)
        .unwrap_or(arg);
    hex.parse::<nexa_runtime::Digest>()
        .map(|d| d.to_string())
        .map_err(|_| {
            anyhow!("{arg:?} is not an artifact: give its URI (nexa://artifacts/<sha256>) or its SHA-256")
        })
}

fn download(args: &ArtifactGetArgs) -> Result<ExitCode> {
    use sha2::Digest as _;
    let api = Api::new(&args.client);
    let digest = artifact_digest(&args.artifact)?;
    let meta = api.get(&format!("/artifacts/{digest}"))?;
    let name = meta["name"].as_str().unwrap_or(&digest).to_owned();
    let target = match &args.output {
        Some(p) if p.is_dir() => p.join(&name),
        Some(p) => p.clone(),
        None => std::path::PathBuf::from(&name),
    };
    let res = api.send(&format!("/artifacts/{digest}/content"), |url| {
        api.auth(api.streaming.get(url)).call()
    })?;
    if res.status().as_u16() >= 400 {
        Api::answer(res)?;
        bail!("the download failed");
    }
    let part = target.with_extension("part");
    let mut file =
        std::fs::File::create(&part).with_context(|| format!("cannot write {}", part.display()))?;
    let mut body = res.into_body();
    let mut reader = body.as_reader();
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).context("the download broke off")?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", part.display()))?;
        total += n as u64;
    }
    file.sync_all().ok();
    let got: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if got != digest {
        let _ = std::fs::remove_file(&part);
        bail!("the download of {digest} hashes to {got}: damaged in transit, try again");
    }
    std::fs::rename(&part, &target)
        .with_context(|| format!("cannot write {}", target.display()))?;
    println!(
        "{} ({}, {total} bytes, sha256 checked)",
        target.display(),
        text(&meta["kind"])
    );
    Ok(ExitCode::SUCCESS)
}

fn models(args: &ModelsArgs) -> Result<ExitCode> {
    let api = Api::new(&args.client);
    let answer = match &args.name {
        Some(name) => api.get(&format!("/models/{}", encode(name)))?,
        None => api.get("/models")?,
    };
    if args.client.json {
        println!("{answer:#}");
        return Ok(ExitCode::SUCCESS);
    }
    let metrics = |v: &Value| -> String {
        v.as_object()
            .map(|m| {
                ["accuracy", "test_score", "final_loss", "teacher_agreement"]
                    .iter()
                    .filter_map(|k| {
                        m.get(*k)
                            .and_then(Value::as_f64)
                            .map(|x| format!("{k} {x:.4}"))
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let version_row = |v: &Value| {
        vec![
            format!("{}:{}", text(&v["name"]), text(&v["version"])),
            text(&v["made_by"]),
            text(&v["job_id"]),
            text(&v["generated_by"]),
            v["evaluations"]
                .as_array()
                .map(|e| e.iter().map(text).collect::<Vec<_>>().join(" "))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "-".into()),
            metrics(&v["metrics"]),
        ]
    };
    let header = [
        "MODEL",
        "MADE BY",
        "JOB",
        "DATA FROM",
        "EVALUATED BY",
        "METRICS",
    ];
    let rows: Vec<Vec<String>> = match &args.name {
        Some(_) => answer["versions"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(version_row)
            .collect(),
        None => answer["models"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|m| version_row(&m["latest"]))
            .collect(),
    };
    if rows.is_empty() {
        println!("no models are registered yet: a succeeded train job registers its model_id");
    } else {
        table(&header, &rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `2026-11-26T16:00:00.123Z` as `2026-11-26 16:00:00`.
fn short_time(v: &Value) -> String {
    v.as_str()
        .map(|t| t.get(..19).unwrap_or(t).replace('T', " "))
        .unwrap_or_else(|| "-".into())
}

/// A value of the API as the terminal shows it: strings bare, control characters escaped.
/// The items of a JSON array; none for anything else.
fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => printable(s),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `s` with control characters (but tabs) shown as escapes, so that what a job or a worker
/// wrote (a log line, an error, a GPU's name) cannot move the cursor, retitle or clear the
/// terminal that shows it.
fn printable(s: &str) -> String {
    if !s.chars().any(|c| c.is_control() && c != '\t') {
        return s.to_owned();
    }
    s.chars()
        .map(|c| match c {
            '\t' => c.to_string(),
            c if c.is_control() => c.escape_unicode().to_string(),
            c => c.to_string(),
        })
        .collect()
}

fn progress(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "-".into(), |p| format!("{:.0}%", p * 100.0))
}

/// Prints rows as aligned columns.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    let line = |out: &mut std::io::StdoutLock<'_>, cells: Vec<String>| {
        let last = cells.len() - 1;
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        let _ = writeln!(out, "{}", s.trim_end());
    };
    line(&mut out, header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(&mut out, row.clone());
    }
}

fn jobs(args: JobsArgs) -> Result<ExitCode> {
    let api = Api::new(&args.client);
    let path = format!(
        "/jobs{}",
        query(&[
            ("status", args.status.clone()),
            ("type", args.job_type.clone()),
            ("worker", args.worker.clone()),
            ("limit", Some(args.limit.to_string())),
        ])
    );
    let page = api.get(&path)?;
    if args.client.json {
        println!("{page:#}");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = page["jobs"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|j| {
            // One line: the reason a job waits, or the first line of its error (a
            // traceback's last lines are in `nexa job` and the logs).
            let info = j["pending_reason"]
                .as_str()
                .or_else(|| j["error"]["message"].as_str())
                .unwrap_or("");
            let info = printable(&first_line(info, 100));
            vec![
                text(&j["job_id"]),
                text(&j["job_type"]),
                text(&j["status"]),
                progress(&j["progress"]),
                text(&j["worker_id"]),
                short_time(&j["created_at"]),
                info,
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no jobs");
    } else {
        table(
            &[
                "JOB", "TYPE", "STATUS", "PROGRESS", "WORKER", "CREATED", "INFO",
            ],
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// How many tries a job had, and what they count against: its own failures against
/// `max_attempts`, and those lost to the platform, which do not count.
fn attempts_line(job: &Value) -> String {
    let failed_as = |platform: bool| {
        job["attempts"].as_array().map_or(0, |a| {
            a.iter()
                .filter(|a| a["outcome"]["status"] == "failed")
                .filter(|a| {
                    let class = a["outcome"]["error"]["class"].as_str().unwrap_or("");
                    matches!(class, "worker_lost" | "platform") == platform
                })
                .count()
        })
    };
    let mut line = format!(
        "{} (failures {} of {} allowed",
        text(&job["attempt"]),
        failed_as(false),
        text(&job["max_attempts"])
    );
    match failed_as(true) {
        0 => {}
        n => line.push_str(&format!("; {n} lost to the platform, not counted")),
    }
    line.push(')');
    line
}

/// The first line of `text`, cut to `max` characters (marked with `…`).
fn first_line(text: &str, max: usize) -> String {
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let mut out: String = first.chars().take(max).collect();
    if out.chars().count() < first.chars().count() || lines.next().is_some() {
        out.push('…');
    }
    out
}

fn job(args: JobArgs) -> Result<ExitCode> {
    let api = Api::new(&args.client);
    let job = api.get(&format!("/jobs/{}", encode(&args.id)))?;
    if args.client.json {
        println!("{job:#}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::new();
    let mut field = |k: &str, v: String| out.push_str(&format!("{k:<15} {v}\n"));
    field("job", text(&job["job_id"]));
    field("type", text(&job["job_type"]));
    field("status", text(&job["status"]));
    field("params", job["params"].to_string());
    field("resources", job["resources"].to_string());
    field("priority", text(&job["priority"]));
    field("created", short_time(&job["created_at"]));
    field("started", short_time(&job["started_at"]));
    field("finished", short_time(&job["finished_at"]));
    field("progress", progress(&job["progress"]));
    field("worker", text(&job["worker_id"]));
    field("attempts", attempts_line(&job));
    if let Some(r) = job["pending_reason"].as_str() {
        field("waiting", r.to_owned());
    }
    // A deploy job that serves: where to send requests, and whether its replica is ready.
    if job["job_type"] == "deploy" && job["status"] == "running" {
        let id = text(&job["job_id"]);
        let endpoints = api.get("/endpoints").unwrap_or_default();
        let serving = endpoints["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| {
                e["replicas"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r["job_id"] == id.as_str()))
            });
        if let Some(e) = serving {
            let ready = e["replicas"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["job_id"] == id.as_str() && r["ready"] == true);
            field(
                "endpoint",
                format!(
                    "{} ({}) — nexa predict {} --rows '[[...]]'",
                    text(&e["predict_url"]),
                    if ready { "ready" } else { "not ready yet" },
                    text(&e["name"])
                ),
            );
        }
    }
    // An audit's verdict and findings, where a user reads them at a glance.
    let output = &job["result"]["output"];
    if let Some(verdict) = output["verdict"].as_str() {
        field("verdict", verdict.to_owned());
        for f in output["findings"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            field(
                &format!("  {}", text(&f["severity"])),
                format!("{} ({})", text(&f["message"]), text(&f["check"])),
            );
        }
    }
    if !job["result"].is_null() {
        field("result", job["result"].to_string());
    }
    if !job["error"].is_null() {
        field(
            "error",
            format!(
                "{}: {}",
                text(&job["error"]["class"]),
                text(&job["error"]["message"])
            ),
        );
    }
    print!("{out}");
    if let Some(events) = job["events"].as_array() {
        println!("events:");
        for e in events {
            println!(
                "  {}  {:<10} {}",
                short_time(&e["at"]),
                text(&e["to"]),
                text(&e["message"])
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn logs(args: LogsArgs) -> Result<ExitCode> {
    let api = Api::new(&args.client);
    let id = encode(&args.id);
    if args.follow {
        return follow(&api, &id, args.attempt);
    }
    let mut from = 0;
    let mut out = std::io::stdout().lock();
    loop {
        let path = format!(
            "/jobs/{id}/logs{}",
            query(&[
                ("attempt", args.attempt.map(|a| a.to_string())),
                ("from_seq", Some(from.to_string())),
                ("limit", Some("10000".into())),
            ])
        );
        let page = api.get(&path)?;
        let lines = page["lines"].as_array().cloned().unwrap_or_default();
        if lines.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        for l in &lines {
            let _ = writeln!(out, "{}", printable(l["text"].as_str().unwrap_or("")));
        }
        from = page["next_seq"]
            .as_u64()
            .unwrap_or(from + lines.len() as u64);
    }
}

/// Prints a job's log as it is written, from the server-sent events of `?follow=true`.
fn follow(api: &Api, id: &str, attempt: Option<u32>) -> Result<ExitCode> {
    let path = format!(
        "/jobs/{id}/logs{}",
        query(&[
            ("follow", Some("true".into())),
            ("attempt", attempt.map(|a| a.to_string())),
        ])
    );
    let mut res = api.send(&path, |url| api.auth(api.streaming.get(url)).call())?;
    if res.status().as_u16() >= 400 {
        Api::answer(res)?;
        bail!("the API refused to stream the log");
    }
    let reader = BufReader::new(res.body_mut().as_reader());
    let mut event = String::new();
    let mut out = std::io::stdout().lock();
    for line in reader.lines() {
        let line = line.context("the log stream broke off")?;
        if let Some(name) = line.strip_prefix("event: ") {
            event = name.to_owned();
        } else if let Some(data) = line.strip_prefix("data: ") {
            let data: Value = serde_json::from_str(data).unwrap_or(Value::Null);
            match event.as_str() {
                "log" => {
                    let _ = writeln!(out, "{}", printable(data["text"].as_str().unwrap_or("")));
                    let _ = out.flush();
                }
                "attempt" => eprintln!("--- attempt {} ---", text(&data["attempt"])),
                "end" => {
                    let status = text(&data["status"]);
                    eprintln!("--- the job ended: {status} ---");
                    return Ok(exit_for(&status));
                }
                "error" => bail!("the log stream failed: {}", text(&data["message"])),
                _ => {}
            }
        }
    }
    bail!("the log stream ended before the job did")
}

fn cancel(args: CancelArgs) -> Result<ExitCode> {
    let api = Api::new(&args.client);
    let body = match &args.reason {
        Some(r) => json!({"reason": r}),
        None => json!({}),
    };
    let (_, job) = api.post(&format!("/jobs/{}/cancel", encode(&args.id)), &body, &[])?;
    if args.client.json {
        println!("{job:#}");
    } else {
        let status = text(&job["status"]);
        let note = if status == "cancelling" {
            " (its worker is stopping it)"
        } else {
            ""
        };
        println!("{}: {status}{note}", text(&job["job_id"]));
    }
    Ok(ExitCode::SUCCESS)
}

fn delete(args: &JobArgs) -> Result<ExitCode> {
    let api = Api::new(&args.client);
    api.delete(&format!("/jobs/{}", encode(&args.id)))?;
    println!("{} deleted", args.id);
    Ok(ExitCode::SUCCESS)
}

fn undeploy(args: &UndeployArgs) -> Result<ExitCode> {
    let api = Api::new(&args.client);
    let answer = api.delete(&format!("/endpoints/{}", encode(&args.endpoint)))?;
    if args.client.json {
        println!("{answer:#}");
    } else {
        let jobs: Vec<String> = items(&answer["cancelled"]).iter().map(text).collect();
        println!(
            "{} undeployed: cancelled {}",
            args.endpoint,
            jobs.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn endpoints(args: &ClientArgs) -> Result<ExitCode> {
    let api = Api::new(args);
    let answer = api.get("/endpoints")?;
    if args.json {
        println!("{answer:#}");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = answer["endpoints"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let replicas = e["replicas"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .map(|r| {
                            let state = if r["ready"] == true {
                                "ready".to_owned()
                            } else {
                                text(&r["status"])
                            };
                            format!("{} {state}", text(&r["job_id"]))
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            vec![
                text(&e["name"]),
                text(&e["model_id"]),
                format!(
                    "{}/{}",
                    text(&e["ready_replicas"]),
                    e["replicas"].as_array().map_or(0, Vec::len)
                ),
                printable(&replicas),
                text(&e["predict_url"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("nothing is deployed (nexa submit deploy --param model_id=NAME)");
    } else {
        table(
            &["ENDPOINT", "MODEL", "READY", "REPLICAS", "PREDICT URL"],
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The rows of `nexa predict`, from `--rows`, `--input FILE` or stdin: an array of rows, or
/// an object whose `inputs` is one.
fn predict_rows(args: &PredictArgs) -> Result<Value> {
    let text = match (&args.rows, &args.input) {
        (Some(rows), _) => rows.clone(),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("cannot read the rows from stdin")?;
            text
        }
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        (None, None) => bail!("give the rows: --input FILE (or - for stdin), or --rows JSON"),
    };
    let value: Value = serde_json::from_str(&text)
        .context("the rows are not JSON: give an array of rows, like [[5.1, 3.5, 1.4]]")?;
    let rows = match value {
        Value::Object(mut o) if o.contains_key("inputs") => o.remove("inputs").unwrap_or_default(),
        rows => rows,
    };
    match &rows {
        Value::Array(items) if items.iter().all(Value::is_array) && !items.is_empty() => Ok(rows),
        Value::Array(items) if items.iter().all(Value::is_number) && !items.is_empty() => {
            Ok(Value::Array(vec![rows]))
        }
        _ => bail!("the rows must be an array of arrays of numbers, like [[5.1, 3.5, 1.4]]"),
    }
}

fn predict(args: &PredictArgs) -> Result<ExitCode> {
    let rows = predict_rows(args)?;
    let api = Api::new(&args.client);
    let path = format!("/endpoints/{}/predict", encode(&args.endpoint));
    let (_, answer) = api.post(&path, &json!({"inputs": rows}), &[])?;
    println!("{answer:#}");
    Ok(ExitCode::SUCCESS)
}

fn workers(args: &ClientArgs) -> Result<ExitCode> {
    let api = Api::new(args);
    let answer = api.get("/workers")?;
    if args.json {
        println!("{answer:#}");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = answer["workers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|w| {
            let gpus = w["gpus"]
                .as_array()
                .map(|g| {
                    g.iter()
                        .map(|g| format!("{} ({} MiB)", text(&g["model"]), text(&g["memory_mb"])))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "-".into());
            let jobs = w["running_jobs"]
                .as_array()
                .map(|j| j.iter().map(text).collect::<Vec<_>>().join(","))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "-".into());
            vec![
                text(&w["worker_id"]),
                text(&w["status"]),
                text(&w["cpus"]),
                gpus,
                jobs,
                short_time(&w["last_heartbeat"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no workers");
    } else {
        table(
            &["WORKER", "STATUS", "CPUS", "GPUS", "JOBS", "LAST HEARTBEAT"],
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn exit_for(status: &str) -> ExitCode {
    if status == "succeeded" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

const FINISHED: [&str; 3] = ["succeeded", "failed", "cancelled"];

/// Polls the job until it ends, drawing a progress bar when stderr is a terminal.
fn wait(client: &ClientArgs, id: &str, timeout: Option<f64>) -> Result<ExitCode> {
    let api = Api::new(client);
    let deadline = match timeout {
        Some(t) if !(t.is_finite() && t >= 0.0) => bail!("--timeout must be a number of seconds"),
        Some(t) => Some(Instant::now() + Duration::from_secs_f64(t)),
        None => None,
    };
    let bar = std::io::stderr().is_terminal();
    let mut last = String::new();
    let mut first = true;
    loop {
        // The first look answers at once; then each waits up to a second for the job's end
        // (answered the moment it is stored), so the progress shown moves every second.
        let path = match (first, deadline) {
            (true, _) => format!("/jobs/{}", encode(id)),
            (false, Some(d)) => {
                let left = d.saturating_duration_since(Instant::now()).as_secs_f64();
                format!(
                    "/jobs/{}/wait?timeout={:.3}",
                    encode(id),
                    left.clamp(0.001, 1.0)
                )
            }
            (false, None) => format!("/jobs/{}/wait?timeout=1", encode(id)),
        };
        first = false;
        let job = api.get(&path)?;
        let status = text(&job["status"]);
        let line = status_line(&job);
        if bar {
            eprint!("\r\x1b[2K{line}");
        } else if line != last {
            eprintln!("{line}");
        }
        last = line;
        if FINISHED.contains(&status.as_str()) {
            if bar {
                eprintln!();
            }
            if client.json {
                println!("{job:#}");
            } else {
                println!("{}: {status}", text(&job["job_id"]));
                if !job["error"].is_null() {
                    println!(
                        "  {}: {}",
                        text(&job["error"]["class"]),
                        text(&job["error"]["message"])
                    );
                }
            }
            return Ok(exit_for(&status));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            if bar {
                eprintln!();
            }
            eprintln!("{id} has not finished within the timeout (it is {status})");
            return Ok(ExitCode::from(2));
        }
    }
}

fn status_line(job: &Value) -> String {
    let status = text(&job["status"]);
    let mut line = format!("{} {status}", text(&job["job_id"]));
    if let Some(p) = job["progress"].as_f64() {
        let filled = (p.clamp(0.0, 1.0) * 30.0).round() as usize;
        line.push_str(&format!(
            " [{}{}] {:>3.0}%",
            "#".repeat(filled),
            "-".repeat(30 - filled),
            p * 100.0
        ));
    }
    if let Some(r) = job["pending_reason"].as_str() {
        line.push_str(&format!(" ({r})"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_count_the_job_s_failures_apart_from_the_platform_s() {
        let failed =
            |class: &str| json!({"outcome": {"status": "failed", "error": {"class": class}}});
        let job = json!({
            "attempt": 4,
            "max_attempts": 3,
            "attempts": [failed("worker_lost"), failed("stage_error"), failed("platform"), {"outcome": null}],
        });
        assert_eq!(
            attempts_line(&job),
            "4 (failures 1 of 3 allowed; 2 lost to the platform, not counted)"
        );
        let fresh = json!({"attempt": 0, "max_attempts": 3, "attempts": []});
        assert_eq!(attempts_line(&fresh), "0 (failures 0 of 3 allowed)");
    }

    #[test]
    fn a_table_shows_the_first_line_of_an_error() {
        let traceback = "`python3 train.py` exited with status 1; last output:\nTraceback (most recent call last):\n  File \"train.py\"";
        assert_eq!(
            first_line(traceback, 100),
            "`python3 train.py` exited with status 1; last output:…"
        );
        assert_eq!(
            first_line("no worker is connected", 100),
            "no worker is connected"
        );
        assert_eq!(
            first_line(&"x".repeat(150), 100),
            format!("{}…", "x".repeat(100))
        );
        assert_eq!(first_line("", 100), "");
    }

    #[test]
    fn params_read_json_values_and_fall_back_to_text() {
        assert_eq!(
            param("num_samples=100").unwrap(),
            ("num_samples".into(), json!(100))
        );
        assert_eq!(
            param("domain=physics").unwrap(),
            ("domain".into(), json!("physics"))
        );
        assert_eq!(param("metrics=[\"f1\"]").unwrap().1, json!(["f1"]));
        assert_eq!(param("note=a=b").unwrap().1, json!("a=b"));
        assert!(param("nothing").is_err());
    }

    #[test]
    fn train_params_beyond_the_known_ones_are_hyperparameters() {
        use clap::Parser;
        let cli = crate::options::Cli::parse_from([
            "nexa",
            "submit",
            "train",
            "-p",
            "model_id=m",
            "-p",
            "dataset_uri=d.csv",
            "-p",
            "learning_rate=0.001",
            "--priority",
            "-5",
        ]);
        let Command::Submit(args) = cli.command else {
            panic!("not a submit");
        };
        let body = submit_body(&args).unwrap();
        assert_eq!(body["params"]["model_id"], json!("m"));
        assert_eq!(
            body["params"]["hyperparameters"]["learning_rate"],
            json!(0.001)
        );
        assert_eq!(body["priority"], json!(-5));
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            query(&[
                ("a", Some("x y&z".into())),
                ("b", None),
                ("c", Some("1".into()))
            ]),
            "?a=x%20y%26z&c=1"
        );
    }

    #[test]
    fn params_lists_every_field_of_a_type() {
        let text = params_text(&[JobType::Distill]);
        assert!(text.starts_with("distill\n"), "{text}");
        for field in JobType::Distill.params() {
            assert!(text.contains(field.name), "{text}");
        }
        let line = |name: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(name))
                .unwrap()
                .to_owned()
        };
        assert!(line("teacher_model").contains("required"), "{text}");
        assert!(!line("alpha").contains("required"), "{text}");
        assert!(text.contains("(default 0.5)"), "{text}");
    }

    #[test]
    fn what_jobs_and_workers_wrote_cannot_drive_the_terminal() {
        assert_eq!(printable("epoch 1\tloss 0.5"), "epoch 1\tloss 0.5");
        let shown = printable("\u{1b}]0;owned\u{7}\u{1b}[2Jdone\r");
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(
            shown.contains("\\u{1b}") && shown.ends_with("done\\u{d}"),
            "{shown:?}"
        );
        assert_eq!(text(&json!("H100\u{1b}[31m")), "H100\\u{1b}[31m");
    }
}
