//! The `physics` domain. SI units; angles in degrees.

use super::Law;
use crate::Rng;

/// Standard gravity of the bodies a projectile or pendulum is on: Moon to Jupiter.
fn gravity(rng: &mut Rng) -> f64 {
    rng.range(1.6, 24.8)
}

pub(crate) const PROJECTILE: Law = Law {
    features: &["launch_speed_m_s", "launch_angle_deg", "gravity_m_s2"],
    target: "range_m",
    sample: |rng, x| {
        x[0] = rng.range(5.0, 50.0);
        x[1] = rng.range(5.0, 85.0);
        x[2] = gravity(rng);
        x[0] * x[0] * (2.0 * x[1].to_radians()).sin() / x[2]
    },
};

pub(crate) const PENDULUM: Law = Law {
    features: &["length_m", "amplitude_deg", "gravity_m_s2"],
    target: "period_s",
    sample: |rng, x| {
        x[0] = rng.log_range(0.1, 10.0);
        x[1] = rng.range(2.0, 60.0);
        x[2] = gravity(rng);
        let theta = x[1].to_radians();
        // Series for the exact period: 1 + θ²/16 + 11θ⁴/3072, good to 0.1% at 60°.
        let correction = 1.0 + theta.powi(2) / 16.0 + 11.0 * theta.powi(4) / 3072.0;
        std::f64::consts::TAU * (x[0] / x[2]).sqrt() * correction
    },
};

pub(crate) const DAMPED_OSCILLATOR: Law = Law {
    features: &["mass_kg", "stiffness_n_m", "damping_ratio", "time_s"],
    target: "amplitude_ratio",
    sample: |rng, x| {
        x[0] = rng.log_range(0.1, 10.0);
        x[1] = rng.log_range(1.0, 1000.0);
        x[2] = rng.range(0.01, 0.9); // underdamped
        x[3] = rng.range(0.0, 5.0);
        // Envelope of x(t) / x(0): exp(-ζ ω₀ t), ω₀ = sqrt(k / m).
        let omega = (x[1] / x[0]).sqrt();
        (-x[2] * omega * x[3]).exp()
    },
};

/// The molar gas constant, J/(mol·K).
const R: f64 = 8.314_462_618;

pub(crate) const IDEAL_GAS: Law = Law {
    features: &["amount_mol", "temperature_k", "volume_m3"],
    target: "pressure_pa",
    sample: |rng, x| {
        x[0] = rng.range(0.1, 10.0);
        x[1] = rng.range(200.0, 800.0);
        x[2] = rng.range(0.01, 1.0);
        x[0] * R * x[1] / x[2]
    },
};
