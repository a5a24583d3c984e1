//! CUDA training throughput (samples per second) of each preset, on a generated physics
//! classification task, fp32, at batch sizes 256 and 4096, beside the CPU backend at batch
//! 256 measured in the same run; with `--torch PYTHON`, PyTorch eager training the same MLP
//! the same way on the same GPU and data (`torch_mlp.py --device cuda`), and the ratio.
//!
//! ```text
//! cargo run --release -p nexa-compute --features cuda --example cuda_throughput -- \
//!     [rows] [epochs] [--torch python3]
//! ```
//!
//! Fails when there is no CUDA device. The CPU baseline trains one epoch; each GPU figure,
//! ours and PyTorch's, comes after an untimed one-epoch warm-up of a throw-away model of the
//! same preset and batch size on the first 20,000 rows, so that CUDA's and cuBLAS's first
//! calls and the memory pools' first allocations are not counted on either side.

#[path = "support/torch.rs"]
mod torch;

use nexa_compute::{
    Backend, Control, CpuBackend, CudaBackend, Dataset, Device, GenerateSpec, Head, Mlp, Preset,
    Problem, TrainConfig, TrainOutcome, best_device, generate, train,
};

const BATCHES: [usize; 2] = [256, 4096];

fn run<B: Backend>(
    backend: &B,
    preset: Preset,
    data: &Dataset,
    classes: usize,
    batch_size: usize,
    epochs: u32,
) -> Result<TrainOutcome, Box<dyn std::error::Error>> {
    let config = preset.config(data.schema().features.len(), classes, Head::Classification);
    let mut model = Mlp::new(backend, config, 0)?;
    let settings = TrainConfig {
        epochs,
        batch_size,
        ..TrainConfig::default()
    };
    Ok(train(
        backend,
        &mut model,
        data,
        None,
        &settings,
        None,
        &mut |_| Control::Continue,
    )?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (numbers, python) = torch::args()?;
    let rows = numbers.first().copied().unwrap_or(200_000);
    let epochs = numbers.get(1).copied().unwrap_or(2) as u32;
    let Device::Cuda(device) = best_device() else {
        return Err("no CUDA device found (see nexa_compute::devices)".into());
    };
    let gpu = CudaBackend::new(device.ordinal)?;
    println!("{}", Device::Cuda(device));
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
    let warm_up = data.select(&(0..rows.min(20_000)).collect::<Vec<_>>())?;
    println!("{rows} rows x {epochs} epochs, fp32; CPU: CpuBackend, 1 thread, 1 epoch");
    for preset in Preset::ALL {
        let parameters = preset
            .config(data.schema().features.len(), classes, Head::Classification)
            .parameters();
        let cpu = run(&CpuBackend, preset, &data, classes, 256, 1)?;
        println!(
            "{:>14} ({parameters:>7} parameters): cpu  batch {:>4}: {:>10.0} samples/s",
            preset.name(),
            256,
            cpu.samples_per_sec
        );
        for batch in BATCHES {
            run(&gpu, preset, &warm_up, classes, batch, 1)?;
            let outcome = run(&gpu, preset, &data, classes, batch, epochs)?;
            println!(
                "{:>14} {:>19}  cuda batch {batch:>4}: {:>10.0} samples/s ({:.1}x the cpu), \
                 final loss {:.4}",
                "",
                "",
                outcome.samples_per_sec,
                outcome.samples_per_sec / cpu.samples_per_sec,
                outcome.last_loss
            );
            if let (Some(python), Some(exported)) = (&python, &exported) {
                let torch = torch::samples_per_sec(
                    python,
                    exported,
                    preset,
                    epochs,
                    batch,
                    torch::On::Cuda,
                    warm_up.len(),
                )?;
                println!(
                    "{:>14} {:>19} torch batch {batch:>4}: {torch:>10.0} samples/s; \
                     nexa / torch = {:.2}",
                    "",
                    "",
                    outcome.samples_per_sec / torch
                );
            }
        }
    }
    Ok(())
}
