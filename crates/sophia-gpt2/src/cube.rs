//! The fused kernels of [`loss`](crate::loss) on Burn's CubeCL backends (WGPU, Vulkan, Metal,
//! CUDA, ROCm and CubeCL's CPU runtime, one `CubeBackend` for all of them), with this crate's
//! `cube` feature: CubeCL bodies for the two passes over `[rows × vocab]` f32 logits that Burn's
//! composed operations take several kernels for, and Burn's fusion would not merge into one (two
//! row reductions and a gather for the loss; a scan over the vocabulary for the sampled label).
//!
//! - cross-entropy forward ([`rows_kernel`], one cube per row): each unit keeps a running
//!   `(max, Σ exp(x − max))` over its strided part of the row, merged in shared memory
//!   (`s = s₁·e^{m₁−m} + s₂·e^{m₂−m}`); the row's `lse = m + ln s` and `nll = lse − x_t`; the
//!   mean over rows is Burn's;
//! - cross-entropy backward ([`gradient_kernel`], one unit per element):
//!   `g_row · (exp(x − lse) − [j = t])`, with `g_row = g/N` from the mean's backward pass;
//! - sampled label ([`sample_kernel`], one cube per row): the same `(max, sum)`, then each unit
//!   sums `exp(x − max)` over its own run of consecutive indices, one unit turns those sums into
//!   offsets, and the unit whose part crosses `u·sum` scans it for the first index whose
//!   cumulative sum exceeds it (the last index if rounding leaves none, as on the CPU).
//!
//! The kernels read every input through its strides and write the gradient through its own, so
//! no input is copied first: transposed and sliced views, broadcast per-row gradients, and the
//! pitched rows that CUDA's and ROCm's allocators give a `[rows, vocab]` tensor (each row padded
//! to an aligned length, the gradient's output included).
//!
//! The three kernels are the methods of [`LossKernels`], a Burn backend extension
//! (`#[backend_extension]`) implemented for `CubeBackend`: the macro routes a `Dispatch` tensor to
//! it, generates the `Fusion<CubeBackend>` implementation (each kernel a deferred operation in
//! Burn's fusion stream, its output shapes known when it is registered), and routes autodiff
//! tensors to the implementation for `Autodiff<B, C>` below, a hand-written backward node that
//! keeps the logits as they came, the targets and the per-row log-sum-exp, so the backward pass is
//! one kernel under any checkpointing strategy. Everything else in the model runs Burn's
//! operations on these backends; its element-wise chains (the GELU, the optimizer updates) are
//! what Burn's fusion merges.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, AutodiffBackend, Backend, Dispatch, DispatchDevice, TensorMetadata, backend_extension};
use burn::tensor::{DType, Int, Shape, Tensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::untile;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::{CubeCount, CubeDim, calculate_cube_count_elemwise};

use kernels::{gradient_kernel, rows_kernel, sample_kernel};

/// Units per cube of the row kernels: a power of two (the shared-memory reductions halve it).
const ROW_UNITS: u32 = 256;

/// Whether these kernels serve `tensor`: f32 on a CubeCL device.
pub(crate) fn applies<const D: usize>(tensor: &Tensor<D>) -> bool {
    tensor.dtype() == DType::F32 && matches!(tensor.device().inner().as_dispatch(), DispatchDevice::Cube(_))
}

/// Mean cross-entropy of `logits` `[rows, vocab]` against `targets` `[rows]` (the caller checks
/// [`applies`]).
pub(crate) fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let (nll, _lse) = <Dispatch as LossKernels>::cross_entropy_rows(logits.into_dispatch(), targets.into_dispatch());
    Tensor::<1>::from_dispatch(nll).mean()
}

/// Labels `[rows]` drawn from `softmax(logits)` (`[rows, vocab]`, no autodiff) with `uniforms`
/// `[rows]`, in the device's integer type (the caller checks [`applies`]).
pub(crate) fn sample_labels(logits: Tensor<2>, uniforms: Tensor<1>) -> Tensor<1, Int> {
    let int_dtype: DType = logits.device().settings().int_dtype.into();
    Tensor::from_dispatch(<Dispatch as LossKernels>::sample_labels(logits.into_dispatch(), uniforms.into_dispatch(), int_dtype))
}

