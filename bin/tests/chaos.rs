//! Chaos: `nexa server` and four `nexa worker --slots 2` processes run handler jobs submitted
//! over HTTP with idempotency keys, while a random worker is killed with SIGKILL (and started
//! again) every 2 s and the server every 15 s. Then every acknowledged job must have
//! succeeded, once, by an attempt whose program ran to its end; no key may have made two
//! jobs; no attempt may have been charged for the platform's failures; and no handler
//! program may be left running.
//!
//! Bounded for CI by default (400 jobs, 45 s of chaos). The soak runs the same test longer:
//!
//! ```sh
//! NEXA_CHAOS_JOBS=3000 NEXA_CHAOS_SECONDS=240 \
//!     cargo test --release -p nexa --test chaos -- --nocapture
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;

use support::{NEXA, Proc, free_port, pid_alive};

const TOKEN: &str = "chaos-join-token-0123456789";
const WORKERS: usize = 4;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Cluster {
    dir: PathBuf,
    quic: u16,
    http: u16,
    fingerprint: String,
}

impl Cluster {
    fn api(&self) -> String {
        format!("http://127.0.0.1:{}/api", self.http)
    }

    fn start_server(&mut self) -> Proc {
        let mut child = Command::new(NEXA)
            .args(["server", "--token", TOKEN])
            .args(["--listen", &format!("127.0.0.1:{}", self.quic)])
            .args(["--http", &format!("127.0.0.1:{}", self.http)])
            .arg("--data")
            .arg(self.dir.join("server"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(fp) = line.trim().strip_prefix("fingerprint: ") {
                self.fingerprint = fp.trim().to_owned();
            }
            if line.contains("nexa worker --server") {
                break;
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        Proc(child)
    }

    fn start_worker(&self, n: usize) -> Proc {
        let handler = format!("sh {}", self.dir.join("handler.sh").display());
        let token_file = self.dir.join("join_token");
        let child = Command::new(NEXA)
            .args(["worker", "--server", &format!("127.0.0.1:{}", self.quic)])
            .args(["--fingerprint", &self.fingerprint])
            .arg("--token-file")
            .arg(&token_file)
            .args(["--name", &format!("w{n}"), "--slots", "2"])
            .arg("--work-dir")
            .arg(self.dir.join(format!("w{n}")))
            .args(["--handler", &format!("train={handler}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join(format!("w{n}.log")))
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        Proc(child)
    }
}

fn agent() -> ureq::Agent {
    support::agent(Duration::from_secs(10))
}

/// Status and JSON body; `None` when the server could not be reached.
fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> Option<(u16, Value)> {
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("Content-Type", "application/json");
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut res = agent.run(req.body(body).unwrap()).ok()?;
    let text = res.body_mut().read_to_string().ok()?;
    Some((
        res.status().as_u16(),
        serde_json::from_str(&text).unwrap_or(Value::Null),
    ))
}

/// What the handlers wrote: `start JOB ATTEMPT PID` and `end JOB ATTEMPT`.
fn ledger(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

#[test]
fn jobs_survive_killed_workers_and_servers_exactly_once() {
    let jobs = setting("NEXA_CHAOS_JOBS", 400);
    let seconds = setting("NEXA_CHAOS_SECONDS", 45);
    let dir = tempfile::tempdir().unwrap();
    let ledger_path = dir.path().join("ledger");
    std::fs::write(dir.path().join("join_token"), format!("{TOKEN}\n")).unwrap();
    // 10 to 300 ms of work, between a start and an end line (appends of one short line).
    std::fs::write(
        dir.path().join("handler.sh"),
        format!(
            "echo \"start $NEXA_JOB_ID $NEXA_ATTEMPT $$\" >> {l}\n\
             sleep 0.$(( $$ % 29 + 1 ))\n\
             echo \"end $NEXA_JOB_ID $NEXA_ATTEMPT\" >> {l}\n",
            l = ledger_path.display()
        ),
    )
    .unwrap();
    let mut cluster = Cluster {
        dir: dir.path().to_owned(),
        quic: free_port(true),
        http: free_port(false),
        fingerprint: String::new(),
    };
    let mut server = cluster.start_server();
    let mut workers: Vec<Proc> = (0..WORKERS).map(|n| cluster.start_worker(n)).collect();
    let api = cluster.api();

    // Submissions, spread over the chaos, each retried until acknowledged.
    let acknowledged: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let submitter = {
        let (api, acknowledged) = (api.clone(), acknowledged.clone());
        let every = Duration::from_secs(seconds).mul_f64(0.8) / jobs as u32;
        std::thread::spawn(move || {
            let agent = agent();
            for i in 0..jobs {
                let key = format!("chaos-{i}");
                let body = json!({
                    "job_type": "train",
                    "params": {"model_id": format!("m{i}"), "dataset_uri": "file:///d.csv"},
                    "idempotency_key": key,
                });
                let id = loop {
                    match call(&agent, "POST", &format!("{api}/jobs"), Some(&body)) {
                        Some((200 | 201, job)) => break job["job_id"].as_str().unwrap().to_owned(),
                        _ => std::thread::sleep(Duration::from_millis(50)),
                    }
                };
                acknowledged.lock().unwrap().insert(key, id);
                std::thread::sleep(every);
            }
        })
    };

    // The chaos.
    let (mut worker_kills, mut server_kills) = (0u32, 0u32);
    let mut comebacks = Vec::new();
    // When each worker was killed, to tell the attempts lost with it from any other.
    let mut killed_at: Vec<(String, std::time::SystemTime)> = Vec::new();
    let started = Instant::now();
    let mut next_server_kill = started + Duration::from_secs(15);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(2));
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        if Instant::now() < next_server_kill {
            let n = (rng % WORKERS as u64) as usize;
            workers[n].sigkill();
            killed_at.push((format!("w{n}"), std::time::SystemTime::now()));
            workers[n] = cluster.start_worker(n);
            worker_kills += 1;
        } else {
            // On a tick of its own, so that every worker was connected when it went.
            server.sigkill();
            server = cluster.start_server();
            server_kills += 1;
            next_server_kill += Duration::from_secs(15);
            // How long until every worker has heartbeated the new server: its last heartbeat
            // as the store had it at the restart changes.
            let restarted = Instant::now();
            let agent = agent();
            let heartbeats = |agent: &ureq::Agent| {
                call(agent, "GET", &format!("{api}/workers"), None).map(|(_, w)| {
                    w["workers"]
                        .as_array()
                        .map(|ws| {
                            ws.iter()
                                .map(|w| {
                                    (w["worker_id"].to_string(), w["last_heartbeat"].to_string())
                                })
                                .collect::<BTreeMap<_, _>>()
                        })
                        .unwrap_or_default()
                })
            };
            let before = loop {
                if let Some(h) = heartbeats(&agent) {
                    break h;
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            loop {
                let now = heartbeats(&agent).unwrap_or_default();
                let back = before
                    .iter()
                    .filter(|(w, at)| now.get(*w).is_some_and(|t| t != *at))
                    .count();
                if back >= WORKERS.min(before.len())
                    || restarted.elapsed() > Duration::from_secs(20)
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            comebacks.push(restarted.elapsed());
        }
    }
    submitter.join().unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert_eq!(acknowledged.len() as u64, jobs);

    // Every acknowledged job ends; none fails.
    let agent = agent();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut finished: BTreeMap<String, Value> = BTreeMap::new();
    while finished.len() < acknowledged.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} jobs never finished",
            acknowledged.len() - finished.len(),
            acknowledged.len()
        );
        for id in acknowledged.values() {
            if finished.contains_key(id) {
                continue;
            }
            let Some((status, job)) = call(&agent, "GET", &format!("{api}/jobs/{id}"), None) else {
                break;
            };
            assert_ne!(status, 404, "acknowledged {id} was lost");
            if ["succeeded", "failed", "cancelled"].contains(&job["status"].as_str().unwrap_or(""))
            {
                finished.insert(id.clone(), job);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // One job per key.
    let ids: BTreeSet<&String> = acknowledged.values().collect();
    assert_eq!(ids.len(), acknowledged.len(), "a key made two jobs");

    for mut w in workers {
        w.sigkill();
    }
    let ledger = ledger(&ledger_path);
    let ended: BTreeSet<(String, String)> = ledger
        .iter()
        .filter(|l| l[0] == "end")
        .map(|l| (l[1].clone(), l[2].clone()))
        .collect();
    let mut attempts = Vec::new();
    let mut lost_while_alive: Vec<String> = Vec::new();
    let mut lost_to_platform = 0;
    for (id, job) in &finished {
        assert_eq!(job["status"], "succeeded", "{id}: {job:#}");
        let tries = job["attempts"].as_array().unwrap();
        let succeeded: Vec<&Value> = tries
            .iter()
            .filter(|a| a["outcome"]["status"] == "succeeded")
            .collect();
        // The programs never fail: every attempt that did not succeed was lost to the
        // platform (a killed worker, a lease it never acknowledged).
        for a in tries.iter().filter(|a| a["outcome"]["status"] == "failed") {
            let class = &a["outcome"]["error"]["class"];
            assert!(
                class == "worker_lost" || class == "platform",
                "{id}: an attempt failed as {class}: {job:#}"
            );
        }
        let won = job["attempt"].to_string();
        assert!(
            ended.contains(&(id.clone(), won.clone())),
            "{id} succeeded by attempt {won}, whose program never ran to its end: {job:#}"
        );
        assert!(succeeded.len() <= 1, "{id} succeeded twice: {job:#}");
        lost_to_platform += tries.len() - 1;
        // An attempt lost while its worker lived (to a server restart, say) is one too many.
        for a in tries.iter().filter(|a| a["outcome"]["status"] == "failed") {
            let time =
                |field: &str| humantime::parse_rfc3339(a[field].as_str().unwrap_or_default()).ok();
            let (Some(leased), Some(ended)) = (time("leased_at"), time("ended_at")) else {
                continue;
            };
            let worker = a["worker_id"].as_str().unwrap_or_default();
            let with_its_worker = killed_at.iter().any(|(w, at)| {
                w == worker && *at + Duration::from_secs(1) >= leased && *at <= ended
            });
            if !with_its_worker {
                lost_while_alive.push(format!(
                    "{id} attempt {}: {}",
                    a["number"], a["outcome"]["error"]["message"]
                ));
            }
        }
        attempts.push(tries.len());
    }
    // No program outlives its worker.
    let pids: BTreeSet<u32> = ledger
        .iter()
        .filter(|l| l[0] == "start")
        .filter_map(|l| l[3].parse().ok())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|&p| pid_alive(p)).collect();
        if alive.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "handler programs left running: {alive:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(server);
    assert!(
        lost_while_alive.is_empty(),
        "attempts lost while their worker lived: {lost_while_alive:#?}"
    );

    let runs = ledger.iter().filter(|l| l[0] == "start").count();
    let max = attempts.iter().max().copied().unwrap_or(0);
    let mean = attempts.iter().sum::<usize>() as f64 / attempts.len().max(1) as f64;
    eprintln!(
        "chaos: {jobs} jobs in {:.0} s, {worker_kills} worker kills, {server_kills} server kills\n  \
         attempts per job: mean {mean:.3}, max {max}; {lost_to_platform} attempts lost to the \
         platform ({:.2} per worker kill), {runs} program runs ({:.2} re-executions per worker kill)\n  \
         workers back after a server restart: {comebacks:?}",
        started.elapsed().as_secs_f64(),
        lost_to_platform as f64 / f64::from(worker_kills.max(1)),
        (runs as f64 - jobs as f64) / f64::from(worker_kills.max(1)),
    );
}
