//! `nexa up` keeping its jobs in PostgreSQL (`--database-url`): the lifecycle chain runs as it
//! does on the redb store, and a control plane killed mid-chain starts again from the
//! database without losing a job.
//!
//! Compiled with the `postgres-tests` feature and run under `scripts/with-postgres`, which
//! starts a server and sets `NEXA_TEST_DATABASE_URL` (`scripts/check` does both).
#![cfg(feature = "postgres-tests")]

use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;

use support::{NEXA, Node, get, post, start};

/// A schema of its own on the test server, as a database URL.
fn fresh_database(name: &str) -> String {
    let base = std::env::var("NEXA_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!("NEXA_TEST_DATABASE_URL is not set: run under scripts/with-postgres")
    });
    let schema = format!("nexa_{name}_{}", std::process::id());
    let mut admin = postgres::Client::connect(&base, postgres::NoTls).expect("connect");
    admin
        .batch_execute(&format!("create schema {schema}"))
        .expect("create schema");
    nexa_storage::in_schema(&base, &schema)
}

fn up(data: &std::path::Path, database: &str) -> Node {
    start(&["up", "--database-url", database], data)
}

/// Submits `job` and waits until it succeeded; returns it.
fn run(node: &Node, job: Value) -> Value {
    let (status, submitted) = post(node, "/api/jobs", job);
    assert_eq!(status, 201, "{submitted}");
    wait(node, submitted["job_id"].as_str().unwrap())
}

fn wait(node: &Node, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, job) = get(node, &format!("/api/jobs/{id}"));
        match job["status"].as_str() {
            Some("succeeded") => return job,
            Some("failed" | "cancelled") => panic!("{id} ended: {job}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "{id} is still {}", job["status"]);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_lifecycle_runs_on_postgres_and_survives_a_killed_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let database = fresh_database("up");
    let mut node = up(dir.path(), &database);
    let generated = run(
        &node,
        json!({"job_type": "generate", "params": {"domain": "physics", "num_samples": 600, "seed": 3}}),
    );
    let dataset = generated["result"]["artifacts"]["dataset"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, training) = post(
        &node,
        "/api/jobs",
        json!({"job_type": "train", "params": {"model_id": "pg-model", "dataset_uri": dataset}}),
    );
    assert_eq!(status, 201, "{training}");
    let training = training["job_id"].as_str().unwrap().to_owned();

    // The control plane dies with the training job submitted; the database keeps it.
    node.child.sigkill();
    let node = up(dir.path(), &database);
    let trained = wait(&node, &training);
    assert!(
        trained["result"]["artifacts"]["model"].is_string(),
        "{trained}"
    );
    run(
        &node,
        json!({"job_type": "evaluate", "params": {"model_id": "pg-model", "dataset_uri": dataset}}),
    );
    let (_, page) = get(&node, "/api/jobs?limit=10");
    let kinds: Vec<&str> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["evaluate", "train", "generate"]);

    // The rows an operator reads with psql.
    let mut client = postgres::Client::connect(&database, postgres::NoTls).unwrap();
    let rows = client
        .query("select job_type, state from nexa_jobs order by id", &[])
        .unwrap();
    let rows: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let expected = [
        ("generate", "succeeded"),
        ("train", "succeeded"),
        ("evaluate", "succeeded"),
    ]
    .map(|(t, s)| (t.to_owned(), s.to_owned()));
    assert_eq!(rows, expected);
}

#[test]
fn a_data_folders_jobs_move_into_postgres_with_nexa_store_copy() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = start(&["up"], dir.path());
    let generated = run(
        &node,
        json!({"job_type": "generate", "params": {"domain": "physics", "num_samples": 300}}),
    );
    node.child.sigterm();
    // A token made for the data folder goes along.
    let made = std::process::Command::new(NEXA)
        .args(["token", "create", "--name", "ops", "--data"])
        .arg(dir.path())
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(made.status.success());
    let ops = String::from_utf8_lossy(&made.stdout).trim().to_owned();

    let database = fresh_database("copy");
    let copy = |to: &str| {
        std::process::Command::new(NEXA)
            .args(["store", "copy", "--from"])
            .arg(dir.path())
            .args(["--to", to])
            .output()
            .unwrap()
    };
    let out = copy(&database);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.starts_with("copied 1 jobs, "), "{said}");
    assert!(said.contains(" 1 API tokens "), "{said}");
    // Twice is refused: the database holds jobs now.
    let again = copy(&database);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds 1 jobs"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // The same data folder (its artifacts) with the jobs in PostgreSQL, and its token, which
    // is now the database's (the file is left behind).
    std::fs::remove_file(dir.path().join("api_tokens")).unwrap();
    let node = up(dir.path(), &database);
    let job_url = format!(
        "{}/api/jobs/{}",
        node.base,
        generated["job_id"].as_str().unwrap()
    );
    assert_eq!(support::call("GET", &job_url, None, None).0, 401);
    let (_, job) = support::call("GET", &job_url, None, Some(&ops));
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["result"], generated["result"]);
    let dataset = job["result"]["artifacts"]["dataset"].as_str().unwrap();
    let audit = json!({"job_type": "audit", "params": {"dataset_uri": dataset}}).to_string();
    let (status, audit) = support::call(
        "POST",
        &format!("{}/api/jobs", node.base),
        Some(&audit),
        Some(&ops),
    );
    assert_eq!(status, 201, "{audit}");
    let url = format!(
        "{}/api/jobs/{}/wait?timeout=30",
        node.base,
        audit["job_id"].as_str().unwrap()
    );
    let (_, audited) = support::call("GET", &url, None, Some(&ops));
    assert_eq!(audited["status"], "succeeded", "{audited}");
}