/// The passes over `[rows × vocab]` logits that the loss and the refresh's labels take, as one
/// Burn backend extension: CubeCL kernels on `CubeBackend`, deferred operations on its `Fusion`,
/// and a hand-written backward pass under `Autodiff`.
#[backend_extension(Cube, Fusion, Autodiff)]
pub(crate) trait LossKernels: Backend {
    /// Per row of `logits` `[rows, vocab]` and its target: `(nll, lse)`, both `[rows]`, with
    /// `lse = log Σ_j exp(x_j)` and `nll = lse − x_t`.
    #[fusion(meta = row_specs)]
    fn cross_entropy_rows(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// `∂/∂x` of `Σ_rows grad_row · nll_row`: `grad_row · (exp(x − lse_row) − [j = t_row])`,
    /// `[rows, vocab]`.
    #[fusion(dtype = logits, shape = logits)]
    fn cross_entropy_rows_backward(logits: FloatTensor<Self>, targets: IntTensor<Self>, lse: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Per row of `logits` `[rows, vocab]`: the first index whose cumulative softmax exceeds the
    /// row's uniform (the last index when rounding leaves none), as `int_dtype` `[rows]`.
    #[fusion(meta = |logits, _uniforms, int_dtype| rows_spec(logits, *int_dtype))]
    fn sample_labels(logits: FloatTensor<Self>, uniforms: FloatTensor<Self>, int_dtype: DType) -> IntTensor<Self>;
}

/// One value of `dtype` per row of `logits` `[rows, vocab]`: a `[rows]` output, as Burn's fusion
/// registers it.
fn rows_spec(logits: &TensorSpec, dtype: DType) -> TensorSpec {
    TensorSpec::new(Shape::new([logits.shape[0]]), dtype)
}

/// The shapes of [`LossKernels::cross_entropy_rows`]' outputs: two `[rows]` tensors of the logits'
/// type.
fn row_specs(logits: &TensorSpec, _targets: &TensorSpec) -> (TensorSpec, TensorSpec) {
    let rows = rows_spec(logits, logits.dtype);
    (rows.clone(), rows)
}

/// A new `[rows]` tensor of `dtype` for the rows of `logits` `[rows, vocab]`.
fn empty_rows(logits: &CubeTensor, dtype: DType) -> CubeTensor {
    empty_device_dtype(logits.client.clone(), logits.device.clone(), Shape::new([logits.shape()[0]]), dtype)
}

impl LossKernels for CubeBackend {
    fn cross_entropy_rows(logits: CubeTensor, targets: CubeTensor) -> (CubeTensor, CubeTensor) {
        let logits = untile(logits);
        let [rows, vocab] = logits.shape().dims::<2>();
        let (nll, lse) = (empty_rows(&logits, logits.dtype), empty_rows(&logits, logits.dtype));
        let (cubes, cube_dim, units) = row_launch(&logits);
        let storage = [dtype_to_storage_type(logits.dtype), dtype_to_storage_type(targets.dtype)];
        rows_kernel::launch(
            &logits.client.clone(),
            cubes,
            cube_dim,
            logits.into_tensor_arg(),
            targets.into_tensor_arg(),
            nll.clone().into_tensor_arg(),
            lse.clone().into_tensor_arg(),
            rows,
            vocab,
            units,
            storage,
        );
        (nll, lse)
    }

    fn cross_entropy_rows_backward(logits: CubeTensor, targets: CubeTensor, lse: CubeTensor, grad: CubeTensor) -> CubeTensor {
        let logits = untile(logits);
        let [rows, vocab] = logits.shape().dims::<2>();
        let out = empty_device_dtype(logits.client.clone(), logits.device.clone(), logits.shape(), logits.dtype);
        let elements = rows * vocab;
        let cube_dim = CubeDim::new(&logits.client, elements);
        let storage = [dtype_to_storage_type(logits.dtype), dtype_to_storage_type(targets.dtype)];
        gradient_kernel::launch(
            &logits.client.clone(),
            calculate_cube_count_elemwise(&logits.client, elements, cube_dim),
            cube_dim,
            logits.into_tensor_arg(),
            targets.into_tensor_arg(),
            lse.into_tensor_arg(),
            grad.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            rows,
            vocab,
            storage,
        );
        out
    }

    fn sample_labels(logits: CubeTensor, uniforms: CubeTensor, int_dtype: DType) -> CubeTensor {
        let logits = untile(logits);
        let [rows, vocab] = logits.shape().dims::<2>();
        let labels = empty_rows(&logits, int_dtype);
        let (cubes, cube_dim, units) = row_launch(&logits);
        let storage = [dtype_to_storage_type(logits.dtype), dtype_to_storage_type(labels.dtype)];
        sample_kernel::launch(
            &logits.client.clone(),
            cubes,
            cube_dim,
            logits.into_tensor_arg(),
            uniforms.into_tensor_arg(),
            labels.clone().into_tensor_arg(),
            rows,
            vocab,
            units,
            storage,
        );
        labels
    }
}

/// Under autodiff the per-row losses are one tracked operation whose backward pass is
/// [`LossKernels::cross_entropy_rows_backward`]; `lse`, the gradient itself and the labels are
/// constants.
impl<B: LossKernels, C: CheckpointStrategy> LossKernels for Autodiff<B, C> {
    fn cross_entropy_rows(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        #[derive(Debug)]
        struct RowsBackward;

        impl<B: LossKernels> Backward<B, 1> for RowsBackward {
            /// The logits, the targets and the per-row log-sum-exp.
            type State = (FloatTensor<B>, IntTensor<B>, FloatTensor<B>);

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let (logits, targets, lse) = ops.state;
                let grad = grads.consume::<B>(&ops.node);
                if let [Some(parent)] = &ops.parents {
                    grads.register::<B>(parent.id, B::cross_entropy_rows_backward(logits, targets, lse, grad));
                }
            }
        }

        let prepared = RowsBackward.prepare::<C>([logits.node()]).compute_bound().stateful();
        let x = logits.into_primitive();
        match prepared {
            OpsKind::Tracked(prep) => {
                let (nll, lse) = B::cross_entropy_rows(x.clone(), targets.clone());
                (prep.finish((x, targets, lse.clone()), nll), Self::from_inner(lse))
            }
            OpsKind::UnTracked(prep) => {
                let (nll, lse) = B::cross_entropy_rows(x, targets);
                (prep.finish(nll), Self::from_inner(lse))
            }
        }
    }

    fn cross_entropy_rows_backward(logits: FloatTensor<Self>, targets: IntTensor<Self>, lse: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::from_inner(B::cross_entropy_rows_backward(Self::inner(logits), targets, Self::inner(lse), Self::inner(grad)))
    }

    fn sample_labels(logits: FloatTensor<Self>, uniforms: FloatTensor<Self>, int_dtype: DType) -> IntTensor<Self> {
        B::sample_labels(Self::inner(logits), Self::inner(uniforms), int_dtype)
    }
}

/// How a row kernel on `logits` `[rows, vocab]` is launched: one cube per row, on a grid that
/// stays inside the devices' 65535 cubes per axis, of [`ROW_UNITS`] units (or the largest power
/// of two the device allows below it); `(cubes, cube dimension, units)`.
fn row_launch(logits: &CubeTensor) -> (CubeCount, CubeDim, usize) {
    const PER_AXIS: usize = 65_535;
    let [rows, _] = logits.shape().dims::<2>();
    let max = logits.client.properties().hardware.max_cube_dim.0.max(1);
    let mut units = ROW_UNITS;
    while units > max {
        units /= 2;
    }
    let cubes = CubeCount::Static(rows.clamp(1, PER_AXIS) as u32, rows.div_ceil(PER_AXIS).max(1) as u32, 1);
    (cubes, CubeDim::new_1d(units), units as usize)
}

/// The CubeCL kernels, in CubeCL's own `Tensor` and scalar types.
mod kernels {
    use cubecl::prelude::*;

