//! CPU training throughput (samples per second) of each preset, on a generated physics
//! classification task, batch size 256, fp32, one thread.
//!
//! ```text
//! cargo run --release -p nexa-compute --example throughput [rows] [epochs]
//! ```

use nexa_compute::{
    Control, CpuBackend, GenerateSpec, Head, Mlp, Preset, Problem, TrainConfig, generate, train,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let rows = args.next().transpose()?.unwrap_or(20_000);
    let epochs = args.next().transpose()?.unwrap_or(2) as u32;
    let classes = 8;
    let data = generate(
        &GenerateSpec::new(Problem::Projectile, rows)
            .seed(1)
            .classes(classes),
    )?;
    let backend = CpuBackend;
    println!("{rows} rows x {epochs} epochs, batch 256, fp32, CpuBackend (1 thread)");
    for preset in Preset::ALL {
        let config = preset.config(3, classes, Head::Classification);
        let parameters = config.parameters();
        let mut model = Mlp::new(&backend, config, 0)?;
        let settings = TrainConfig {
            epochs,
            batch_size: 256,
            ..TrainConfig::default()
        };
        let outcome = train(
            &backend,
            &mut model,
            &data,
            None,
            &settings,
            None,
            &mut |_| Control::Continue,
        )?;
        println!(
            "{:>14} ({parameters:>7} parameters): {:>10.0} samples/s, final loss {:.4}",
            preset.name(),
            outcome.samples_per_sec,
            outcome.last_loss
        );
    }
    Ok(())
}
