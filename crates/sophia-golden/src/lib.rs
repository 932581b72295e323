//! Test support for the golden reference vectors produced by an independent NumPy/JAX
//! reference (format: `data/README.md`).
//!
//! The vectors ship with the repository in this crate's `data/`, so a bare clone passes its
//! tests; the directory in `SOPHIA_GOLDEN_DIR` replaces them when it is set (another golden set
//! in the same format). A missing directory or file fails the test with a message that says
//! where it looked: golden tests never skip.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use sophia_backend::{TEST_BACKEND_ENV, test_backend};

/// The device (without autodiff) of [`test_backend`].
///
/// # Panics
/// When the backend is not compiled into this build (the message names the feature).
pub fn test_device() -> burn::tensor::Device {
    test_backend().device().expect("test_backend checks the device")
}

/// How much looser than on the CPU reference path the golden tolerances are on
/// [`test_backend`]: GPU kernels reduce in other orders and fuse element-wise operations, so
/// float results differ in the last bits and those differences grow through a few optimizer
/// steps. Exact quantities (step counts, win counts) stay exact.
pub fn backend_tolerance_factor() -> f64 {
    if test_backend() == sophia_backend::Backend::Flex { 1.0 } else { 10.0 }
}

/// The environment variable that points the golden tests at another directory.
pub const GOLDEN_DIR_ENV: &str = "SOPHIA_GOLDEN_DIR";

/// The golden directory: `$SOPHIA_GOLDEN_DIR`, else this crate's `data/`.
///
/// # Panics
/// When the directory does not exist (a golden test must fail, not skip).
pub fn golden_dir() -> PathBuf {
    let dir = match std::env::var_os(GOLDEN_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("data"),
    };
    assert!(
        dir.is_dir(),
        "golden directory {} not found: restore crates/sophia-golden/data from the repository, or point {GOLDEN_DIR_ENV} at a golden set",
        dir.display()
    );
    dir
}

/// Parse one golden JSON file (`name` relative to [`golden_dir`]).
///
/// # Panics
/// When the file is missing or malformed, naming the file.
pub fn load<T: for<'de> Deserialize<'de>>(name: &str) -> T {
    let path = golden_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// A tensor object of the golden format: flat row-major data and its shape.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct GoldenTensor<T = f32> {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<T>,
}

impl<T> GoldenTensor<T> {
    /// Number of elements the shape describes.
    pub fn num_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Tolerance `|got − want| <= atol + rtol · |want|`, elementwise, widened on a GPU test
/// backend by [`backend_tolerance_factor`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Relative part.
    pub rtol: f64,
    /// Absolute part.
    pub atol: f64,
}

impl Tolerance {
    /// A tolerance with the given relative and absolute parts.
    pub const fn new(rtol: f64, atol: f64) -> Self {
        Self { rtol, atol }
    }

    /// Check every element; on failure report the worst element with its index and `what`.
    ///
    /// # Panics
    /// When the lengths differ or any element is outside the tolerance (NaN always is).
    pub fn assert_close(&self, what: &str, got: &[f32], want: &[f32]) {
        let this = self.on_test_backend();
        assert_eq!(got.len(), want.len(), "{what}: {} values, expected {}", got.len(), want.len());
        let mut worst: Option<(usize, f64)> = None;
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let (g, w) = (g as f64, w as f64);
            let excess = (g - w).abs() - (this.atol + this.rtol * w.abs());
            if (excess > 0.0 || excess.is_nan()) && worst.is_none_or(|(_, e)| excess > e || excess.is_nan()) {
                worst = Some((i, excess));
            }
        }
        if let Some((i, _)) = worst {
            panic!("{what}: element {i} is {} but the reference is {} (rtol {}, atol {} on {})", got[i], want[i], this.rtol, this.atol, test_backend());
        }
    }

    /// Check one scalar.
    pub fn assert_scalar(&self, what: &str, got: f64, want: f64) {
        let this = self.on_test_backend();
        let ok = (got - want).abs() <= this.atol + this.rtol * want.abs();
        assert!(ok, "{what}: {got} but the reference is {want} (rtol {}, atol {} on {})", this.rtol, this.atol, test_backend());
    }

    /// This tolerance widened by [`backend_tolerance_factor`].
    pub fn on_test_backend(&self) -> Self {
        let factor = backend_tolerance_factor();
        Self { rtol: self.rtol * factor, atol: self.atol * factor }
    }
}

/// An optimizer's state as it would be checkpointed: the tensors and scalars of its burnpack
/// record, by name (`"{param_id}.{leaf}"`).
pub struct RecordedState {
    tensors: std::collections::BTreeMap<String, Vec<f32>>,
    scalars: std::collections::BTreeMap<String, burn_pack::Scalar>,
}

impl RecordedState {
    /// Serialize `record` and read it back.
    pub fn read(record: burn::optim::OptimizerRecord) -> Self {
        let reader = burn_pack::Reader::from_bytes(record.into_bytes().expect("record serializes")).expect("record reads back");
        let tensors = reader
            .tensor_names()
            .into_iter()
            .map(|name| {
                let bytes = reader.tensor_data(name).expect("tensor data");
                let values = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                (name.to_string(), values)
            })
            .collect();
        Self { tensors, scalars: reader.scalars().clone() }
    }

    /// The state tensor `leaf` of parameter `id`; a parameter never stepped has `len` zeros.
    pub fn tensor(&self, id: burn::module::ParamId, leaf: &str, len: usize) -> Vec<f32> {
        self.tensors.get(&format!("{}.{leaf}", id.val())).cloned().unwrap_or_else(|| vec![0.0; len])
    }

    /// The integer scalar `leaf` of parameter `id` (0 when absent).
    pub fn scalar(&self, id: burn::module::ParamId, leaf: &str) -> usize {
        self.scalars.get(&format!("{}.{leaf}", id.val())).map(|s| usize::try_from(*s).expect("integer scalar")).unwrap_or(0)
    }
}