    /// Where element `col` of row `row` of a `[rows, cols]` tensor lies, whatever its strides: the
    /// inputs, and the gradient's new `[rows, vocab]` output, which may be pitched (the `[rows]`
    /// outputs are new and contiguous).
    #[cube]
    fn at<T: CubePrimitive>(tensor: &Tensor<T>, row: usize, col: usize) -> usize {
        row * tensor.stride(0) + col * tensor.stride(1)
    }

    /// Where element `i` of a `[rows]` input lies, whatever its stride.
    #[cube]
    fn at_row<T: CubePrimitive>(tensor: &Tensor<T>, i: usize) -> usize {
        i * tensor.stride(0)
    }

    /// This cube's row (`rows` or more: nothing to do).
    #[cube]
    fn cube_row() -> usize {
        CUBE_POS_X as usize + CUBE_POS_Y as usize * CUBE_COUNT_X as usize
    }

    /// The row's `(max, Σ exp(x − max))` over all units of the cube (the same in every unit): each
    /// unit's running pair over the elements `unit, unit + units, ...`, merged pairwise in shared
    /// memory. The starting maximum is the lowest finite float, not `−∞` (WGSL has no infinite
    /// literal); its weight `exp(lowest − m)` is zero once a real value is seen.
    #[cube]
    fn row_max_and_sum<F: Float>(logits: &Tensor<F>, row: usize, vocab: usize, #[comptime] units: usize) -> (F, F) {
        let unit = UNIT_POS_X as usize;
        let mut max = F::min_value();
        let mut sum = F::new(0.0);
        let mut j = unit;
        while j < vocab {
            let v = logits[at(logits, row, j)];
            if v > max {
                sum = sum * (max - v).exp() + F::new(1.0);
                max = v;
            } else {
                sum += (v - max).exp();
            }
            j += units;
        }
        let mut maxima = Shared::new_slice(units);
        let mut sums = Shared::new_slice(units);
        maxima[unit] = max;
        sums[unit] = sum;
        sync_cube();
        let mut half = CUBE_DIM_X as usize / 2;
        while half > 0 {
            if unit < half {
                let m1 = maxima[unit];
                let s1 = sums[unit];
                let m2 = maxima[unit + half];
                let s2 = sums[unit + half];
                let m = F::max(m1, m2);
                maxima[unit] = m;
                sums[unit] = s1 * (m1 - m).exp() + s2 * (m2 - m).exp();
            }
            sync_cube();
            half /= 2;
        }
        (maxima[0], sums[0])
    }

