//! Markdown tables for reports (sweeps, benchmarks): the one writer of them.

use std::fmt::Write as _;

/// A markdown table with `header` and `rows` (each row as many cells as the header).
pub fn markdown(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(out, "|{}|", header.iter().map(|_| "---").collect::<Vec<_>>().join("|"));
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out
}
