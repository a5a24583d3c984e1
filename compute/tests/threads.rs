//! The CPU backend gives the same bits on any number of threads: the same model trained on
//! 1, 2 and 4 threads ends with the same weights, bit for bit. (Its own test binary: the thread
//! count is the process's.)

use nexa_compute::{
    Control, CpuBackend, GenerateSpec, Head, Mlp, Preset, Problem, TrainConfig, generate,
    set_threads, train,
};

fn weights(model: &Mlp<CpuBackend>) -> Vec<u32> {
    model
        .layers()
        .iter()
        .flat_map(|l| l.weight.iter().chain(l.bias.iter()).map(|w| w.to_bits()))
        .collect()
}

#[test]
fn training_gives_the_same_bits_on_1_2_and_4_threads() {
    // Large enough that every product and elementwise step is split between threads.
    let data = generate(
        &GenerateSpec::new(Problem::Projectile, 6000)
            .seed(3)
            .classes(4),
    )
    .unwrap();
    let backend = CpuBackend;
    let config = Preset::TeacherLarge.config(3, 4, Head::Classification);
    let settings = TrainConfig {
        epochs: 2,
        batch_size: 2048,
        ..TrainConfig::default()
    };
    let mut runs = Vec::new();
    for threads in [4, 1, 2, 4] {
        set_threads(threads);
        let mut model = Mlp::new(&backend, config.clone(), 7).unwrap();
        let outcome = train(
            &backend,
            &mut model,
            &data,
            None,
            &settings,
            None,
            &mut |_| Control::Continue,
        )
        .unwrap();
        runs.push((threads, weights(&model), outcome.last_loss.to_bits()));
    }
    let (_, first, loss) = &runs[0];
    assert!(!first.is_empty());
    for (threads, w, l) in &runs[1..] {
        assert_eq!(l, loss, "the loss on {threads} threads differs");
        let differ = w.iter().zip(first).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "{differ} weights differ on {threads} threads");
    }
}