    /// Per row: `nll = lse − x_t` and `lse = max + ln Σ exp(x − max)`.
    #[cube(launch)]
    pub(super) fn rows_kernel<F: Float, I: Numeric>(
        logits: &Tensor<F>,
        targets: &Tensor<I>,
        nll: &mut Tensor<F>,
        lse: &mut Tensor<F>,
        rows: usize,
        vocab: usize,
        #[comptime] units: usize,
        #[define(F, I)] _dtypes: [ElemType; 2],
    ) {
        let row = cube_row();
        if row >= rows {
            terminate!();
        }
        let (max, sum) = row_max_and_sum::<F>(logits, row, vocab, units);
        if UNIT_POS_X == 0 {
            let row_lse = max + sum.ln();
            lse[row] = row_lse;
            nll[row] = row_lse - logits[at(logits, row, u32::cast_from(targets[at_row(targets, row)]) as usize)];
        }
    }

    /// Per element: `grad_row · (exp(x − lse_row) − [j = t_row])`.
    #[cube(launch)]
    pub(super) fn gradient_kernel<F: Float, I: Numeric>(
        logits: &Tensor<F>,
        targets: &Tensor<I>,
        lse: &Tensor<F>,
        grad: &Tensor<F>,
        out: &mut Tensor<F>,
        rows: usize,
        vocab: usize,
        #[define(F, I)] _dtypes: [ElemType; 2],
    ) {
        let pos = ABSOLUTE_POS;
        if pos >= rows * vocab {
            terminate!();
        }
        let row = pos / vocab;
        let col = pos - row * vocab;
        let scale = grad[at_row(grad, row)];
        let mut value = scale * (logits[at(logits, row, col)] - lse[at_row(lse, row)]).exp();
        if col == u32::cast_from(targets[at_row(targets, row)]) as usize {
            value -= scale;
        }
        let index = at(&*out, row, col);
        out[index] = value;
    }

