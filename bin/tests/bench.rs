//! `nexa bench`: scenarios run from a file and flags, their JSON results, the comparison of
//! two, and the settings it refuses. Figures are printed, never judged here.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

mod support;

use support::NEXA;

fn bench(args: &[&str]) -> Output {
    Command::new(NEXA)
        .arg("bench")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn ran(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn result(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_scenario_runs_and_its_result_holds_the_settings_and_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.json");
    let said = ran(&bench(&[
        "run",
        "../bench/ci.toml",
        "--out",
        a.to_str().unwrap(),
    ]));
    assert!(
        said.starts_with("ci: 100 jobs (0 did not succeed"),
        "{said}"
    );
    let a = result(&a);
    assert_eq!(a["nexa_bench"], 1);
    assert_eq!(a["scenario"]["name"], "ci");
    assert_eq!(a["scenario"]["clients"], 4);
    assert!(a["host"]["cpus"].as_u64().unwrap() >= 1);
    let f = &a["figures"];
    assert_eq!(f["jobs"], 100);
    assert_eq!(f["succeeded"], 100);
    for spread in [
        "submit_to_start_ms",
        "submit_to_result_ms",
        "finish_stored_to_seen_ms",
    ] {
        assert_eq!(f[spread]["count"], 100, "{spread}: {f}");
        let (p50, p99) = (
            f[spread]["p50"].as_f64().unwrap(),
            f[spread]["p99"].as_f64().unwrap(),
        );
        assert!(p50 > 0.0 && p50 <= p99, "{spread}: {f}");
    }
    // The started jobs were seen started before they were seen finished.
    assert!(f["submit_to_start_ms"]["p50"].as_f64() <= f["submit_to_result_ms"]["p50"].as_f64());
    // A redb store: every durable job syncs its file; the process's counters are read.
    let per_job = &f["per_job"];
    assert!(per_job["fsyncs"].as_f64().unwrap() >= 1.0, "{per_job}");
    assert!(per_job["store_bytes"].as_f64().unwrap() > 0.0, "{per_job}");
    assert!(
        per_job["write_syscalls"].as_f64().unwrap() > 0.0,
        "{per_job}"
    );
    assert!(
        per_job["context_switches"].as_f64().unwrap() > 0.0,
        "{per_job}"
    );
    // Each job was submitted (on its own, or with the leases of the workers waiting for it)
    // and completed once; a no-op stage's start rides in its completion's write (a stage
    // that took over 5 ms would report it on its own).
    assert_eq!(calls(f, &["submit", "submit_and_lease"]), 100, "{f}");
    assert_eq!(calls(f, &["complete"]), 100, "{f}");
    let starts = f["store_calls"]["start"]["count"].as_u64().unwrap_or(0);
    assert!(starts < 100, "{starts} starts written on their own: {f}");
}

/// The store calls of these methods in a result's figures.
fn calls(figures: &Value, methods: &[&str]) -> u64 {
    methods
        .iter()
        .map(|m| figures["store_calls"][m]["count"].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn batches_over_http_and_two_results_compared() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    ran(&bench(&[
        "run",
        "../bench/ci.toml",
        "--out",
        a.to_str().unwrap(),
    ]));
    ran(&bench(&[
        "run",
        "../bench/ci.toml",
        "--client",
        "http",
        "--batch",
        "10",
        "--store",
        "memory",
        "--name",
        "batched",
        "--out",
        b.to_str().unwrap(),
    ]));
    let b_result = result(&b);
    assert_eq!(b_result["figures"]["succeeded"], 100);
    assert_eq!(
        calls(&b_result["figures"], &["submit_batch", "submit_and_lease"]),
        10
    );
    assert!(
        b_result["figures"]["per_job"]["fsyncs"].is_null(),
        "no file in memory"
    );

    let compared = ran(&bench(&[
        "compare",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]));
    for expected in [
        "batch: 1 → 10",
        "client: library → http",
        "store: redb → memory",
    ] {
        assert!(compared.contains(expected), "{compared}");
    }
    assert!(
        compared
            .lines()
            .any(|l| l.starts_with("throughput_jobs_per_s")),
        "{compared}"
    );
    assert!(
        !compared.contains("store_calls."),
        "only with --all: {compared}"
    );
    let all = ran(&bench(&[
        "compare",
        "--all",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]));
    assert!(all.contains("store_calls.submit_batch.count"), "{all}");
}

#[test]
fn workers_stopped_mid_run_lose_no_job() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("faults.json");
    ran(&bench(&[
        "run",
        "--duration",
        "4",
        "--warmup",
        "0",
        "--clients",
        "4",
        "--workers",
        "3",
        "--kill-worker-every",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]));
    let f = &result(&out)["figures"];
    assert!(f["workers_killed"].as_u64().unwrap() >= 2, "{f}");
    assert!(f["jobs"].as_u64().unwrap() > 0, "{f}");
    assert_eq!(
        f["succeeded"], f["jobs"],
        "every job seen finished succeeded: {f}"
    );
}

#[test]
fn settings_that_cannot_run_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "jobs = 10\nworkerz = 3\n").unwrap();
    for (args, says) in [
        (vec!["run", bad.to_str().unwrap()], "workerz"),
        (
            vec!["run", "--batch", "0"],
            "batch must be between 1 and 1,000",
        ),
        (
            vec!["run", "--api", "http://127.0.0.1:9/api"],
            "--client http",
        ),
        (
            vec!["run", "--params", "[1]"],
            "--params must be a JSON object",
        ),
        (
            vec![
                "run",
                "--job-type",
                "train",
                "--params",
                r#"{"epochs": "many"}"#,
            ],
            "params",
        ),
        (
            vec!["run", "--store", "postgres", "--jobs", "1"],
            "database",
        ),
        (
            vec!["run", "nowhere.toml"],
            "cannot read the scenario nowhere.toml",
        ),
        (
            vec!["compare", bad.to_str().unwrap(), bad.to_str().unwrap()],
            "is not JSON",
        ),
    ] {
        let out = Command::new(NEXA)
            .arg("bench")
            .args(&args)
            .env_remove("NEXA_BENCH_DATABASE_URL")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} ran");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn the_python_sdk_can_be_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("python.json");
    let said = ran(&bench(&[
        "run",
        "../bench/ci.toml",
        "--client",
        "python",
        "--batch",
        "5",
        "--clients",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(said.starts_with("ci: 100 jobs"), "{said}");
    let f = &result(&out)["figures"];
    assert_eq!(f["succeeded"], 100);
    assert_eq!(f["submit_to_result_ms"]["count"], 100);
    assert_eq!(calls(f, &["submit_batch", "submit_and_lease"]), 20);
}
