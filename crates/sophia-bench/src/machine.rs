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
        }
    }

    /// One line for tables and plot titles.
    pub fn describe(&self) -> String {
        format!("{}, {} logical CPUs, {} GiB, {}, backend {}", self.cpu, self.logical_cpus, self.memory_gib, self.os, self.backend)
    }
}