    /// Per row: the first index whose cumulative `exp(x − max)` exceeds `u·Σ exp(x − max)`, or the
    /// last index when rounding leaves none.
    #[cube(launch)]
    pub(super) fn sample_kernel<F: Float, I: Numeric>(
        logits: &Tensor<F>,
        uniforms: &Tensor<F>,
        labels: &mut Tensor<I>,
        rows: usize,
        vocab: usize,
        #[comptime] units: usize,
        #[define(F, I)] _dtypes: [ElemType; 2],
    ) {
        let row = cube_row();
        if row >= rows {
            terminate!();
        }
        let unit = UNIT_POS_X as usize;
        let (max, sum) = row_max_and_sum::<F>(logits, row, vocab, units);
        let target = uniforms[at_row(uniforms, row)] * sum;

        // This unit's run of consecutive indices and its sum.
        let part = vocab.div_ceil(units);
        let begin = usize::min(unit * part, vocab);
        let end = usize::min(begin + part, vocab);
        let mut part_sum = F::new(0.0);
        for j in begin..end {
            part_sum += (logits[at(logits, row, j)] - max).exp();
        }
        // The parts' offsets: an exclusive prefix sum, by one unit (`units` additions).
        let mut offsets = Shared::new_slice(units);
        offsets[unit] = part_sum;
        sync_cube();
        if unit == 0 {
            let mut acc = F::new(0.0);
            for k in 0..CUBE_DIM_X as usize {
                let s = offsets[k];
                offsets[k] = acc;
                acc += s;
            }
        }
        sync_cube();

        // The unit whose part crosses the target finds the index; the smallest found wins.
        let mut found = Shared::new_slice(units);
        let mut first = vocab as u32;
        let mut acc = offsets[unit];
        if acc + part_sum > target {
            let mut j = begin;
            while j < end {
                acc += (logits[at(logits, row, j)] - max).exp();
                if acc > target {
                    first = j as u32;
                    j = end;
                }
                j += 1;
            }
        }
        found[unit] = first;
        sync_cube();
        let mut half = CUBE_DIM_X as usize / 2;
        while half > 0 {
            if unit < half {
                found[unit] = u32::min(found[unit], found[unit + half]);
            }
            sync_cube();
            half /= 2;
        }
        if unit == 0 {
            labels[row] = I::cast_from(u32::min(found[0], (vocab - 1) as u32));
        }
    }
}

/// The kernels on `CubeBackend` itself, with views for inputs. Through Burn's fusion (the path of
/// the model and of the other tests) a kernel's inputs arrive as the fusion stream wrote them,
/// contiguous on WGPU and CubeCL's CPU runtime; on CUDA and ROCm in pitched rows, which these
/// views reproduce: rows padded past their end, and a transposed view besides.
#[cfg(test)]
mod tests {
    use burn::backend::ops::{FloatTensorOps, IntTensorOps};
    use burn::tensor::TensorData;
    use burn_cubecl::CubeDevice;
    use cubecl::future::block_on;

    use super::*;

    const ROWS: usize = 5;
    const VOCAB: usize = 37;
    /// Elements past the end of each padded row.
    const PAD: usize = 11;

    /// The CubeCL device of `SOPHIA_TEST_BACKEND`.
    fn device() -> CubeDevice {
        match sophia_golden::test_device().as_dispatch() {
            DispatchDevice::Cube(device) => device.clone(),
            other => panic!("these tests need a CubeCL device (SOPHIA_TEST_BACKEND=wgpu or cubecl-cpu), not {other:?}"),
        }
    }

