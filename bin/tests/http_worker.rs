//! `nexa worker --api`: a worker that joins over HTTP only runs the lifecycle end to end —
//! artifacts up and down, checkpoints, model lookups, cancels — with its own credential.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;

use support::{NEXA, Proc};

/// `nexa server` on loopback, its API on `http` (`127.0.0.1:0` for any port); its process
/// and the API's base URL (`http://…/api`).
fn server(data: &Path, http: &str) -> (Proc, String) {
    let mut child = Command::new(NEXA)
        .args(["server", "--listen", "127.0.0.1:0", "--http", http])
        .arg("--data")
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(data.join("server.stderr"))
                .unwrap(),
        )
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let api = loop {
        let line = lines
            .next()
            .expect("the server exited before printing its address")
            .unwrap();
        if let Some(at) = line.find("API:") {
            break line[at + 4..].split_whitespace().next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Proc(child), api)
}

/// `nexa worker --api` with `credential` in NEXA_WORKER_TOKEN, and nothing of QUIC: no
/// server address, fingerprint or join token.
fn http_worker(api: &str, credential: &str, dir: &Path, name: &str) -> Command {
    let mut cmd = Command::new(NEXA);
    cmd.args(["worker", "--checkpoint-interval", "0", "--work-dir"])
        .arg(dir.join(name))
        .env("NEXA_API_URL", api)
        .env("WORKER_ID", name)
        .env("NEXA_WORKER_TOKEN", credential)
        .env_remove("NEXA_SERVER")
        .env_remove("NEXA_FINGERPRINT")
        .env_remove("NEXA_JOIN_TOKEN")
        .env_remove("NEXA_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

fn token(data: &Path, flag: &str) -> String {
    let out = Command::new(NEXA)
        .args(["token", "create", "--data"])
        .arg(data)
        .arg(flag)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Status and JSON body of a request with the user's token.
fn call(method: &str, url: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent();
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("Authorization", format!("Bearer {token}"))
        .header("Content-Type", "application/json");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut res = agent.run(req.body(body).unwrap()).unwrap();
    let text = res.body_mut().read_to_string().unwrap_or_default();
    (
        res.status().as_u16(),
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// Polls the job until it reaches `state` (failing fast if it ends otherwise).
fn wait_state(api: &str, token: &str, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, job) = call("GET", &format!("{api}/jobs/{id}"), token, None);
        let status = job["status"].as_str().unwrap_or_default().to_owned();
        if status == state {
            return job;
        }
        let finished = ["succeeded", "failed", "cancelled"].contains(&status.as_str());
        assert!(!finished, "{id} ended {status}, not {state}: {job:#}");
        assert!(Instant::now() < deadline, "{id} is still {status}: {job:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn submit(api: &str, token: &str, job_type: &str, params: Value) -> String {
    let (status, job) = call(
        "POST",
        &format!("{api}/jobs"),
        token,
        Some(json!({"job_type": job_type, "params": params})),
    );
    assert_eq!(status, 201, "{job}");
    job["job_id"].as_str().unwrap().to_owned()
}

fn log_text(api: &str, token: &str, id: &str) -> String {
    let (_, logs) = call("GET", &format!("{api}/jobs/{id}/logs"), token, None);
    logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["text"].as_str().unwrap().to_owned() + "\n")
        .collect()
}

#[test]
fn a_worker_that_joins_over_http_only_runs_the_lifecycle_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let user = token(dir.path(), "--name=user");
    let credential = token(dir.path(), "--worker");
    let (_server, api) = server(dir.path(), "127.0.0.1:0");

    // A user's token is not a worker credential: the worker says so and stops.
    let refused = http_worker(&api, &user, dir.path(), "impostor")
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("refused the registration") && stderr.contains("--worker"),
        "{stderr}"
    );

    let log = std::fs::File::create(dir.path().join("worker.stderr")).unwrap();
    let _worker = Proc(
        http_worker(&api, &credential, dir.path(), "http-only")
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, workers) = call("GET", &format!("{api}/workers"), &user, None);
        let names: Vec<&str> = workers["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["worker_id"].as_str().unwrap())
            .collect();
        if names == ["http-only"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker never joined: {workers}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // generate: the dataset is uploaded to the control plane over HTTP.
    let generated = submit(
        &api,
        &user,
        "generate",
        json!({"domain": "physics", "num_samples": 800, "seed": 3}),
    );
    let job = wait_state(&api, &user, &generated, "succeeded");
    assert_eq!(job["worker_id"], "http-only");
    let dataset = job["result"]["artifacts"]["dataset"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(dataset.starts_with("nexa://artifacts/"), "{job:#}");

    // train: the dataset comes down, checkpoints and the model go up.
    let trained = submit(
        &api,
        &user,
        "train",
        json!({"model_id": "over-http", "dataset_uri": dataset, "epochs": 2,
               "hyperparameters": {"batch_size": 16, "checkpoint_every": 20}}),
    );
    let job = wait_state(&api, &user, &trained, "succeeded");
    let model = job["result"]["artifacts"]["model"].as_str().unwrap();
    assert!(model.starts_with("nexa://artifacts/"), "{job:#}");
    let logs = log_text(&api, &user, &trained);
    assert!(
        logs.lines()
            .any(|l| l.starts_with("checkpoint at step") && l.ends_with("kept")),
        "{logs}"
    );
    let (status, artifacts) = call(
        "GET",
        &format!("{api}/jobs/{trained}/artifacts"),
        &user,
        None,
    );
    assert_eq!(status, 200);
    assert!(artifacts.to_string().contains("checkpoint"), "{artifacts}");

    // evaluate: the model is found by its registered name.
    let evaluated = submit(
        &api,
        &user,
        "evaluate",
        json!({"model_id": "over-http", "dataset_uri": dataset}),
    );
    let job = wait_state(&api, &user, &evaluated, "succeeded");
    assert!(
        !job["result"]["metrics"].as_object().unwrap().is_empty(),
        "{job:#}"
    );

    // A cancel reaches the running job in the answer to a heartbeat.
    let long = submit(
        &api,
        &user,
        "train",
        json!({"model_id": "never", "dataset_uri": dataset, "epochs": 10000}),
    );
    wait_state(&api, &user, &long, "running");
    let (status, _) = call(
        "POST",
        &format!("{api}/jobs/{long}/cancel"),
        &user,
        Some(json!({})),
    );
    assert_eq!(status, 200);
    wait_state(&api, &user, &long, "cancelled");

    // The worker is still there, and still the only one.
    let (_, workers) = call("GET", &format!("{api}/workers"), &user, None);
    assert_eq!(workers["workers"][0]["status"], "alive", "{workers}");
}

#[test]
fn an_http_worker_keeps_its_session_when_the_server_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let user = token(dir.path(), "--name=user");
    let credential = token(dir.path(), "--worker");
    let (mut first, api) = server(dir.path(), "127.0.0.1:0");
    let port = api
        .split(':')
        .nth(2)
        .unwrap()
        .trim_end_matches("/api")
        .to_owned();
    let _worker = Proc(
        http_worker(&api, &credential, dir.path(), "steady")
            .stderr(std::fs::File::create(dir.path().join("worker.stderr")).unwrap())
            .spawn()
            .unwrap(),
    );
    let before = submit(
        &api,
        &user,
        "generate",
        json!({"domain": "physics", "num_samples": 50}),
    );
    wait_state(&api, &user, &before, "succeeded");

    // Killed, and started again on the same port: the worker's session is still good, so
    // it carries on under its own id (no other registrant could take it meanwhile).
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let (_second, again) = server(dir.path(), &format!("127.0.0.1:{port}"));
    assert_eq!(again, api);
    let after = submit(
        &api,
        &user,
        "generate",
        json!({"domain": "physics", "num_samples": 50}),
    );
    let job = wait_state(&api, &user, &after, "succeeded");
    assert_eq!(job["worker_id"], "steady", "{job:#}");
    let (_, workers) = call("GET", &format!("{api}/workers"), &user, None);
    assert_eq!(workers["workers"].as_array().unwrap().len(), 1, "{workers}");
    // What the server keeps of the session is its hash, for this user only.
    let kept = std::fs::read_to_string(dir.path().join("http_workers")).unwrap();
    assert!(kept.starts_with("steady "), "{kept}");
    assert!(!kept.contains(&credential));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("http_workers"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}