/// A `nexa server` process on `database`, and its stdout's lines.
fn server(
    data: &std::path::Path,
    database: &str,
    udp: u16,
    http: u16,
) -> (support::Proc, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(NEXA)
        .args(["server", "--database-url", database, "--token", TOKEN])
        .args(["--listen", &format!("127.0.0.1:{udp}")])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .arg("--data")
        .arg(data)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    (support::Proc(child), rx)
}

/// The fingerprint a server's banner prints once it serves; `None` if it does not within
/// `wait`.
fn banner(lines: &std::sync::mpsc::Receiver<String>, wait: Duration) -> Option<String> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let line = lines.recv_timeout(left).ok()?;
        if let Some(fp) = line.trim().strip_prefix("fingerprint: ") {
            return Some(fp.to_owned());
        }
    }
}

const TOKEN: &str = "a-join-token-for-the-failover-test";

#[test]
fn a_standby_takes_over_from_a_killed_leader_without_losing_or_repeating_a_job() {
    const JOBS: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let database = fresh_database("failover");
    // Two planes as on two machines: addresses of their own, and the data folder's
    // certificate, lease key and join token the same (here: the same folder).
    let ports = |_| (support::free_port(true), support::free_port(false));
    let [(udp_a, http_a), (udp_b, http_b)] = [0, 1].map(ports);
    let (mut leader, leader_lines) = server(&data, &database, udp_a, http_a);
    let fingerprint = banner(&leader_lines, Duration::from_secs(60)).expect("the leader serves");
    let (_standby, standby_lines) = server(&data, &database, udp_b, http_b);
    assert_eq!(
        banner(&standby_lines, Duration::from_secs(2)),
        None,
        "a standby serves nothing"
    );

    let ran = dir.path().join("ran");
    let token_file = dir.path().join("join_token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let _worker = support::Proc(
        std::process::Command::new(NEXA)
            .args(["worker", "--server"])
            .arg(format!("127.0.0.1:{udp_a},127.0.0.1:{udp_b}"))
            .args([
                "--fingerprint",
                &fingerprint,
                "--name",
                "w1",
                "--slots",
                "2",
            ])
            .arg("--token-file")
            .arg(&token_file)
            .arg("--work-dir")
            .arg(dir.path().join("w1"))
            .arg("--handler")
            .arg(format!(
                r#"train=echo "$NEXA_JOB_ID" >> {}; sleep 0.3"#,
                ran.display()
            ))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("w1.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let call = |http: u16, method: &str, path: &str, body: Option<Value>| {
        let url = format!("http://127.0.0.1:{http}/api{path}");
        support::call(method, &url, body.map(|b| b.to_string()).as_deref(), None)
    };
    let ids: Vec<String> = (0..JOBS)
        .map(|n| {
            let body = json!({"job_type": "train", "params": {"model_id": format!("m{n}"), "dataset_uri": "file:///d.csv"}});
            let (status, job) = call(http_a, "POST", "/jobs", Some(body));
            assert_eq!(status, 201, "{job}");
            job["job_id"].as_str().unwrap().to_owned()
        })
        .collect();
    let started = || {
        std::fs::read_to_string(&ran)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while started() < 3 {
        assert!(Instant::now() < deadline, "no job started");
        std::thread::sleep(Duration::from_millis(20));
    }

    leader.sigkill();
    let killed = Instant::now();
    banner(&standby_lines, Duration::from_secs(30)).expect("the standby takes over");
    println!(
        "the standby served {:?} after the leader was killed",
        killed.elapsed()
    );

    // Every acknowledged job runs to success on the new leader, once.
    let deadline = Instant::now() + Duration::from_secs(120);
    for id in &ids {
        let job = loop {
            let (status, job) = call(http_b, "GET", &format!("/jobs/{id}"), None);
            if status == 200 && job["status"] == "succeeded" {
                break job;
            }
            assert!(
                !matches!(job["status"].as_str(), Some("failed" | "cancelled")),
                "{id}: {job}"
            );
            assert!(Instant::now() < deadline, "{id} is still {}", job["status"]);
            std::thread::sleep(Duration::from_millis(50));
        };
        let succeeded = job["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["outcome"]["status"] == "succeeded")
            .count();
        assert_eq!(succeeded, 1, "{id} succeeded once: {job}");
    }
    // The CLI given both addresses finds the one that serves.
    let out = std::process::Command::new(NEXA)
        .args(["wait", &ids[0], "--api"])
        .arg(format!(
            "http://127.0.0.1:{http_a}/api,http://127.0.0.1:{http_b}/api"
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("succeeded"),
        "{} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The worker followed the leader to its new address.
    let (_, workers) = call(http_b, "GET", "/workers", None);
    assert_eq!(workers["workers"][0]["worker_id"], "w1", "{workers}");
}

/// `nexa token ARGS… --database-url DATABASE`: its stdout, after it succeeded.
fn token_command(database: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(NEXA)
        .arg("token")
        .args(args)
        .args(["--database-url", database])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nexa token {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn tokens_and_http_worker_sessions_are_the_databases_and_outlive_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let database = fresh_database("tokens");
    let user = token_command(&database, &["create", "--name", "ci"]);
    let worker = token_command(&database, &["create", "--worker", "--name", "gpu-node"]);
    assert_eq!(
        token_command(&database, &["list"]),
        "ci\tfull\ngpu-node\tworker"
    );
    // Two planes with data folders of their own: the tokens can only come from the database.
    let ports = |_| (support::free_port(true), support::free_port(false));
    let [(udp_a, http_a), (udp_b, http_b)] = [0, 1].map(ports);
    let (mut leader, leader_lines) = server(&dir.path().join("a"), &database, udp_a, http_a);
    banner(&leader_lines, Duration::from_secs(60)).expect("the leader serves");
    let (_standby, standby_lines) = server(&dir.path().join("b"), &database, udp_b, http_b);
    let url = |http: u16, path: &str| format!("http://127.0.0.1:{http}/api{path}");
    let bearer = |token: &str| format!("Bearer {token}");

    let (status, _) = support::call("GET", &url(http_a, "/jobs"), None, None);
    assert_eq!(status, 401, "the database's tokens are required");
    let (status, body) = support::call("GET", &url(http_a, "/jobs"), None, Some(&user));
    assert_eq!(status, 200, "{body}");
    let register = json!({"worker_id": "h1", "cpus": 2, "job_types": ["train"]}).to_string();
    let (status, registered) = support::call(
        "POST",
        &url(http_a, "/workers/register"),
        Some(&register),
        Some(&worker),
    );
    assert_eq!(status, 200, "{registered}");
    let session = registered["session"].as_str().unwrap().to_owned();

    leader.sigkill();
    banner(&standby_lines, Duration::from_secs(30)).expect("the standby takes over");
    let (status, body) = support::call("GET", &url(http_b, "/jobs"), None, Some(&user));
    assert_eq!(status, 200, "the new leader takes the same token: {body}");
    // The worker goes on in the session the old leader opened.
    let beat = |session: &str| {
        support::call_with(
            "POST",
            &url(http_b, "/workers/h1/heartbeat"),
            &[
                ("Authorization", &bearer(&worker)),
                ("X-Nexa-Worker-Session", session),
                ("Content-Type", "application/json"),
            ],
            Some(r#"{"jobs": []}"#),
        )
    };
    let (status, body) = beat(&session);
    assert_eq!(status, 200, "{body}");
    let (status, _) = beat("not-the-session");
    assert_eq!(status, 403);

    // A token revoked from any machine is refused by the planes on the database.
    assert_eq!(token_command(&database, &["revoke", "ci"]), "");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = support::call("GET", &url(http_b, "/jobs"), None, Some(&user));
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            Instant::now() < deadline,
            "the revoked token is still taken"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, _) = support::call("GET", &url(http_b, "/jobs"), None, Some(&worker));
    assert_eq!(status, 200, "the other token still counts");
}

#[test]
fn nexa_bench_runs_on_postgres_and_refuses_a_database_that_holds_jobs() {
    let database = fresh_database("bench");
    let bench = || {
        std::process::Command::new(NEXA)
            .args(["bench", "run", "--store", "postgres", "--jobs", "30"])
            .args(["--warmup", "0", "--workers", "2", "--clients", "2"])
            .args(["--database-url", &database])
            .output()
            .unwrap()
    };
    let out = bench();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.starts_with("default: 30 jobs (0 did not succeed"),
        "{said}"
    );
    // Its jobs stay in the database: a second run there is refused.
    let again = bench();
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("holds 30 jobs"), "{err}");
}