    fn floats(values: Vec<f32>, shape: [usize; 2], device: &CubeDevice) -> CubeTensor {
        CubeBackend::float_from_data(TensorData::new(values, shape), device)
    }

    fn read(tensor: CubeTensor) -> Vec<f32> {
        block_on(CubeBackend::float_into_data(tensor)).expect("a tensor on the device").convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    fn read_ints(tensor: CubeTensor) -> Vec<i64> {
        block_on(CubeBackend::int_into_data(tensor)).expect("a tensor on the device").convert::<i64>().try_to_vec::<i64>().unwrap()
    }

    /// Logit `(row, j)`: spread over ±5, no two rows alike.
    fn logit(row: usize, j: usize) -> f32 {
        ((row * 7919 + j * 104_729) % 101) as f32 / 10.0 - 5.0
    }

    /// The logits `[ROWS, VOCAB]` as a contiguous tensor, in rows padded past their end, and as a
    /// transposed view.
    fn layouts(device: &CubeDevice) -> [(&'static str, CubeTensor); 3] {
        let contiguous = (0..ROWS).flat_map(|row| (0..VOCAB).map(move |j| logit(row, j))).collect();
        let padded = (0..ROWS).flat_map(|row| (0..VOCAB + PAD).map(move |j| if j < VOCAB { logit(row, j) } else { 1e3 })).collect();
        // What a pitched allocation is: rows `VOCAB + PAD` apart, `VOCAB` of them used.
        let mut padded = floats(padded, [ROWS, VOCAB + PAD], device);
        padded.meta.shape = [ROWS, VOCAB].into();
        let transposed = (0..VOCAB).flat_map(|j| (0..ROWS).map(move |row| logit(row, j))).collect();
        let transposed = CubeBackend::float_swap_dims(floats(transposed, [VOCAB, ROWS], device), 0, 1);
        assert!(!padded.is_contiguous() && !transposed.is_contiguous(), "the views keep their strides");
        [("contiguous", floats(contiguous, [ROWS, VOCAB], device)), ("padded rows", padded), ("transposed", transposed)]
    }

    #[test]
    fn views_of_the_logits_give_what_contiguous_logits_give() {
        let device = device();
        let targets = CubeBackend::int_from_data(TensorData::new(vec![0i32, 36, 5, 17, 2], [ROWS]), &device);
        let uniforms = CubeBackend::float_from_data(TensorData::new(vec![0.1f32, 0.5, 0.9, 0.3, 0.7], [ROWS]), &device);
        // The gradient of a mean arrives broadcast: one value, stride 0.
        let grad = CubeBackend::float_expand(CubeBackend::float_from_data(TensorData::new(vec![0.2f32], [1]), &device), Shape::new([ROWS]));
        let results = layouts(&device).map(|(layout, logits)| {
            let (nll, lse) = CubeBackend::cross_entropy_rows(logits.clone(), targets.clone());
            let gradient = CubeBackend::cross_entropy_rows_backward(logits.clone(), targets.clone(), lse.clone(), grad.clone());
            let labels = CubeBackend::sample_labels(logits, uniforms.clone(), DType::I32);
            (layout, read(nll), read(lse), read(gradient), read_ints(labels))
        });
        let (_, nll, lse, gradient, labels) = &results[0];
        for (row, &got) in lse.iter().enumerate() {
            let expected = (0..VOCAB).map(|j| (logit(row, j) as f64).exp()).sum::<f64>().ln();
            assert!((got as f64 - expected).abs() < 1e-5, "row {row}: lse {got} vs {expected}");
        }
        for (layout, other_nll, other_lse, other_gradient, other_labels) in &results[1..] {
            assert_eq!((other_nll, other_lse), (nll, lse), "{layout}: the losses");
            assert_eq!(other_gradient, gradient, "{layout}: the gradient");
            assert_eq!(other_labels, labels, "{layout}: the labels");
        }
    }
}
