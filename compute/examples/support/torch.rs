//! The PyTorch baseline of the throughput examples: their command line, and a run of
//! `torch_mlp.py` (beside the examples) on a dataset exported for it, read back as samples
//! per second.

use std::path::{Path, PathBuf};
use std::process::Command;

use nexa_compute::{Dataset, Preset, write_dataset};

/// The examples' command line, `[rows] [epochs] [--torch PYTHON]`: the numbers given, and
/// the Python to run PyTorch with, if any.
pub(crate) fn args() -> Result<(Vec<usize>, Option<String>), Box<dyn std::error::Error>> {
    let mut numbers = Vec::new();
    let mut python = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--torch" {
            python = Some(args.next().ok_or("--torch needs the Python to run")?);
        } else {
            numbers.push(arg.parse::<usize>().map_err(|e| format!("{arg}: {e}"))?);
        }
    }
    Ok((numbers, python))
}

/// Writes `data` into `dir` as JSON Lines with its schema, where `torch_mlp.py` reads it.
pub(crate) fn export(data: &Dataset, dir: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let path = dir.join("throughput.jsonl");
    write_dataset(data, &path)?;
    Ok(path)
}

/// Where PyTorch trains.
#[derive(Clone, Copy, Debug)]
#[allow(dead_code)] // each example uses one of them
pub(crate) enum On {
    /// The CPU, on this many threads (0: PyTorch's default).
    Cpu(usize),
    /// The GPU.
    Cuda,
}

/// PyTorch eager's training samples per second for `preset` on the exported dataset, `on` the
/// CPU or the GPU, after an untimed epoch of a throw-away model on the first `warm_up_rows`
/// rows (none when 0).
pub(crate) fn samples_per_sec(
    python: &str,
    exported: &Path,
    preset: Preset,
    epochs: u32,
    batch: usize,
    on: On,
    warm_up_rows: usize,
) -> Result<f64, Box<dyn std::error::Error>> {
    let (device, threads) = match on {
        On::Cpu(threads) => ("cpu", threads),
        On::Cuda => ("cuda", 1),
    };
    // Beside this source when run from the build tree; under the working folder when the
    // example was built elsewhere and carried to the GPU machine (`scripts/gpu-check.sh`).
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/torch_mlp.py");
    let script = if built.exists() {
        built
    } else {
        PathBuf::from("compute/examples/torch_mlp.py")
    };
    let hidden: Vec<String> = preset.hidden().iter().map(usize::to_string).collect();
    let out = Command::new(python)
        .arg(script)
        .arg(exported)
        .args(["--hidden", &hidden.join(",")])
        .args(["--epochs", &epochs.to_string()])
        .args(["--batch", &batch.to_string()])
        .args(["--threads", &threads.to_string()])
        .args(["--device", device])
        .args(["--warm-up-rows", &warm_up_rows.to_string()])
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "torch_mlp.py failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    report["samples_per_sec"]
        .as_f64()
        .ok_or_else(|| "torch_mlp.py printed no samples_per_sec".into())
}
