//! The HTTP API of a real `nexa server` / `nexa up` process: HTTP workers, bad input, tokens,
//! the operations endpoints, and the CLI client.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;

use support::{NEXA, Node, api_agent as agent, call, call_with, get, post, start};

fn train_job() -> Value {
    json!({"job_type": "train", "params": {"model_id": "m", "dataset_uri": "file:///d.csv"}})
}

/// The header an HTTP worker's calls carry after it registered.
const SESSION: &str = "X-Nexa-Worker-Session";

/// The sessions the workers of these tests registered, by node and worker.
static SESSIONS: std::sync::Mutex<BTreeMap<String, String>> =
    std::sync::Mutex::new(BTreeMap::new());

fn session_of(node: &Node, worker: &str) -> String {
    SESSIONS.lock().unwrap()[&format!("{}/{worker}", node.base)].clone()
}

fn register(node: &Node, name: &str) {
    let (status, body) = post(
        node,
        "/api/workers/register",
        json!({"worker_id": name, "cpus": 4, "job_types": ["train"]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["worker_id"], json!(name));
    assert!(body["lease_ttl_seconds"].as_f64().unwrap() > 0.0);
    let session = body["session"].as_str().unwrap().to_owned();
    SESSIONS
        .lock()
        .unwrap()
        .insert(format!("{}/{name}", node.base), session);
}

fn next_job(node: &Node, worker: &str, wait: u32) -> (u16, Value) {
    let session = session_of(node, worker);
    call_with(
        "GET",
        &format!(
            "{}/api/workers/next_job?worker_id={worker}&wait_seconds={wait}",
            node.base
        ),
        &[(SESSION, &session)],
        None,
    )
}

/// The epoch and lease token of an assignment, which every report quotes.
fn lease_of(assignment: &Value) -> (u64, String) {
    (
        assignment["epoch"].as_u64().unwrap(),
        assignment["lease_token"].as_str().unwrap().to_owned(),
    )
}

/// A heartbeat of `worker`, in its session.
fn beat(node: &Node, worker: &str, body: Value) -> (u16, Value) {
    let session = session_of(node, worker);
    call_with(
        "POST",
        &format!("{}/api/workers/{worker}/heartbeat", node.base),
        &[(SESSION, &session), ("Content-Type", "application/json")],
        Some(&body.to_string()),
    )
}

#[test]
fn an_http_worker_leases_reports_and_completes_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&["server"], dir.path());
    register(&node, "py-1");
    let (status, job) = post(&node, "/api/jobs", train_job());
    assert_eq!(status, 201, "{job}");
    let id = job["job_id"].as_str().unwrap().to_owned();

    let (status, lease) = next_job(&node, "py-1", 5);
    assert_eq!(status, 200, "{lease}");
    assert_eq!(lease["job_id"], json!(id));
    assert_eq!(lease["attempt"], json!(1));
    let (epoch, token) = lease_of(&lease);
    // Nothing else is queued: the next ask finds nothing.
    assert_eq!(next_job(&node, "py-1", 0).0, 204);

    let (status, body) = post(
        &node,
        &format!("/api/jobs/{id}/started"),
        json!({"epoch": epoch, "lease_token": token}),
    );
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("running")),
        "{body}"
    );
    let batch = json!({"epoch": epoch, "lease_token": token, "first_seq": 0, "lines": ["epoch 1", "epoch 2"]});
    let (status, ack) = post(&node, &format!("/api/jobs/{id}/logs"), batch.clone());
    assert_eq!((status, &ack["next_seq"]), (200, &json!(2)), "{ack}");
    // Resending lines already stored is harmless: they are not doubled.
    let (status, ack) = post(&node, &format!("/api/jobs/{id}/logs"), batch);
    assert_eq!((status, &ack["next_seq"]), (200, &json!(2)), "{ack}");
    // Skipping lines is refused with the line to resend from.
    let gap = json!({"epoch": epoch, "lease_token": token, "first_seq": 5, "lines": ["x"]});
    let (status, err) = post(&node, &format!("/api/jobs/{id}/logs"), gap);
    assert_eq!(status, 409, "{err}");
    assert!(
        err["error"]["message"].as_str().unwrap().contains("line 2"),
        "{err}"
    );

    let (status, answer) = post(
        &node,
        &format!("/api/jobs/{id}/progress"),
        json!({"epoch": epoch, "lease_token": token, "progress": 0.5}),
    );
    assert_eq!((status, &answer["cancel_requested"]), (200, &json!(false)));
    assert_eq!(
        get(&node, &format!("/api/jobs/{id}")).1["progress"],
        json!(0.5)
    );

    // Waiting: a short wait answers the job as it is; a long one is answered by its end.
    let (status, now) = get(&node, &format!("/api/jobs/{id}/wait?timeout=0.2"));
    assert_eq!((status, &now["status"]), (200, &json!("running")), "{now}");
    for bad in ["0", "61", "-1", "soon"] {
        let (status, err) = get(&node, &format!("/api/jobs/{id}/wait?timeout={bad}"));
        assert_eq!(status, 400, "timeout={bad}: {err}");
    }
    assert_eq!(get(&node, "/api/jobs/job-999/wait?timeout=1").0, 404);
    let waiting = std::thread::spawn({
        let url = format!("{}/api/jobs/{id}/wait?timeout=30", node.base);
        move || support::call("GET", &url, None, None)
    });

    let result = json!({"metrics": {"loss": 0.25}, "artifacts": {"model": "file:///m"}, "output": {"note": "ok"}});
    let (status, done) = post(
        &node,
        &format!("/api/jobs/{id}/complete"),
        json!({"epoch": epoch, "lease_token": token, "result": result}),
    );
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], json!("succeeded"));
    assert_eq!(done["result"], result);
    assert_eq!(done["attempts"][0]["outcome"]["status"], json!("succeeded"));
    let (status, waited) = waiting.join().unwrap();
    assert_eq!(
        (status, &waited["status"]),
        (200, &json!("succeeded")),
        "{waited}"
    );

    let (_, logs) = get(&node, &format!("/api/jobs/{id}/logs"));
    let texts: Vec<&str> = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["epoch 1", "epoch 2"]);
    assert_eq!(logs["next_seq"], json!(2));
    let (_, events) = get(&node, &format!("/api/jobs/{id}/events"));
    let states: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["to"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["queued", "assigned", "running", "succeeded"]);
    // A second report after the end changes nothing.
    let (status, err) = post(
        &node,
        &format!("/api/jobs/{id}/fail"),
        json!({"epoch": epoch, "lease_token": token, "error": {"class": "stage_error", "message": "late"}}),
    );
    assert_eq!(status, 409, "{err}");
    assert_eq!(
        get(&node, &format!("/api/jobs/{id}")).1["status"],
        json!("succeeded")
    );
    // The listing filtered by worker finds it.
    let (_, page) = get(&node, "/api/jobs?worker=py-1&status=succeeded");
    assert_eq!(page["jobs"][0]["job_id"], json!(id));
    let (_, page) = get(&node, "/api/jobs?worker=someone-else");
    assert_eq!(page["jobs"], json!([]));
}

