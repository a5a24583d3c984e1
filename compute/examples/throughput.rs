//! CPU training throughput (samples per second) of each preset, on a generated physics
//! classification task, batch size 256, fp32, one thread; with `--torch PYTHON`, the same MLP
//! trained the same way by PyTorch eager (`torch_mlp.py`, beside this file) in the same run,
//! on the same data and thread count, and the ratio. Each figure is the median of three runs,
//! nexa's and PyTorch's taken in turn, so a noisy neighbour affects both alike.
//!
//! ```text
//! cargo run --release -p nexa-compute --example throughput -- [rows] [epochs] [--torch python3]
//! ```

#[path = "support/torch.rs"]
mod torch;

use nexa_compute::{
    Control, CpuBackend, GenerateSpec, Head, Mlp, Preset, Problem, TrainConfig, generate, train,
};

const BATCH: usize = 256;
const RUNS: usize = 3;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (numbers, python) = torch::args()?;
    let rows = numbers.first().copied().unwrap_or(20_000);
    let epochs = numbers.get(1).copied().unwrap_or(2) as u32;
    let classes = 8;
    let data = generate(
        &GenerateSpec::new(Problem::Projectile, rows)
            .seed(1)
            .classes(classes),
    )?;
    let dir = tempfile::tempdir()?;
    let exported = python
        .as_ref()
        .map(|_| torch::export(&data, dir.path()))
        .transpose()?;

    let backend = CpuBackend;
    println!("{rows} rows x {epochs} epochs, batch {BATCH}, fp32, one thread");
    for preset in Preset::ALL {
        let config = preset.config(3, classes, Head::Classification);
        let parameters = config.parameters();
        let settings = TrainConfig {
            epochs,
            batch_size: BATCH,
            ..TrainConfig::default()
        };
        let (mut ours, mut theirs, mut last_loss) = (Vec::new(), Vec::new(), f32::NAN);
        for _ in 0..RUNS {
            let mut model = Mlp::new(&backend, config.clone(), 0)?;
            let outcome = train(
                &backend,
                &mut model,
                &data,
                None,
                &settings,
                None,
                &mut |_| Control::Continue,
            )?;
            ours.push(outcome.samples_per_sec);
            last_loss = outcome.last_loss;
            if let (Some(python), Some(exported)) = (&python, &exported) {
                theirs.push(torch::samples_per_sec(
                    python, exported, preset, epochs, BATCH, "cpu", 0,
                )?);
            }
        }
        let ours = median(ours);
        println!(
            "{:>14} ({parameters:>7} parameters): nexa  {ours:>10.0} samples/s, final loss {last_loss:.4}",
            preset.name(),
        );
        if python.is_some() {
            let torch = median(theirs);
            println!(
                "{:>36} torch {torch:>10.0} samples/s; nexa / torch = {:.2}",
                "",
                ours / torch
            );
        }
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
