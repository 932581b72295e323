//! The machine a measurement ran on, stored in every JSON result so that figures from different
//! machines are never mixed up.

use serde::{Deserialize, Serialize};

/// Where a benchmark ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model (from `/proc/cpuinfo`), or `unknown`.
    pub cpu: String,
    /// Logical CPUs available to the process.
    pub logical_cpus: usize,
    /// Physical memory in GiB (from `/proc/meminfo`), 0 when unknown.
    pub memory_gib: f64,
    /// Operating system and architecture.
    pub os: String,
    /// The Burn backend measured.
    pub backend: String,
    /// The widest vector instructions the fused kernels use on this CPU (`AVX-512F`,
    /// `AVX2+FMA`, `none` on x86-64 without them; `unknown` elsewhere, and in results recorded
    /// before this field): the attention's and the fused LM head's matrix products run on
    /// register tiles with AVX-512F or AVX2 (the same bits, at different speeds) and on the
    /// `gemm` crate's packed kernel without them (other last bits), so speed figures compare
    /// only within one.
    #[serde(default = "unknown")]
    pub vector_isa: String,
}

fn unknown() -> String {
    "unknown".into()
}

/// [`Machine::vector_isa`] for this CPU.
fn vector_isa() -> String {
    use sophia_gpt2::kernels::VectorIsa;
    let isa = match VectorIsa::detect() {
        VectorIsa::Avx512F => "AVX-512F",
        VectorIsa::Avx2Fma => "AVX2+FMA",
        VectorIsa::Portable if cfg!(target_arch = "x86_64") => "none",
        VectorIsa::Portable => return unknown(),
    };
    isa.into()
}

impl Machine {
    /// Describe this machine, measuring on `backend`.
    pub fn detect(backend: &str) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()))
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib =
            meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok()).unwrap_or(0.0);
        Self {
            cpu,
            logical_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: (memory_kib / (1024.0 * 1024.0) * 10.0).round() / 10.0,
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
            backend: backend.into(),
            vector_isa: vector_isa(),
        }
    }

    /// One line for tables and plot titles.
    pub fn describe(&self) -> String {
        format!("{} ({}), {} logical CPUs, {} GiB, {}, backend {}", self.cpu, self.vector_isa, self.logical_cpus, self.memory_gib, self.os, self.backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_recorded_before_the_vector_isa_read_as_unknown_and_this_cpu_names_its_own() {
        let old = r#"{"cpu": "Intel(R) Xeon(R) Processor", "logical_cpus": 2, "memory_gib": 23.5, "os": "linux x86_64", "backend": "flex"}"#;
        let machine: Machine = serde_json::from_str(old).unwrap();
        assert_eq!(machine.vector_isa, "unknown");
        assert!(machine.describe().starts_with("Intel(R) Xeon(R) Processor (unknown), 2 logical CPUs"), "{}", machine.describe());
        let here = Machine::detect("flex");
        let known: &[&str] = if cfg!(target_arch = "x86_64") { &["AVX-512F", "AVX2+FMA", "none"] } else { &["unknown"] };
        assert!(known.contains(&here.vector_isa.as_str()), "{}", here.vector_isa);
        assert_eq!(serde_json::from_str::<Machine>(&serde_json::to_string(&here).unwrap()).unwrap(), here);
    }
}
