//! A run's figures: measured, written as JSON with the scenario and the host, printed for
//! people, and compared between two runs.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

/// The result format's version, in every result (`nexa_bench`).
pub(crate) const FORMAT: u32 = 1;

/// Percentiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Spread {
    pub(crate) count: usize,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

impl Spread {
    /// The spread of `samples`; `None` when there are none.
    pub(crate) fn of(mut samples: Vec<Duration>) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples[i.min(samples.len() - 1)].as_secs_f64() * 1e3
        };
        Some(Self {
            count: samples.len(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
        })
    }
}

/// What this process did, from `/proc/self` (Linux): every thread of the control plane, its
/// workers and its clients, when they run here.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Process {
    /// `write`-family system calls (files and sockets).
    write_calls: u64,
    /// Voluntary and involuntary context switches.
    switches: u64,
    /// User and system CPU time, in clock ticks (USER_HZ, 100 a second).
    cpu_ticks: u64,
}

impl Process {
    /// The counters now (zeros where `/proc` cannot be read).
    pub(crate) fn now() -> Self {
        let field = |text: &str, name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
        // A thread's switches are its own: summed over the threads alive now (the runtime's
        // and the store's threads live as long as the run).
        let switches: u64 = std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
            .map(|task| {
                let status =
                    std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
                field(&status, "voluntary_ctxt_switches:")
                    + field(&status, "nonvoluntary_ctxt_switches:")
            })
            .sum();
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // utime and stime are fields 14 and 15, counted after the parenthesised name.
        let cpu_ticks = stat
            .rsplit_once(')')
            .map(|(_, rest)| {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                tick(11) + tick(12)
            })
            .unwrap_or(0);
        Self {
            write_calls: field(&io, "syscw:"),
            switches,
            cpu_ticks,
        }
    }

    /// Its CPU time, in milliseconds.
    pub(crate) fn cpu_ms(self) -> f64 {
        self.cpu_ticks as f64 * 10.0
    }

    /// What happened between `earlier` and this.
    pub(crate) fn since(self, earlier: Self) -> Self {
        Self {
            write_calls: self.write_calls.saturating_sub(earlier.write_calls),
            switches: self.switches.saturating_sub(earlier.switches),
            cpu_ticks: self.cpu_ticks.saturating_sub(earlier.cpu_ticks),
        }
    }
}

/// What each job cost, on average over the measured ones.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PerJob {
    /// `fsync`s of the store's file (a redb store; the database's own for PostgreSQL are not
    /// seen from here).
    pub(crate) fsyncs: Option<f64>,
    /// Writes to the store's file.
    pub(crate) store_writes: Option<f64>,
    /// Bytes written to the store's file.
    pub(crate) store_bytes: Option<f64>,
    /// `write` system calls of this process (files and sockets).
    pub(crate) write_syscalls: f64,
    /// Context switches of this process.
    pub(crate) context_switches: f64,
    /// CPU time of this process, in milliseconds.
    pub(crate) cpu_ms: f64,
}

impl PerJob {
    pub(crate) fn new(jobs: u64, process: Process, io: Option<nexa_storage::IoSnapshot>) -> Self {
        let n = jobs.max(1) as f64;
        let per = |v: u64| v as f64 / n;
        Self {
            fsyncs: io.map(|i| per(i.syncs)),
            store_writes: io.map(|i| per(i.writes)),
            store_bytes: io.map(|i| per(i.bytes)),
            write_syscalls: per(process.write_calls),
            context_switches: per(process.switches),
            cpu_ms: process.cpu_ms() / n,
        }
    }
}

/// One store method's calls.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CallSpread {
    pub(crate) count: usize,
    pub(crate) per_job: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) max_us: f64,
}

/// The store calls by method, from the times measured.
pub(crate) fn calls(
    times: HashMap<&'static str, Vec<Duration>>,
    jobs: u64,
) -> BTreeMap<String, CallSpread> {
    times
        .into_iter()
        .filter_map(|(method, samples)| {
            let count = samples.len();
            let s = Spread::of(samples)?;
            Some((
                method.to_owned(),
                CallSpread {
                    count,
                    per_job: count as f64 / jobs.max(1) as f64,
                    p50_us: s.p50 * 1e3,
                    p99_us: s.p99 * 1e3,
                    max_us: s.max * 1e3,
                },
            ))
        })
        .collect()
}

/// The machine a run was measured on.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Host {
    pub(crate) hostname: String,
    pub(crate) cpus: usize,
    pub(crate) cpu_model: String,
    pub(crate) memory_mb: u64,
    pub(crate) kernel: String,
}

impl Host {
    pub(crate) fn this() -> Self {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let cpuinfo = read("/proc/cpuinfo");
        let meminfo = read("/proc/meminfo");
        Self {
            hostname: read("/proc/sys/kernel/hostname"),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default(),
            memory_mb: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .map_or(0, |kb| kb / 1024),
            kernel: read("/proc/sys/kernel/osrelease"),
        }
    }
}

