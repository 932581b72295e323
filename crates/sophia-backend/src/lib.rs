//! The Burn backends a run can choose at run time, by name. One code path serves every backend:
//! Burn dispatches on the device. The CPU backends are always compiled; the GPU backends are
//! cargo features of this crate (forwarded by `sophia-train`, `xtask` and `sophia-golden`).

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

mod denormals;
mod pool;
pub use denormals::{flush_denormals, flush_denormals_on_this_thread};
pub use pool::on_pool;

/// A Burn backend, by the name users pass to `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Burn's Flex CPU backend (default).
    #[default]
    Flex,
    /// Burn's ndarray CPU backend.
    Ndarray,
    /// WGPU with automatic API choice (Vulkan, Metal, DX12), WGSL shaders. Feature `wgpu`.
    Wgpu,
    /// WGPU pinned to Vulkan with SPIR-V shaders. Feature `vulkan`.
    Vulkan,
    /// CUDA. Feature `cuda`.
    Cuda,
    /// CubeCL's CPU backend (kernels compiled with LLVM), the CubeCL code path without a GPU.
    /// Feature `cubecl-cpu`.
    #[serde(rename = "cubecl-cpu")]
    CubeclCpu,
}

/// A backend that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// A name that is no backend.
    #[error("unknown backend `{0}`; choose one of {known}", known = Backend::names())]
    Unknown(String),
    /// A backend whose cargo feature this binary was built without.
    #[error("backend `{0}` is not compiled into this binary: rebuild with `--features {0}` (e.g. `cargo run -p xtask --features {0} -- train --backend {0}`)")]
    NotCompiled(Backend),
}

impl Backend {
    /// Every backend, in the order the command line lists them.
    pub const ALL: &[Self] = &[Self::Flex, Self::Ndarray, Self::Wgpu, Self::Vulkan, Self::Cuda, Self::CubeclCpu];

    /// The name users pass to `--backend`, also the backend's cargo feature.
    pub fn name(self) -> &'static str {
        match self {
            Self::Flex => "flex",
            Self::Ndarray => "ndarray",
            Self::Wgpu => "wgpu",
            Self::Vulkan => "vulkan",
            Self::Cuda => "cuda",
            Self::CubeclCpu => "cubecl-cpu",
        }
    }

    /// The names of all backends, comma-separated.
    pub fn names() -> String {
        Self::ALL.iter().map(|b| b.name()).collect::<Vec<_>>().join(", ")
    }
}

impl FromStr for Backend {
    type Err = BackendError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let lower = name.to_ascii_lowercase();
        Self::ALL.iter().copied().find(|b| b.name() == lower).ok_or_else(|| BackendError::Unknown(name.to_string()))
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Backend {
    /// Whether this build can run the backend.
    pub fn is_compiled(self) -> bool {
        match self {
            Self::Flex | Self::Ndarray => true,
            Self::Wgpu => cfg!(feature = "wgpu"),
            Self::Vulkan => cfg!(feature = "vulkan"),
            Self::Cuda => cfg!(feature = "cuda"),
            Self::CubeclCpu => cfg!(feature = "cubecl-cpu"),
        }
    }

    /// The device (without autodiff), or an error naming the cargo feature to enable.
    pub fn device(self) -> Result<Device, BackendError> {
        if !self.is_compiled() {
            return Err(BackendError::NotCompiled(self));
        }
        Ok(match self {
            Self::Flex => Device::flex(),
            // Burn 0.22 deprecates ndarray in favour of flex; it stays selectable for comparison.
            #[allow(deprecated)]
            Self::Ndarray => Device::ndarray(),
            #[cfg(feature = "wgpu")]
            Self::Wgpu => Device::wgpu(Default::default()),
            #[cfg(feature = "vulkan")]
            Self::Vulkan => Device::vulkan(Default::default()),
            #[cfg(feature = "cuda")]
            Self::Cuda => Device::cuda(0usize),
            #[cfg(feature = "cubecl-cpu")]
            Self::CubeclCpu => Device::cpu(),
            #[allow(unreachable_patterns)]
            _ => unreachable!("checked by is_compiled"),
        })
    }
}

/// The environment variable that picks the backend of the device-generic tests.
pub const TEST_BACKEND_ENV: &str = "SOPHIA_TEST_BACKEND";

/// The backend the device-generic tests run on: `$SOPHIA_TEST_BACKEND`, else flex.
/// `cargo xtask test --backend wgpu` sets it.
///
/// # Panics
/// When the variable names no backend or one this build lacks (the message names the feature).
pub fn test_backend() -> Backend {
    let name = std::env::var(TEST_BACKEND_ENV).unwrap_or_else(|_| "flex".into());
    let backend = name.parse::<Backend>().unwrap_or_else(|e| panic!("{TEST_BACKEND_ENV}: {e}"));
    if let Err(e) = backend.device() {
        panic!("{TEST_BACKEND_ENV}={name}: {e}");
    }
    backend
}