#[test]
fn a_silent_http_worker_loses_its_lease_and_its_late_report_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&["server", "--lease-ttl", "0.5"], dir.path());
    register(&node, "sleepy");
    register(&node, "steady");
    let (_, job) = post(&node, "/api/jobs", train_job());
    let id = job["job_id"].as_str().unwrap().to_owned();
    let (_, first) = next_job(&node, "sleepy", 5);
    let (stale, stale_token) = lease_of(&first);

    // "sleepy" never heartbeats: the job goes back to the queue and "steady" gets it.
    let (status, second) = next_job(&node, "steady", 20);
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["job_id"], json!(id));
    assert_eq!(second["attempt"], json!(2));
    assert!(second["epoch"].as_u64().unwrap() > stale);
    let (_, job) = get(&node, &format!("/api/jobs/{id}"));
    assert_eq!(
        job["attempts"][0]["outcome"]["error"]["class"],
        json!("worker_lost")
    );

    let (status, err) = post(
        &node,
        &format!("/api/jobs/{id}/complete"),
        json!({"epoch": stale, "lease_token": stale_token}),
    );
    assert_eq!(
        (status, &err["error"]["code"]),
        (409, &json!("stale_lease")),
        "{err}"
    );
    let (_, hb) = beat(
        &node,
        "sleepy",
        json!({"jobs": [{"job_id": id, "epoch": stale, "lease_token": stale_token}]}),
    );
    assert_eq!(hb["lost"], json!([id]), "{hb}");

    let (epoch, token) = lease_of(&second);
    let (status, _) = post(
        &node,
        &format!("/api/jobs/{id}/complete"),
        json!({"epoch": epoch, "lease_token": token}),
    );
    assert_eq!(status, 200);
    let (_, metrics) = (0, raw(&node, "/metrics"));
    assert!(
        metrics.contains("nexa_jobs{status=\"succeeded\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nexa_dispatch_latency_seconds_count 2"),
        "{metrics}"
    );
}

#[test]
fn heartbeats_keep_a_lease_and_carry_the_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&["server", "--lease-ttl", "0.5"], dir.path());
    register(&node, "w");
    let (_, job) = post(&node, "/api/jobs", train_job());
    let id = job["job_id"].as_str().unwrap().to_owned();
    let (_, lease) = next_job(&node, "w", 5);
    let (epoch, token) = lease_of(&lease);
    post(
        &node,
        &format!("/api/jobs/{id}/started"),
        json!({"epoch": epoch, "lease_token": token}),
    );
    let heartbeat =
        json!({"jobs": [{"job_id": id, "epoch": epoch, "lease_token": token, "progress": 0.1}]});
    let (status, err) = beat(
        &node,
        "w",
        json!({"jobs": [{"job_id": id, "epoch": epoch, "lease_token": token, "progress": 7}]}),
    );
    assert_eq!(
        (status, &err["error"]["field"]),
        (422, &json!("jobs[0].progress"))
    );
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let (status, ack) = beat(&node, "w", heartbeat.clone());
        assert_eq!(status, 200, "{ack}");
        assert_eq!(ack, json!({"cancel": [], "lost": []}));
        std::thread::sleep(Duration::from_millis(150));
    }
    // Three lease times later the job is still the worker's.
    let (_, job) = get(&node, &format!("/api/jobs/{id}"));
    assert_eq!(job["status"], json!("running"));
    assert_eq!(job["attempts"].as_array().unwrap().len(), 1);

    let (status, job) = post(
        &node,
        &format!("/api/jobs/{id}/cancel"),
        json!({"reason": "not needed"}),
    );
    assert_eq!(
        (status, &job["status"]),
        (200, &json!("cancelling")),
        "{job}"
    );
    let (_, ack) = beat(&node, "w", heartbeat);
    assert_eq!(ack["cancel"], json!([id]));
    let (status, job) = post(
        &node,
        &format!("/api/jobs/{id}/fail"),
        json!({"epoch": epoch, "lease_token": token, "error": {"class": "cancelled", "message": "stopped"}}),
    );
    assert_eq!(
        (status, &job["status"]),
        (200, &json!("cancelled")),
        "{job}"
    );
    let (_, workers) = get(&node, "/api/workers");
    assert_eq!(workers["workers"][0]["worker_id"], json!("w"));
    assert_eq!(workers["workers"][0]["running_jobs"], json!([]));
}

/// A lease token no lease has.
const NO_TOKEN: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[test]
fn only_the_worker_a_job_was_leased_to_can_report_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&["server"], dir.path());
    register(&node, "holder");
    let (_, job) = post(&node, "/api/jobs", train_job());
    let id = job["job_id"].as_str().unwrap().to_owned();
    let (_, lease) = next_job(&node, "holder", 5);
    let (epoch, token) = lease_of(&lease);
    assert_eq!(token.len(), 64);

    // Anyone can read the job and its epoch; the token is nowhere in what the API shows.
    let (_, shown) = get(&node, &format!("/api/jobs/{id}"));
    assert_eq!(shown["attempts"][0]["epoch"], json!(epoch));
    let (_, page) = get(&node, "/api/jobs");
    for answer in [shown.to_string(), page.to_string(), raw(&node, "/metrics")] {
        assert!(!answer.contains(&token), "the lease token leaked: {answer}");
    }

    // A forged outcome with the right epoch, without the token (or with another lease's), is
    // refused, the same way as a stale lease, and changes nothing.
    let forged = json!({"epoch": epoch, "lease_token": NO_TOKEN,
                        "result": {"artifacts": {"model": "https://evil.example/backdoored.pt"}}});
    let (status, err) = post(&node, &format!("/api/jobs/{id}/complete"), forged);
    assert_eq!(
        (status, &err["error"]["code"]),
        (409, &json!("stale_lease")),
        "{err}"
    );
    let (status, _) = post(
        &node,
        &format!("/api/jobs/{id}/fail"),
        json!({"epoch": epoch, "lease_token": NO_TOKEN, "error": {"class": "stage_error", "message": "x"}}),
    );
    assert_eq!(status, 409);
    let (status, _) = post(
        &node,
        &format!("/api/jobs/{id}/logs"),
        json!({"epoch": epoch, "lease_token": NO_TOKEN, "first_seq": 0, "lines": ["fake"]}),
    );
    assert_eq!(status, 409);
    // A heartbeat quoting the job without its token is told the lease is not its own.
    register(&node, "intruder");
    let (_, hb) = beat(
        &node,
        "intruder",
        json!({"jobs": [{"job_id": id, "epoch": epoch, "lease_token": NO_TOKEN}]}),
    );
    assert_eq!(hb["lost"], json!([id]), "{hb}");
    let (_, now) = get(&node, &format!("/api/jobs/{id}"));
    assert_eq!(now["status"], json!("assigned"), "{now}");
    let (_, logs) = get(&node, &format!("/api/jobs/{id}/logs"));
    assert_eq!(logs["lines"], json!([]), "{logs}");

    // The holder reports with its token.
    let (status, body) = post(
        &node,
        &format!("/api/jobs/{id}/complete"),
        json!({"epoch": epoch, "lease_token": token, "result": {"metrics": {"loss": 0.5}}}),
    );
    assert_eq!(status, 200, "{body}");
    let (_, done) = get(&node, &format!("/api/jobs/{id}"));
    assert_eq!(done["status"], json!("succeeded"));
    assert_eq!(done["result"]["artifacts"], json!({}));
}

fn raw(node: &Node, path: &str) -> String {
    let mut res = agent().get(format!("{}{path}", node.base)).call().unwrap();
    res.body_mut().read_to_string().unwrap()
}

