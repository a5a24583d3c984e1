//! The `circuits` domain: lumped electrical components, SI units.

use super::Law;

pub(crate) const RESISTOR_POWER: Law = Law {
    features: &["voltage_v", "resistance_ohm"],
    target: "power_w",
    sample: |rng, x| {
        x[0] = rng.range(0.5, 24.0);
        x[1] = rng.log_range(1.0, 10_000.0);
        x[0] * x[0] / x[1]
    },
};

pub(crate) const RC_CHARGING: Law = Law {
    features: &["supply_v", "resistance_ohm", "capacitance_f", "time_s"],
    target: "capacitor_v",
    sample: |rng, x| {
        x[0] = rng.range(1.0, 24.0);
        x[1] = rng.log_range(100.0, 100_000.0);
        x[2] = rng.log_range(1e-6, 1e-3);
        let tau = x[1] * x[2];
        x[3] = rng.range(0.0, 5.0) * tau;
        x[0] * (1.0 - (-x[3] / tau).exp())
    },
};

pub(crate) const LC_RESONANCE: Law = Law {
    features: &["inductance_h", "capacitance_f"],
    target: "frequency_hz",
    sample: |rng, x| {
        x[0] = rng.log_range(1e-6, 1e-1);
        x[1] = rng.log_range(1e-12, 1e-6);
        1.0 / (std::f64::consts::TAU * (x[0] * x[1]).sqrt())
    },
};
