//! CPU training throughput (samples per second) of each preset, on a generated physics
//! classification task, batch sizes 256 and 4096, fp32, on one thread and on all of them
//! (`NEXA_THREADS` to choose), checking that both give the same weights bit for bit; with
//! `--torch PYTHON`, the same MLP trained the same way by PyTorch eager (`torch_mlp.py`,
//! beside this file) in the same run, on the same data, on one thread and on PyTorch's
//! default, and the ratios. Each figure is the median of three runs.
//!
//! ```text
//! cargo run --release -p nexa-compute --example throughput -- [rows] [epochs] [--torch python3]
//! ```

#[path = "support/torch.rs"]
mod torch;

/// The allocator of the nexa binary, whose workers run training: what users get.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use nexa_compute::{
    Control, CpuBackend, GenerateSpec, Head, Mlp, Preset, Problem, TrainConfig, generate,
    set_threads, threads, train,
};

const BATCHES: [usize; 2] = [256, 4096];
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
    let many = threads();
    println!(
        "{rows} rows x {epochs} epochs, fp32; nexa on 1 and {many} threads (NEXA_THREADS), \
         PyTorch eager on 1 and its default threads"
    );
    for batch in BATCHES {
        println!("batch {batch}");
        for preset in Preset::ALL {
            let config = preset.config(3, classes, Head::Classification);
            let parameters = config.parameters();
            let settings = TrainConfig {
                epochs,
                batch_size: batch,
                ..TrainConfig::default()
            };
            let nexa = |threads: usize| -> Result<(f64, Vec<f32>), Box<dyn std::error::Error>> {
                set_threads(threads);
                let (mut speeds, mut weights) = (Vec::new(), Vec::new());
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
                    speeds.push(outcome.samples_per_sec);
                    weights = model
                        .layers()
                        .iter()
                        .flat_map(|l| l.weight.iter().chain(l.bias.iter()).copied())
                        .collect();
                }
                Ok((median(speeds), weights))
            };
            let (one, one_weights) = nexa(1)?;
            let (all, all_weights) = nexa(many)?;
            let same = one_weights
                .iter()
                .map(|w| w.to_bits())
                .eq(all_weights.iter().map(|w| w.to_bits()));
            println!(
                "{:>14} ({parameters:>7} parameters): nexa {one:>10.0} samples/s on 1 thread, \
                 {all:>10.0} on {many} ({:.2}x); weights {}",
                preset.name(),
                all / one,
                if same { "bit-identical" } else { "DIFFER" }
            );
            if let (Some(python), Some(exported)) = (&python, &exported) {
                let torch = |threads: usize| -> Result<f64, Box<dyn std::error::Error>> {
                    let mut speeds = Vec::new();
                    for _ in 0..RUNS {
                        speeds.push(torch::samples_per_sec(
                            python,
                            exported,
                            preset,
                            epochs,
                            batch,
                            torch::On::Cpu(threads),
                            0,
                        )?);
                    }
                    Ok(median(speeds))
                };
                let (torch_one, torch_default) = (torch(1)?, torch(0)?);
                println!(
                    "{:>38} torch {torch_one:>10.0} samples/s on 1 thread, {torch_default:>10.0} \
                     on its default; nexa / torch: {:.2} at 1 thread each, {:.2} at defaults",
                    "",
                    one / torch_one,
                    all / torch_default
                );
            }
        }
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
