//! Choosing the backend at run time. One code path serves every backend: Burn dispatches on
//! the device. CPU backends are always compiled; GPU backends are cargo features.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

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

/// The names `--backend` accepts.
pub const BACKENDS: &str = "flex, ndarray, wgpu, vulkan, cuda, cubecl-cpu";

impl FromStr for Backend {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name.to_ascii_lowercase().as_str() {
            "flex" => Ok(Self::Flex),
            "ndarray" => Ok(Self::Ndarray),
            "wgpu" => Ok(Self::Wgpu),
            "vulkan" => Ok(Self::Vulkan),
            "cuda" => Ok(Self::Cuda),
            "cubecl-cpu" => Ok(Self::CubeclCpu),
            _ => Err(format!("unknown backend `{name}`; choose one of {BACKENDS}")),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Flex => "flex",
            Self::Ndarray => "ndarray",
            Self::Wgpu => "wgpu",
            Self::Vulkan => "vulkan",
            Self::Cuda => "cuda",
            Self::CubeclCpu => "cubecl-cpu",
        };
        f.write_str(name)
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
    pub fn device(self) -> Result<Device, String> {
        if !self.is_compiled() {
            return Err(format!(
                "backend `{self}` is not compiled into this binary: rebuild with `--features {self}` \
                 (e.g. `cargo run -p xtask --features {self} -- train --backend {self}`)"
            ));
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
