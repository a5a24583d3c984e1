//! Which device to run on: the CUDA devices this machine has, and the choice between them
//! and the CPU.
//!
//! Discovery never fails and never panics: no driver, no device, a driver too old for the
//! bindings, or a build without the `cuda` feature all give an empty list, and
//! [`best_device`] then gives [`Device::Cpu`]. The choice itself is [`Device::best_of`], a
//! pure function of the list, so it is tested without a GPU.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One CUDA device, as the driver reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The driver's index, 0 for the first (what `CudaBackend::new` takes).
    pub ordinal: usize,
    /// The product name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Total device memory in bytes.
    pub total_memory: u64,
    /// `(major, minor)`, e.g. `(9, 0)` for a Hopper GPU.
    pub compute_capability: (u32, u32),
}

/// Where to run the operations of training and inference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    /// The CPU backend (`CpuBackend`): always there.
    Cpu,
    /// A CUDA device (`CudaBackend`, with the `cuda` feature).
    Cuda(DeviceInfo),
}

impl Device {
    /// The device to prefer among `devices`: the GPU with the most memory (the lowest
    /// ordinal among equals), or the CPU when there is none.
    pub fn best_of(devices: &[DeviceInfo]) -> Self {
        devices
            .iter()
            .max_by(|a, b| {
                a.total_memory
                    .cmp(&b.total_memory)
                    .then(b.ordinal.cmp(&a.ordinal))
            })
            .map_or(Self::Cpu, |d| Self::Cuda(d.clone()))
    }

    /// A short name for logs and reports: `cpu`, `cuda:0`, as the backend's `name()`.
    pub fn name(&self) -> String {
        match self {
            Self::Cpu => "cpu".into(),
            Self::Cuda(info) => format!("cuda:{}", info.ordinal),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(info) => write!(
                f,
                "cuda:{} ({}, {:.1} GiB, compute capability {}.{})",
                info.ordinal,
                info.name,
                info.total_memory as f64 / f64::from(1u32 << 30),
                info.compute_capability.0,
                info.compute_capability.1
            ),
        }
    }
}

/// The CUDA devices of this machine, in the driver's order. Empty without the `cuda`
/// feature, and with it when the driver library is missing or reports no device.
pub fn devices() -> Vec<DeviceInfo> {
    #[cfg(feature = "cuda")]
    {
        crate::backend::cuda::probe_devices()
    }
    #[cfg(not(feature = "cuda"))]
    {
        Vec::new()
    }
}

/// [`Device::best_of`] this machine's [`devices`]: a GPU when there is one, else the CPU.
pub fn best_device() -> Device {
    Device::best_of(&devices())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(ordinal: usize, gib: u64) -> DeviceInfo {
        DeviceInfo {
            ordinal,
            name: format!("gpu {ordinal}"),
            total_memory: gib << 30,
            compute_capability: (9, 0),
        }
    }

    #[test]
    fn the_cpu_when_there_is_no_gpu() {
        assert_eq!(Device::best_of(&[]), Device::Cpu);
        assert_eq!(Device::Cpu.name(), "cpu");
        assert_eq!(Device::Cpu.to_string(), "cpu");
    }

    #[test]
    fn the_gpu_with_the_most_memory_then_the_lowest_ordinal() {
        let list = [gpu(0, 40), gpu(1, 80), gpu(2, 80)];
        assert_eq!(Device::best_of(&list), Device::Cuda(gpu(1, 80)));
        assert_eq!(Device::best_of(&list[..1]).name(), "cuda:0");
        assert_eq!(
            Device::Cuda(gpu(1, 80)).to_string(),
            "cuda:1 (gpu 1, 80.0 GiB, compute capability 9.0)"
        );
    }

    /// Holds on every machine: with the feature off there is never a GPU; with it on, a
    /// machine without a driver (CI) finds none, without a panic, and one with a GPU picks
    /// it.
    #[test]
    fn discovery_agrees_with_the_choice() {
        let found = devices();
        if cfg!(not(feature = "cuda")) {
            assert!(found.is_empty());
        }
        assert_eq!(best_device() == Device::Cpu, found.is_empty());
        for (i, d) in found.iter().enumerate() {
            assert_eq!(d.ordinal, i);
            assert!(d.total_memory > 0, "{d:?}");
        }
    }
}