#[test]
fn bad_input_gets_a_clear_error_and_never_a_500() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&["server"], dir.path());
    register(&node, "w");
    let (_, done) = post(&node, "/api/jobs", train_job());
    let done_id = done["job_id"].as_str().unwrap().to_owned();
    post(&node, &format!("/api/jobs/{done_id}/cancel"), json!({}));
    let keyed = json!({"job_type": "generate", "params": {"domain": "a", "num_samples": 5}, "idempotency_key": "k1"});
    assert_eq!(post(&node, "/api/jobs", keyed.clone()).0, 201);
    assert_eq!(
        post(&node, "/api/jobs", keyed).0,
        200,
        "same key, same spec: the same job"
    );

    let big = format!("{{\"job_type\": \"{}\"}}", "x".repeat(5 << 20));
    // (method, path, body, status, error code, offending field)
    type Case = (
        &'static str,
        String,
        Option<String>,
        u16,
        &'static str,
        Option<&'static str>,
    );
    let cases: Vec<Case> = vec![
        ("POST", "/api/jobs".into(), Some("{not json".into()), 400, "bad_request", None),
        ("POST", "/api/jobs".into(), Some(String::new()), 400, "bad_request", None),
        ("POST", "/api/jobs".into(), Some(r#"{"job_type": "train", "bogus": 1}"#.into()), 422, "validation_error", None),
        ("POST", "/api/jobs".into(), Some(r#"{"job_type": "juggle"}"#.into()), 422, "validation_error", Some("job_type")),
        ("POST", "/api/jobs".into(), Some(r#"{"job_type": "generate", "params": {"domain": "a"}}"#.into()), 422, "validation_error", Some("params.num_samples")),
        ("POST", "/api/jobs".into(), Some(r#"{"job_type": "generate", "params": {"domain": "a", "num_samples": "many"}}"#.into()), 422, "validation_error", Some("params.num_samples")),
        ("POST", "/api/jobs".into(), Some(r#"{"job_type": "generate", "params": {"domain": "a", "num_samples": 0}}"#.into()), 422, "validation_error", Some("params.num_samples")),
        ("POST", "/api/jobs".into(), Some(r#"{"job_type": "generate", "params": {"domain": "a", "num_samples": 1, "colour": "red"}}"#.into()), 422, "validation_error", Some("params.colour")),
        ("POST", "/api/jobs".into(), Some(r#"{"job_type": "generate", "params": {"domain": "a", "num_samples": 1}, "depends_on": ["nope"]}"#.into()), 422, "validation_error", Some("depends_on[0]")),
        ("POST", "/api/jobs".into(), Some(r#"{"job_type": "generate", "params": {"domain": "b", "num_samples": 9}, "idempotency_key": "k1"}"#.into()), 409, "conflict", None),
        ("POST", "/api/jobs".into(), Some(big), 413, "payload_too_large", None),
        ("GET", "/api/jobs/job-999999".into(), None, 404, "not_found", None),
        ("GET", "/api/jobs/%00garbage".into(), None, 404, "not_found", None),
        ("GET", "/api/jobs?limit=0".into(), None, 400, "bad_request", Some("limit")),
        ("GET", "/api/jobs?limit=abc".into(), None, 400, "bad_request", None),
        ("GET", "/api/jobs?status=sleeping".into(), None, 400, "bad_request", Some("status")),
        ("GET", "/api/jobs?cursor=zzz".into(), None, 400, "bad_request", Some("cursor")),
        ("GET", format!("/api/jobs/{done_id}/logs?attempt=7"), None, 400, "bad_request", Some("attempt")),
        ("DELETE", "/api/jobs".into(), None, 405, "method_not_allowed", None),
        ("GET", "/api/nothing-here".into(), None, 404, "not_found", None),
        ("POST", format!("/api/jobs/{done_id}/cancel"), Some("{}".into()), 409, "conflict", None),
        ("POST", format!("/api/jobs/{done_id}/cancel"), Some(r#"{"why": 1}"#.into()), 422, "validation_error", None),
        ("POST", "/api/workers/register".into(), Some(r#"{"worker_id": "bad name!"}"#.into()), 422, "validation_error", Some("worker_id")),
        ("POST", "/api/workers/register".into(), Some(r#"{"worker_id": "g", "gpus": [{"model": "x", "memory_mb": 0}]}"#.into()), 422, "validation_error", Some("gpus[0].memory_mb")),
        ("GET", "/api/workers/next_job?worker_id=ghost".into(), None, 403, "forbidden", None),
        ("GET", "/api/workers/next_job".into(), None, 400, "bad_request", None),
        ("GET", "/api/workers/next_job?worker_id=w&wait_seconds=999".into(), None, 400, "bad_request", Some("wait_seconds")),
        ("POST", "/api/workers/ghost/heartbeat".into(), Some("{}".into()), 403, "forbidden", None),
        ("POST", "/api/workers/w/heartbeat".into(), Some("{}".into()), 403, "forbidden", None),
        ("POST", format!("/api/jobs/{done_id}/complete"), Some(format!(r#"{{"epoch": 1, "lease_token": "{NO_TOKEN}", "result": {{"metrics": {{"a": "b"}}}}}}"#)), 422, "validation_error", None),
        ("POST", format!("/api/jobs/{done_id}/fail"), Some(format!(r#"{{"epoch": 1, "lease_token": "{NO_TOKEN}", "error": {{"class": "oops", "message": "m"}}}}"#)), 422, "validation_error", Some("error.class")),
        ("POST", format!("/api/jobs/{done_id}/progress"), Some(format!(r#"{{"epoch": 1, "lease_token": "{NO_TOKEN}", "progress": -1}}"#)), 422, "validation_error", Some("progress")),
        ("POST", format!("/api/jobs/{done_id}/started"), Some(format!(r#"{{"epoch": 1, "lease_token": "{NO_TOKEN}"}}"#)), 409, "stale_lease", None),
        ("POST", format!("/api/jobs/{done_id}/started"), Some(r#"{"epoch": 1, "lease_token": "xyz"}"#.into()), 422, "validation_error", Some("lease_token")),
        ("POST", format!("/api/jobs/{done_id}/started"), Some(r#"{"epoch": 1}"#.into()), 422, "validation_error", None),
        ("GET", format!("/api/artifacts/{}", "ab".repeat(32)), None, 404, "not_found", None),
        ("GET", format!("/api/artifacts/{}/content", "ab".repeat(32)), None, 404, "not_found", None),
        ("GET", "/api/artifacts/not-a-digest".into(), None, 404, "not_found", None),
        ("GET", "/api/artifacts/nexa:%2F%2Fartifacts%2F123".into(), None, 404, "not_found", None),
        ("POST", format!("/api/artifacts/{}", "ab".repeat(32)), Some("{}".into()), 405, "method_not_allowed", None),
        ("GET", "/api/jobs/job-999999/artifacts".into(), None, 404, "not_found", None),
        ("GET", format!("/api/jobs/{done_id}/artifacts"), None, 200, "", None),
        ("GET", "/api/models/gpt-4o".into(), None, 404, "not_found", None),
        ("GET", "/api/models/org%2Fmodel:2".into(), None, 404, "not_found", None),
        ("DELETE", "/api/models".into(), None, 405, "method_not_allowed", None),
    ];
    for (method, path, body, status, code, field) in cases {
        let (got, answer) = call(
            method,
            &format!("{}{path}", node.base),
            body.as_deref(),
            None,
        );
        assert_eq!(got, status, "{method} {path}: {answer}");
        if status == 200 {
            continue;
        }
        assert_eq!(
            answer["error"]["code"],
            json!(code),
            "{method} {path}: {answer}"
        );
        assert!(!answer["error"]["message"].as_str().unwrap().is_empty());
        if let Some(field) = field {
            assert_eq!(
                answer["error"]["field"],
                json!(field),
                "{method} {path}: {answer}"
            );
        }
    }
    // An unknown model's error names what is registered (nothing yet) and how to make one.
    let (_, answer) = get(&node, "/api/models/gpt-4o");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"gpt-4o\"") && message.contains("no model is registered yet"),
        "{message}"
    );
    assert_eq!(get(&node, "/api/models").1, json!({"models": []}));
    // The server is still well.
    assert_eq!(get(&node, "/healthz").0, 200);
}

fn token(data: &Path, read_only: bool) -> String {
    token_with(
        data,
        if read_only {
            "--read-only"
        } else {
            "--name=user"
        },
    )
}

/// A token made with `flag` (`--read-only`, `--worker`, or a name).
fn token_with(data: &Path, flag: &str) -> String {
    let mut cmd = Command::new(NEXA);
    cmd.args(["token", "create", "--data"]).arg(data).arg(flag);
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn tokens_guard_the_api_once_one_exists() {
    let dir = tempfile::tempdir().unwrap();
    // Beyond loopback without a token, the server refuses to start and says why.
    let out = Command::new(NEXA)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "0.0.0.0:0",
            "--data",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nexa token create"), "{err}");

    let full = token(dir.path(), false);
    let read = token(dir.path(), true);
    let node = start(&["server"], dir.path());
    let url = |p: &str| format!("{}{p}", node.base);
    let body = train_job().to_string();
    let (status, answer) = call("GET", &url("/api/jobs"), None, None);
    assert_eq!(
        (status, &answer["error"]["code"]),
        (401, &json!("unauthorized"))
    );
    assert_eq!(
        call("GET", &url("/api/jobs"), None, Some("nxf_wrong")).0,
        401
    );
    assert_eq!(call("GET", &url("/metrics"), None, None).0, 401);
    assert_eq!(call("GET", &url("/api/jobs"), None, Some(&read)).0, 200);
    let (status, answer) = call("POST", &url("/api/jobs"), Some(&body), Some(&read));
    assert_eq!(
        (status, &answer["error"]["code"]),
        (403, &json!("forbidden"))
    );
    let (status, made) = call("POST", &url("/api/jobs"), Some(&body), Some(&full));
    assert_eq!(status, 201);
    // Every change is in the audit log, with the name of the token that made it.
    let id = made["job_id"].as_str().unwrap().to_owned();
    let expected = format!("submit {id} by user");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(dir.path().join("node.stderr"))
        .unwrap()
        .contains(&expected)
    {
        assert!(Instant::now() < deadline, "no audit line {expected:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(call("GET", &url("/healthz"), None, None).0, 200);
    assert_eq!(call("GET", &url("/openapi.json"), None, None).0, 200);

    // The CLI passes its token.
    let out = Command::new(NEXA)
        .args(["jobs", "--json", "--api", &url("/api"), "--token", &full])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
    let out = Command::new(NEXA)
        .args(["jobs", "--api", &url("/api")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NEXA_TOKEN"));
}

#[test]
fn without_tokens_web_pages_and_foreign_hosts_cannot_drive_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&["server"], dir.path());
    let url = format!("{}/api/jobs", node.base);
    let body = train_job().to_string();
    let json = ("Content-Type", "application/json");
    // A page on another site posting a "simple" request, as a browser sends it.
    let (status, answer) = call_with(
        "POST",
        &url,
        &[
            ("Origin", "http://evil.example"),
            ("Content-Type", "text/plain"),
        ],
        Some(&body),
    );
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("origin \"http://evil.example\""),
        "{answer}"
    );
    // The same request with JSON is still a cross-origin one.
    let (status, _) = call_with(
        "POST",
        &url,
        &[("Origin", "http://evil.example"), json],
        Some(&body),
    );
    assert_eq!(status, 403);
    // A name rebound to 127.0.0.1 arrives with its own Host: refused, reads included.
    let (status, answer) = call_with("GET", &url, &[("Host", "attacker.example:18001")], None);
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("attacker.example"),
        "{answer}"
    );
    // A body that is not JSON cannot change anything.
    let (status, answer) = call_with("POST", &url, &[("Content-Type", "text/plain")], Some(&body));
    assert_eq!(status, 415, "{answer}");
    let (_, jobs) = call("GET", &url, None, None);
    assert_eq!(jobs["jobs"], json!([]), "nothing was submitted");
    // This machine's programs, and the dashboard from its own origin, are answered.
    let own = node.base.clone();
    let (status, _) = call_with("POST", &url, &[("Origin", &own), json], Some(&body));
    assert_eq!(status, 201);
    let (status, _) = call_with("GET", &url, &[("Host", "localhost")], None);
    assert_eq!(status, 200);
    // The dashboard runs only its own script and is never framed.
    let res = agent().get(format!("{}/", node.base)).call().unwrap();
    let policy = res.headers()["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("frame-ancestors 'none'") && policy.contains("script-src 'sha256-"));
    assert_eq!(res.headers()["x-frame-options"], "DENY");
    // Each type's params, as the server defines them.
    let (status, types) = call("GET", &format!("{}/api/job_types", node.base), None, None);
    assert_eq!(status, 200);
    let distill = types["job_types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["job_type"] == "distill")
        .unwrap();
    let names: Vec<&str> = distill["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"alpha") && names.contains(&"options"),
        "{names:?}"
    );
    assert!(
        distill["builtin_hyperparameters"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["name"] != "base"),
        "{distill}"
    );
}

#[test]
fn a_server_whose_token_file_goes_missing_refuses_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let full = token(dir.path(), false);
    let node = start(&["server"], dir.path());
    let url = format!("{}/api/jobs", node.base);
    assert_eq!(call("GET", &url, None, Some(&full)).0, 200);
    let file = dir.path().join("api_tokens");
    let kept = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    for token in [None, Some(full.as_str())] {
        let (status, answer) = call("GET", &url, None, token);
        assert_eq!(status, 503, "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("was removed"),
            "{answer}"
        );
    }
    std::fs::write(&file, "not a token line\n").unwrap();
    assert_eq!(call("GET", &url, None, None).0, 503);
    std::fs::write(&file, &kept).unwrap();
    assert_eq!(call("GET", &url, None, Some(&full)).0, 200);
    assert_eq!(call("GET", &url, None, None).0, 401);
}

#[test]
fn workers_hold_their_own_credentials_and_cannot_take_another_s_id() {
    let dir = tempfile::tempdir().unwrap();
    let user = token(dir.path(), false);
    let worker = token_with(dir.path(), "--worker");
    let other_worker = token_with(dir.path(), "--worker");
    // `nexa up`: its local worker, "local", is connected over QUIC.
    let node = start(&["up"], dir.path());
    let url = |p: &str| format!("{}{p}", node.base);
    let json_type = ("Content-Type", "application/json");
    let registration = |name: &str| json!({"worker_id": name, "job_types": ["train"]}).to_string();
    let register_as = |token: &str, name: &str| {
        call_with(
            "POST",
            &url("/api/workers/register"),
            &[("Authorization", &format!("Bearer {token}")), json_type],
            Some(&registration(name)),
        )
    };

    // A user's token cannot act as a worker; a worker credential cannot submit.
    let (status, err) = register_as(&user, "w1");
    assert_eq!(status, 403, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--worker"),
        "{err}"
    );
    let (status, _) = call(
        "POST",
        &url("/api/jobs"),
        Some(&train_job().to_string()),
        Some(&worker),
    );
    assert_eq!(status, 403);
    // A worker credential reads.
    assert_eq!(call("GET", &url("/api/jobs"), None, Some(&worker)).0, 200);

    let (status, first) = register_as(&worker, "w1");
    assert_eq!(status, 200, "{first}");
    let session = first["session"].as_str().unwrap().to_owned();
    // Another credential cannot take w1 over, nor anyone the QUIC worker's id.
    let (status, err) = register_as(&other_worker, "w1");
    assert_eq!(
        (status, &err["error"]["code"]),
        (409, &json!("conflict")),
        "{err}"
    );
    let (status, err) = register_as(&worker, "local");
    assert_eq!(status, 409, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not registered here over HTTP")
    );

    // Asking for work needs w1's session with w1's credential.
    let ask = url("/api/workers/next_job?worker_id=w1");
    let bearer = |t: &str| format!("Bearer {t}");
    for headers in [
        vec![("Authorization", bearer(&worker))],
        vec![
            ("Authorization", bearer(&other_worker)),
            (SESSION, session.clone()),
        ],
        vec![
            ("Authorization", bearer(&worker)),
            (SESSION, "0".repeat(32)),
        ],
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, err) = call_with("GET", &ask, &headers, None);
        assert_eq!(status, 403, "{headers:?}: {err}");
    }
    let (status, _) = call_with(
        "GET",
        &ask,
        &[("Authorization", &bearer(&worker)), (SESSION, &session)],
        None,
    );
    assert_eq!(status, 204);
    // Registering again (a restarted worker) makes a new session; the old one is gone.
    let (_, again) = register_as(&worker, "w1");
    assert_ne!(again["session"], first["session"]);
    let (status, _) = call_with(
        "GET",
        &ask,
        &[("Authorization", &bearer(&worker)), (SESSION, &session)],
        None,
    );
    assert_eq!(status, 403);
}

#[test]
fn finished_jobs_are_deleted_on_request_or_after_the_retention_time() {
    let dir = tempfile::tempdir().unwrap();
    // Kept for about 4.3 s after they finish.
    let node = start(&["server", "--retain-days", "0.00005"], dir.path());
    let url = |p: &str| format!("{}{p}", node.base);
    let (_, queued) = post(&node, "/api/jobs", train_job());
    let queued = queued["job_id"].as_str().unwrap().to_owned();
    let (status, err) = call("DELETE", &url(&format!("/api/jobs/{queued}")), None, None);
    assert_eq!(
        (status, &err["error"]["code"]),
        (409, &json!("conflict")),
        "{err}"
    );
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cancel it first"),
        "{err}"
    );

    post(&node, &format!("/api/jobs/{queued}/cancel"), json!({}));
    let out = Command::new(NEXA)
        .args(["delete", &queued, "--api", &url("/api")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{queued} deleted")
    );
    assert_eq!(get(&node, &format!("/api/jobs/{queued}")).0, 404);
    assert_eq!(
        call("DELETE", &url(&format!("/api/jobs/{queued}")), None, None).0,
        404
    );

    // Retention: a finished job goes by itself.
    let (_, old) = post(&node, "/api/jobs", train_job());
    let old = old["job_id"].as_str().unwrap().to_owned();
    post(&node, &format!("/api/jobs/{old}/cancel"), json!({}));
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&node, &format!("/api/jobs/{old}")).0 != 404 {
        assert!(Instant::now() < deadline, "{old} was never deleted");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_second_server_on_a_busy_port_says_which_flag_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&["server"], dir.path());
    let busy = node.base.trim_start_matches("http://").to_owned();
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(NEXA)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--http",
            &busy,
            "--data",
        ])
        .arg(other.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.contains(&busy) && last.contains("--http"), "{err}");
    assert_eq!(last.matches("in use").count(), 1, "the cause once: {last}");
}

#[test]
fn the_api_describes_itself_and_serves_the_dashboard() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&["server"], dir.path());
    let (status, doc) = get(&node, "/openapi.json");
    assert_eq!(status, 200);
    for path in [
        "/api/jobs",
        "/api/jobs/{id}",
        "/api/jobs/{id}/cancel",
        "/api/jobs/{id}/logs",
        "/api/jobs/{id}/events",
        "/api/workers",
        "/api/workers/register",
        "/api/workers/{id}/heartbeat",
        "/api/workers/next_job",
        "/healthz",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is not described");
    }
    assert!(doc["components"]["schemas"]["JobBody"].is_object());
    assert!(raw(&node, "/docs").contains("openapi.json"));
    assert!(raw(&node, "/").contains("<html"));
    let metrics = raw(&node, "/metrics");
    for name in [
        "nexa_jobs{status=\"queued\"}",
        "nexa_queue_depth",
        "nexa_workers{status=\"alive\"}",
        "nexa_dispatch_latency_seconds_bucket{le=\"+Inf\"}",
        "nexa_leases_expired_total",
        "nexa_http_requests_total{status=\"2xx\"}",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
}

#[test]
fn following_a_log_streams_every_line_and_ends_with_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&["server"], dir.path());
    register(&node, "w");
    let (_, job) = post(&node, "/api/jobs", train_job());
    let id = job["job_id"].as_str().unwrap().to_owned();
    let url = format!("{}/api/jobs/{id}/logs?follow=true", node.base);
    let reader = std::thread::spawn(move || {
        let mut res = agent().get(&url).call().unwrap();
        assert_eq!(
            res.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        let mut text = String::new();
        res.body_mut()
            .as_reader()
            .read_to_string(&mut text)
            .unwrap();
        text
    });
    let (_, lease) = next_job(&node, "w", 5);
    let (epoch, token) = lease_of(&lease);
    for i in 0..5u64 {
        let batch = json!({"epoch": epoch, "lease_token": token, "first_seq": i * 2, "lines": [format!("line {}", 2 * i), format!("line {}", 2 * i + 1)]});
        assert_eq!(post(&node, &format!("/api/jobs/{id}/logs"), batch).0, 200);
        std::thread::sleep(Duration::from_millis(50));
    }
    post(
        &node,
        &format!("/api/jobs/{id}/complete"),
        json!({"epoch": epoch, "lease_token": token}),
    );
    let text = reader.join().unwrap();
    let lines: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|d| d["text"].as_str().map(str::to_owned))
        .collect();
    let expected: Vec<String> = (0..10).map(|i| format!("line {i}")).collect();
    assert_eq!(lines, expected);
    assert!(
        text.contains("event: end\ndata: {\"status\":\"succeeded\"}"),
        "{text}"
    );
}

#[test]
fn the_cli_submits_waits_reads_logs_and_cancels() {
    let dir = tempfile::tempdir().unwrap();
    let handler = dir.path().join("handler.sh");
    std::fs::write(
        &handler,
        "echo started; echo NEXA_PROGRESS 0.5; echo done\necho '{\"metrics\": {\"loss\": 0.5}}' > \"$NEXA_OUTPUT_DIR/result.json\"\n",
    )
    .unwrap();
    let node = start(
        &[
            "up",
            "--handler",
            &format!("train=sh {}", handler.display()),
        ],
        dir.path(),
    );
    let api = format!("{}/api", node.base);
    let nexa = |args: &[&str]| {
        Command::new(NEXA)
            .args(args)
            .args(["--api", &api])
            .output()
            .unwrap()
    };
    let out = nexa(&[
        "submit",
        "train",
        "-p",
        "model_id=m",
        "-p",
        "dataset_uri=d.csv",
        "-p",
        "lr=0.1",
        "--wait",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("submitted job-1"), "{stdout}");
    assert!(stdout.contains("job-1: succeeded"), "{stdout}");
    let (_, job) = get(&node, "/api/jobs/job-1");
    assert_eq!(job["params"]["hyperparameters"], json!({"lr": 0.1}));

    let out = nexa(&["logs", "job-1"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "started\ndone\n");
    let out = nexa(&["logs", "job-1", "-f"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "started\ndone\n");
    let out = nexa(&["jobs"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with("JOB") && table.contains("succeeded"),
        "{table}"
    );
    let out = nexa(&["workers"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("local"));
    let out = nexa(&["cancel", "job-1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot cancel"));
    let out = nexa(&["submit", "generate", "-p", "domain=x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("params.num_samples"));

    // A job no worker runs (none has 8 GPUs): wait gives up at its timeout with exit code 2.
    let out = nexa(&["submit", "deploy", "-p", "model_id=m", "--gpus", "8"]);
    assert!(out.status.success());
    let out = nexa(&["wait", "job-2", "--timeout", "0.5"]);
    assert_eq!(out.status.code(), Some(2));
    let out = nexa(&["cancel", "job-2"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("job-2: cancelled"));
}

/// The peak resident memory of process `pid`, in MiB.
fn peak_rss_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
}

fn wait_final(node: &Node, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, job) = get(node, &format!("/api/jobs/{id}"));
        if ["succeeded", "failed", "cancelled"].contains(&job["status"].as_str().unwrap()) {
            return job;
        }
        assert!(Instant::now() < deadline, "{id} never finished: {job:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_gigabyte_on_one_line_is_refused_in_bounded_memory_and_cancels_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // 1 GiB of zero bytes and no newline: sparse, so it costs no disk.
    let huge = data.join("one-line.csv");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let root = data.display().to_string();
    let var = dir.path().join("var");
    std::fs::create_dir(&var).unwrap();
    let node = start(&["up", "--data-root", &root], &var);
    let pid = node.child.id();
    let before = peak_rss_mb(pid);

    let audit = |uri: &str| {
        let (status, job) = post(
            &node,
            "/api/jobs",
            json!({"job_type": "audit", "params": {"dataset_uri": uri}, "max_attempts": 1}),
        );
        assert_eq!(status, 201, "{job}");
        job["job_id"].as_str().unwrap().to_owned()
    };
    let id = audit(&huge.display().to_string());
    let job = wait_final(&node, &id);
    assert_eq!(job["status"], "failed", "{job:#}");
    assert_eq!(job["error"]["class"], "invalid_input", "{job:#}");
    let message = job["error"]["message"].as_str().unwrap();
    assert!(message.contains("runs past"), "{message}");
    // The whole control plane and worker, having read the gigabyte: far below it.
    let peak = peak_rss_mb(pid);
    assert!(
        peak < before + 256,
        "peak memory {peak} MiB (from {before} MiB) while auditing 1 GiB on one line"
    );

    // A cancel stops the read (here while it hashes the file) well before it would end.
    let id = audit(&huge.display().to_string());
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&node, &format!("/api/jobs/{id}")).1["progress"]
        .as_f64()
        .is_none_or(|p| p <= 0.0)
    {
        assert!(Instant::now() < deadline, "the audit never made progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    let asked = Instant::now();
    let (status, _) = post(&node, &format!("/api/jobs/{id}/cancel"), json!({}));
    assert_eq!(status, 200);
    let job = wait_final(&node, &id);
    let took = asked.elapsed();
    assert_eq!(job["status"], "cancelled", "{job:#}");
    assert!(
        job["progress"].as_f64().unwrap_or(0.0) < 0.5,
        "the cancel came after the file was hashed: {job:#}"
    );
    eprintln!("peak memory {peak} MiB (from {before} MiB); cancelled in {took:?}");
}

#[test]
fn a_deployed_model_answers_at_its_stable_url_in_both_protocols_until_undeployed() {
    let dir = tempfile::tempdir().unwrap();
    let user = token(dir.path(), false);
    let reader = token(dir.path(), true);
    let node = start(&["up"], dir.path());
    let url = |p: &str| format!("{}{p}", node.base);
    let submit = |job_type: &str, params: Value| {
        let body = json!({"job_type": job_type, "params": params}).to_string();
        let (status, job) = call("POST", &url("/api/jobs"), Some(&body), Some(&user));
        assert_eq!(status, 201, "{job}");
        job["job_id"].as_str().unwrap().to_owned()
    };
    let finished = |id: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (_, job) = call("GET", &url(&format!("/api/jobs/{id}")), None, Some(&user));
            if ["succeeded", "failed", "cancelled"].contains(&job["status"].as_str().unwrap()) {
                return job;
            }
            assert!(Instant::now() < deadline, "{job:#}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let generated = submit("generate", json!({"domain": "physics", "num_samples": 600}));
    let dataset = finished(&generated)["result"]["artifacts"]["dataset"]
        .as_str()
        .unwrap()
        .to_owned();
    let trained = submit(
        "train",
        json!({"model_id": "served", "dataset_uri": dataset, "epochs": 2}),
    );
    assert_eq!(finished(&trained)["status"], "succeeded");
    let deployed = submit(
        "deploy",
        json!({"model_id": "served", "target": "physics-api"}),
    );

    // Ready once its smoke test passed; the endpoint lists it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let endpoint = loop {
        let (_, e) = call(
            "GET",
            &url("/api/endpoints/physics-api"),
            None,
            Some(&reader),
        );
        if e["ready_replicas"] == 1 {
            break e;
        }
        assert!(Instant::now() < deadline, "{e:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(endpoint["model_id"], "served");
    assert_eq!(endpoint["replicas"][0]["job_id"], deployed.as_str());

    // Plain rows, with a read-only token; without a token, refused as the rest of the API.
    let rows = json!({"inputs": [[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]]}).to_string();
    let predict = url("/api/endpoints/physics-api/predict");
    let (status, plain) = call("POST", &predict, Some(&rows), Some(&reader));
    assert_eq!(status, 200, "{plain}");
    assert_eq!(plain["predictions"].as_array().unwrap().len(), 2);
    assert_eq!(call("POST", &predict, Some(&rows), None).0, 401);
    // The Open Inference Protocol gives the same numbers.
    let infer = json!({"inputs": [{"name": "input", "shape": [2, 3], "datatype": "FP32",
                                   "data": [1.0, 2.0, 3.0, 0.0, -1.0, 0.5]}]})
    .to_string();
    let (status, oip) = call(
        "POST",
        &url("/v2/models/physics-api/infer"),
        Some(&infer),
        Some(&reader),
    );
    assert_eq!(status, 200, "{oip}");
    let flat: Vec<f64> = plain["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    let served: Vec<f64> = oip["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(flat, served);
    let (status, meta) = call("GET", &url("/v2/models/physics-api"), None, Some(&reader));
    assert_eq!(
        (status, &meta["inputs"][0]["shape"]),
        (200, &json!([-1, 3])),
        "{meta}"
    );
    // Mistakes get clear answers.
    let (status, err) = call(
        "POST",
        &predict,
        Some(r#"{"inputs": [[1.0]]}"#),
        Some(&reader),
    );
    assert_eq!(status, 400);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("takes 3"),
        "{err}"
    );
    let (status, err) = call(
        "POST",
        &url("/api/endpoints/nope/predict"),
        Some(&rows),
        Some(&reader),
    );
    assert_eq!(status, 404);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("physics-api"),
        "{err}"
    );

    // curl, as the README shows it, in both protocols (CI installs curl when missing).
    let curl = |path: &str, body: &str| -> Value {
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body", "-X", "POST", "-H"])
            .arg("Content-Type: application/json")
            .arg("-H")
            .arg(format!("Authorization: Bearer {reader}"))
            .args(["-d", body, &url(path)])
            .output()
            .expect("these tests need curl (apt-get install curl)");
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(
        curl("/api/endpoints/physics-api/predict", &rows)["predictions"],
        plain["predictions"]
    );
    assert_eq!(
        curl("/v2/models/physics-api/infer", &infer)["outputs"],
        oip["outputs"]
    );

    // The CLI.
    let cli = |args: &[&str]| {
        let out = Command::new(NEXA)
            .args(args)
            .args(["--api", &url("/api"), "--token", &reader])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, listed) = cli(&["endpoints"]);
    assert!(
        ok && listed.contains("physics-api") && listed.contains("1/1"),
        "{listed}"
    );
    let (ok, answered) = cli(&["predict", "physics-api", "--rows", "[[1.0, 2.0, 3.0]]"]);
    assert!(ok, "{answered}");
    let answered: Value = serde_json::from_str(&answered).unwrap();
    assert_eq!(answered["predictions"][0], plain["predictions"][0]);

    // Per endpoint: the requests that reached a replica (the unauthenticated one did not).
    let metrics = {
        let mut res = agent()
            .get(&url("/metrics"))
            .header("Authorization", &format!("Bearer {reader}"))
            .call()
            .unwrap();
        res.body_mut().read_to_string().unwrap()
    };
    for line in [
        "nexa_endpoint_requests_total{endpoint=\"physics-api\"} 7",
        "nexa_endpoint_errors_total{endpoint=\"physics-api\"} 0",
        "nexa_endpoint_replicas_ready{endpoint=\"physics-api\"} 1",
        "nexa_endpoint_request_duration_seconds_count{endpoint=\"physics-api\"} 7",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }

    // Cancelling a deploy job undeploys its replica.
    let (status, _) = call(
        "POST",
        &url(&format!("/api/jobs/{deployed}/cancel")),
        Some("{}"),
        Some(&user),
    );
    assert_eq!(status, 200);
    assert_eq!(finished(&deployed)["status"], "cancelled");
    let (_, all) = call("GET", &url("/api/endpoints"), None, Some(&reader));
    assert_eq!(all["endpoints"], json!([]), "{all}");

    // Two replicas: one deploy job each, made once however often the submission is retried.
    let twice = json!({"job_type": "deploy",
                       "params": {"model_id": "served", "target": "physics-api", "replicas": 2}})
    .to_string();
    let submit_twice = || {
        let mut res = agent()
            .post(&url("/api/jobs"))
            .header("Authorization", &format!("Bearer {user}"))
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", "two-replicas")
            .send(twice.as_bytes())
            .unwrap();
        let status = res.status().as_u16();
        let body: Value = serde_json::from_str(&res.body_mut().read_to_string().unwrap()).unwrap();
        (status, body)
    };
    let (status, first) = submit_twice();
    assert_eq!(status, 201, "{first}");
    let replicas = first["replica_job_ids"].clone();
    assert_eq!(replicas.as_array().map(Vec::len), Some(2), "{first}");
    assert_eq!(replicas[0], first["job_id"]);
    let (status, again) = submit_twice();
    assert_eq!((status, &again["replica_job_ids"]), (200, &replicas));
    let deadline = Instant::now() + Duration::from_secs(60);
    while call(
        "GET",
        &url("/api/endpoints/physics-api"),
        None,
        Some(&reader),
    )
    .1["ready_replicas"]
        != 2
    {
        assert!(Instant::now() < deadline, "two replicas never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Requests take turns, and every one gets the model's answer.
    let mut answered_by = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let mut res = agent()
            .post(&predict)
            .header("Authorization", &format!("Bearer {reader}"))
            .header("Content-Type", "application/json")
            .send(rows.as_bytes())
            .unwrap();
        assert_eq!(res.status(), 200);
        answered_by.insert(res.headers()["X-Nexa-Replica"].to_str().unwrap().to_owned());
        let body: Value = serde_json::from_str(&res.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(body["predictions"], plain["predictions"]);
    }
    let want: std::collections::BTreeSet<String> = replicas
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(answered_by, want);

    // Undeploying the endpoint cancels every replica; a read-only token may not.
    let endpoint_url = url("/api/endpoints/physics-api");
    assert_eq!(call("DELETE", &endpoint_url, None, Some(&reader)).0, 403);
    let (status, undeployed) = call("DELETE", &endpoint_url, None, Some(&user));
    assert_eq!(status, 200, "{undeployed}");
    assert_eq!(undeployed["cancelled"].as_array().map(Vec::len), Some(2));
    for job in replicas.as_array().unwrap() {
        assert_eq!(finished(job.as_str().unwrap())["status"], "cancelled");
    }
    let (status, gone) = call("DELETE", &endpoint_url, None, Some(&user));
    assert_eq!(status, 404, "{gone}");
}

/// Waits for a pipeline run to end; returns it.
fn run_final(node: &Node, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (_, run) = get(node, &format!("/api/pipelines/{id}"));
        if ["succeeded", "failed", "cancelled"].contains(&run["status"].as_str().unwrap_or("")) {
            return run;
        }
        assert!(Instant::now() < deadline, "{id} never ended: {run:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Each step's (status, job) by name.
fn step_states(run: &Value) -> BTreeMap<String, (String, Option<String>)> {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                (
                    s["status"].as_str().unwrap().to_owned(),
                    s["job_id"].as_str().map(str::to_owned),
                ),
            )
        })
        .collect()
}

#[test]
fn the_example_pipeline_runs_from_the_cli_deploys_its_student_and_reruns_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&["up"], dir.path());
    let api = format!("{}/api", node.base);
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/pipelines/physics.toml"
    );
    let cli = |args: &[&str]| {
        let out = Command::new(NEXA)
            .args(args)
            .args(["--api", &api])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = cli(&["pipeline", "run", example, "--wait"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("pl-1 (physics): succeeded"), "{out}");
    assert!(err.contains("student_ok: succeeded"), "{err}");
    let (_, first) = get(&node, "/api/pipelines/pl-1");
    let steps = step_states(&first);
    assert!(
        steps.values().all(|(status, _)| status == "succeeded"),
        "{first:#}"
    );
    // The gates passed on real numbers: the data is clean and its split does not leak, the
    // student is within 5 points of its teacher.
    let gate = |name: &str| {
        first["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()["gate"]
            .clone()
    };
    assert_eq!(gate("data_ok")["passed"], true);
    assert_eq!(gate("student_ok")["passed"], true);
    let (ok, status, _) = cli(&["pipeline", "status", "pl-1"]);
    assert!(ok && status.contains("physics-student:1"), "{status}");
    // Lineage: a step's job and the model version it made name the run and step.
    let teacher_job = steps["teacher"].1.clone().unwrap();
    let (_, job) = get(&node, &format!("/api/jobs/{teacher_job}"));
    assert_eq!(
        job["pipeline"],
        json!({"pipeline_id": "pl-1", "step": "teacher"})
    );
    let (_, model) = get(&node, "/api/models/physics-student");
    assert_eq!(
        model["versions"][0]["pipeline"],
        json!({"pipeline_id": "pl-1", "step": "student"})
    );
    // A job that only borrows a step's key is no step of the run.
    let (status, forged) = post(
        &node,
        "/api/jobs",
        json!({"job_type": "generate", "params": {"domain": "physics", "num_samples": 100},
               "idempotency_key": "pipeline:pl-1/other"}),
    );
    assert_eq!(status, 201, "{forged}");
    assert!(forged.get("pipeline").is_none(), "{forged}");

    // The deploy step's student answers at its endpoint until undeployed.
    let (ok, answer, err) = cli(&["predict", "physics", "--rows", "[[1.0, 2.0, 3.0]]"]);
    assert!(ok, "{answer}{err}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["predictions"].as_array().map(Vec::len), Some(1));
    // A challenger must beat the student the endpoint serves, on the same data, to replace it.
    let dataset = first["steps"][0]["outputs"]["artifacts"]["dataset"].clone();
    let challenger = |margin: f64| {
        json!({"name": "challenger", "steps": {
            "train": {"job_type": "train",
                      "params": {"model_id": "challenger", "dataset_uri": dataset, "epochs": 1}},
            "evaluate": {"job_type": "evaluate",
                         "params": {"model_id": "${train.model}", "dataset_uri": dataset}},
            "beats_live": {"gate": {"on": "evaluate", "better_than_deployed":
                           {"endpoint": "physics", "metric": "accuracy", "margin": margin}}},
            "deploy": {"job_type": "deploy", "needs": ["beats_live"],
                       "params": {"model_id": "${train.model}", "target": "physics"}},
        }})
    };
    let (status, run) = post(&node, "/api/pipelines", challenger(0.5));
    assert_eq!(status, 201, "{run}");
    let run = run_final(&node, run["pipeline_id"].as_str().unwrap());
    assert_eq!(run["failed_step"], "beats_live", "{run:#}");
    let reason = run["steps"][2]["gate"]["reasons"][0].as_str().unwrap();
    assert!(
        reason.contains("physics-student:1, which \"physics\" serves, has 0.9"),
        "{reason}"
    );
    assert_eq!(run["steps"][3]["status"], "skipped");
    let (ok, undeployed, err) = cli(&["undeploy", "physics"]);
    assert!(ok, "{undeployed}{err}");

    // A rerun from the student: the steps before it keep their jobs, the rest run again.
    let (ok, out, err) = cli(&["pipeline", "rerun", "pl-1", "--from", "student", "--wait"]);
    assert!(ok, "{out}\n{err}");
    let (_, second) = get(&node, "/api/pipelines/pl-3");
    assert_eq!(second["status"], "succeeded", "{second:#}");
    assert_eq!(second["rerun_of"], "pl-1");
    let again = step_states(&second);
    for step in ["generate", "audit", "teacher", "evaluate_teacher"] {
        assert_eq!(again[step].1, steps[step].1, "{step} was not reused");
    }
    for step in ["student", "evaluate_student", "deploy"] {
        assert!(again[step].1.is_some(), "{step}: {second:#}");
        assert_ne!(again[step].1, steps[step].1, "{step} was reused");
    }
    let (ok, _, _) = cli(&["undeploy", "physics"]);
    assert!(ok);
}

#[test]
fn pipelines_are_checked_first_stopped_by_gates_and_contamination_and_cancelled_whole() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // Two of the three test rows are copies of train rows.
    let leaky = data.join("leaky.csv");
    std::fs::write(
        &leaky,
        "x,y,label,split\n1,2,0,train\n3,4,1,train\n5,6,0,train\n7,8,1,validation\n1,2,0,test\n3,4,1,test\n9,9,0,test\n",
    )
    .unwrap();
    let var = dir.path().join("var");
    std::fs::create_dir(&var).unwrap();
    let node = start(&["up", "--data-root", &data.display().to_string()], &var);
    let submit = |spec: Value| post(&node, "/api/pipelines", spec);

    // Faults are refused before anything runs, named by their path.
    let (status, err) = submit(json!({"name": "cycle", "steps": {
        "a": {"job_type": "audit", "params": {"dataset_uri": "/d.csv"}, "needs": ["b"]},
        "b": {"job_type": "audit", "params": {"dataset_uri": "/d.csv"}, "needs": ["a"]},
    }}));
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"]["field"], "steps");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("a → b → a form a cycle"),
        "{err}"
    );
    let (status, err) = submit(json!({"name": "bad", "steps": {
        "g": {"job_type": "generate", "params": {"domain": "physics", "num_samples": 100}},
        "t": {"job_type": "train", "params": {"model_id": "m", "dataset_uri": "${g.artifacts.model}"}},
    }}));
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"]["field"], "steps.t.params.dataset_uri");
    assert_eq!(get(&node, "/api/pipelines").1["pipelines"], json!([]));
    assert_eq!(get(&node, "/api/jobs").1["jobs"], json!([]));

    // An audit gate stops what follows, with its reasons; a contaminated split is caught.
    let (status, run) = submit(json!({"name": "leaky", "steps": {
        "audit": {"job_type": "audit", "params": {"dataset_uri": leaky.display().to_string()}},
        "no_leak": {"gate": {"on": "audit", "no_overlap": true, "min_rows": 1000}},
        "train": {"job_type": "train", "needs": ["no_leak"],
                  "params": {"model_id": "leaky", "dataset_uri": leaky.display().to_string()}},
    }}));
    assert_eq!(status, 201, "{run}");
    let run = run_final(&node, run["pipeline_id"].as_str().unwrap());
    assert_eq!(
        (&run["status"], &run["failed_step"]),
        (&json!("failed"), &json!("no_leak")),
        "{run:#}"
    );
    let steps = run["steps"].as_array().unwrap();
    let reasons = &steps[1]["gate"]["reasons"];
    assert_eq!(
        reasons,
        &json!([
            "7 rows; at least 1000 wanted",
            "the evaluation data overlaps the training data: 2 of 3 test rows and 0 of 1 \
             validation rows are also train rows",
        ]),
        "{run:#}"
    );
    assert_eq!(
        (&steps[2]["status"], &steps[2]["job_id"]),
        (&json!("skipped"), &Value::Null)
    );

    // Cancelling a run cancels its running step and every step not started.
    let (status, run) = submit(json!({"name": "long", "steps": {
        "generate": {"job_type": "generate", "params": {"domain": "physics", "num_samples": 2000}},
        "train": {"job_type": "train", "params": {"model_id": "long",
                  "dataset_uri": "${generate.artifacts.dataset}", "epochs": 10000}},
        "evaluate": {"job_type": "evaluate", "params": {"model_id": "${train.model}",
                     "dataset_uri": "${generate.artifacts.dataset}"}},
    }}));
    assert_eq!(status, 201, "{run}");
    let id = run["pipeline_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    let train_job = loop {
        let (_, run) = get(&node, &format!("/api/pipelines/{id}"));
        if let (status, Some(job)) = &step_states(&run)["train"]
            && status == "running"
        {
            break job.clone();
        }
        assert!(Instant::now() < deadline, "{run:#}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (status, cancelling) = post(&node, &format!("/api/pipelines/{id}/cancel"), json!({}));
    assert_eq!(status, 200, "{cancelling}");
    let run = run_final(&node, &id);
    assert_eq!(run["status"], "cancelled", "{run:#}");
    let steps = step_states(&run);
    assert_eq!(steps["generate"].0, "succeeded");
    assert_eq!(steps["train"].0, "cancelled");
    assert_eq!(steps["evaluate"], ("cancelled".to_owned(), None));
    assert_eq!(wait_final(&node, &train_job)["status"], "cancelled");
    let (status, _) = post(&node, &format!("/api/pipelines/{id}/cancel"), json!({}));
    assert_eq!(status, 409);
}