/// Flattens a result's numbers into `path → value` (`figures.submit_to_result_ms.p50`).
fn numbers(prefix: &str, value: &Value, out: &mut BTreeMap<String, f64>) {
    match value {
        Value::Number(n) => {
            if let Some(v) = n.as_f64() {
                out.insert(prefix.to_owned(), v);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                numbers(&path, v, out);
            }
        }
        _ => {}
    }
}

/// Two results side by side: each figure of either (the store calls' only with `all`), its
/// values and their ratio; and the settings that differ.
pub(crate) fn compare(before: &Value, after: &Value, all: bool) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    numbers("", &before["figures"], &mut a);
    numbers("", &after["figures"], &mut b);
    let (mut sa, mut sb) = (BTreeMap::new(), BTreeMap::new());
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    for (k, v) in before["scenario"].as_object().into_iter().flatten() {
        sa.insert(k.clone(), text(v));
    }
    for (k, v) in after["scenario"].as_object().into_iter().flatten() {
        sb.insert(k.clone(), text(v));
    }
    let differ: Vec<&String> = sa
        .keys()
        .chain(sb.keys())
        .filter(|k| sa.get(*k) != sb.get(*k))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !differ.is_empty() {
        let _ = writeln!(out, "settings that differ:");
        for k in differ {
            let show = |m: &BTreeMap<String, String>| m.get(k).cloned().unwrap_or("-".into());
            let _ = writeln!(out, "  {k}: {} → {}", show(&sa), show(&sb));
        }
    }
    for side in [("before", before), ("after", after)] {
        let host = &side.1["host"];
        let _ = writeln!(
            out,
            "{}: {} ({} CPUs, {}), nexa {}",
            side.0,
            text(&side.1["scenario"]["name"]),
            host["cpus"],
            text(&host["cpu_model"]),
            text(&side.1["version"])
        );
    }
    let _ = writeln!(
        out,
        "{:<44} {:>14} {:>14} {:>9}",
        "figure", "before", "after", "after/before"
    );
    let keys: std::collections::BTreeSet<&String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| all || !k.starts_with("store_calls."))
        .collect();
    for k in keys {
        let show = |v: Option<&f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
        let ratio = match (a.get(k), b.get(k)) {
            (Some(x), Some(y)) if *x != 0.0 => format!("{:.2}x", y / x),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "{k:<44} {:>14} {:>14} {:>9}",
            show(a.get(k)),
            show(b.get(k)),
            ratio
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_take_their_percentiles_from_the_samples() {
        let ms = |n: u64| Duration::from_millis(n);
        let s = Spread::of((1..=100).map(ms).collect()).unwrap();
        assert_eq!((s.count, s.p50, s.p99, s.max), (100, 51.0, 99.0, 100.0));
        assert!(Spread::of(Vec::new()).is_none());
        let one = Spread::of(vec![ms(7)]).unwrap();
        assert_eq!((one.p50, one.p90, one.max), (7.0, 7.0, 7.0));
    }

    #[test]
    fn a_comparison_shows_each_figure_of_either_side_and_the_settings_that_differ() {
        let a = serde_json::json!({
            "version": "1", "host": {"cpus": 2, "cpu_model": "x"},
            "scenario": {"name": "a", "clients": 1, "store": "redb"},
            "figures": {"throughput_jobs_per_s": 100.0, "submit_to_result_ms": {"p50": 2.0}}
        });
        let b = serde_json::json!({
            "version": "1", "host": {"cpus": 2, "cpu_model": "x"},
            "scenario": {"name": "b", "clients": 4, "store": "redb"},
            "figures": {"throughput_jobs_per_s": 250.0, "retried_jobs": 0}
        });
        let text = compare(&a, &b, true);
        assert!(text.contains("clients: 1 → 4"), "{text}");
        assert!(!text.contains("store:"), "{text}");
        let line = |key: &str| {
            text.lines()
                .find(|l| l.starts_with(key))
                .unwrap()
                .to_owned()
        };
        assert!(line("throughput_jobs_per_s").ends_with("2.50x"), "{text}");
        assert!(line("submit_to_result_ms.p50").contains(" - "), "{text}");
        assert!(line("retried_jobs").contains('-'), "{text}");
    }

    #[test]
    fn process_counters_count_this_process_s_writes() {
        let dir = tempfile::tempdir().unwrap();
        let before = Process::now();
        for n in 0..20 {
            std::fs::write(dir.path().join(n.to_string()), b"x").unwrap();
        }
        let after = Process::now().since(before);
        assert!(after.write_calls >= 20, "{after:?}");
        assert!(Host::this().cpus >= 1);
    }
}
