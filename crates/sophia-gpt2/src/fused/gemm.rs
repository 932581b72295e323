//! The matrix products under the fused kernels: `C = A·B + β·C`, `β` 0 or 1, `A` and `B` in any
//! strided layout, `C` row-major, on the calling thread ([`gemm`]): the attention's and the LM
//! head's products, each inside a parallel task of its own. (The linear layers' products are
//! flex's own matmul, see [`product`](super::product).)
//!
//! On the calling thread, one of three kernels, chosen once per product by its shape and the
//! CPU ([`Kernel::for_product`]):
//!
//! - **tiles** (a product with a dimension below [`SMALL`]: the shapes of a small GPT's
//!   training step; on a CPU with AVX-512F, or with AVX2 and FMA): no packing of `A` (a tile's
//!   elements are broadcast from `A` in place, or from a row-major copy of each block of its
//!   columns where its rows are a multiple of 4 KiB apart) and none of `B` when its rows are
//!   contiguous (a `B` with strided rows, such as the tied head's `wteᵀ`, is first copied
//!   row-major). A register tile (AVX-512: 8 rows × 48 columns, 24 accumulators of 16 lanes;
//!   AVX2: 6 rows × 16 columns, 12 accumulators of 8 lanes) runs over blocks of [`KC`] steps of
//!   the inner dimension, so the block of `B` it streams stays in the L1 cache while every row
//!   block of `A` passes over it; the last tile of a row is masked, not padded.
//! - **packed**: the `gemm` crate's kernel (the one flex's own matmul runs) told to stay on the
//!   calling thread, which packs both operands into panels (AVX-512, AVX2/FMA, NEON or portable
//!   micro-kernels, chosen at run time); with every dimension large the packing is a small
//!   share of the work.
//!
//! Nothing here starts threads of its own inside the callers' parallel tasks (the
//! `matrixmultiply` crate's packed kernel, used here before, did, on every call: on a 2-core
//! CPU four busy threads, and in `bench throughput` on the 384-wide `cpu-30m` 88 000 to 171 000
//! involuntary context switches against 640 to 860 without it).
//!
//! Each kernel sums every element of `C` over the inner dimension in an order fixed by the
//! product's shape: the tile kernels whatever block of rows or columns of `C` a call computes
//! (so a product split over threads gives the same bits as on one thread). Both tile kernels
//! sum in the same order (one fused multiply-add per step of a [`KC`] block from zero, each
//! block's sum then added to `C`), so a product on tiles has the same bits on either
//! instruction set; the `gemm` crate's blocks of the inner dimension
//! beyond 512 follow the CPU's cache sizes, so its last bits may differ between CPUs.

use burn::backend::flex::FlexTensor;

use crate::kernels::VectorIsa;

/// Steps of the inner dimension per block.
const KC: usize = 128;
/// Below this size of its smallest dimension a product runs on the tiles (where the CPU has
/// them); at and above it, on the packed kernel.
const SMALL: usize = 256;

/// A matrix operand: its first element and its row and column strides (in elements).
#[derive(Clone, Copy)]
pub(super) struct Operand {
    pub(super) ptr: *const f32,
    pub(super) row_stride: isize,
    pub(super) col_stride: isize,
}

// SAFETY: an operand only reads storage that outlives every parallel task using it.
unsafe impl Send for Operand {}
unsafe impl Sync for Operand {}

impl Operand {
    /// A 2-D tensor in its own layout (copied to row-major only when a stride is negative).
    pub(super) fn matrix(tensor: &FlexTensor) -> (Self, Option<FlexTensor>) {
        if !tensor.layout().has_positive_strides() {
            let copy = tensor.to_contiguous();
            return (Self::matrix(&copy).0, Some(copy));
        }
        let layout = tensor.layout();
        let (_, _, row_stride, col_stride) = layout.as_2d_strides().expect("a matrix");
        let ptr = tensor.storage::<f32>()[layout.start_offset()..].as_ptr();
        (Self { ptr, row_stride, col_stride }, None)
    }

    /// A row-major matrix whose rows are `row_stride` elements apart.
    pub(super) fn row_major(data: &[f32], row_stride: usize) -> Self {
        Self { ptr: data.as_ptr(), row_stride: row_stride as isize, col_stride: 1 }
    }

    /// The sub-matrix from row `row` and column `col` on.
    pub(super) fn at(self, row: usize, col: usize) -> Self {
        let offset = row as isize * self.row_stride + col as isize * self.col_stride;
        // SAFETY: the callers only offset to elements inside the matrix.
        Self { ptr: unsafe { self.ptr.offset(offset) }, ..self }
    }

    /// The transposed matrix (the same elements, the strides swapped).
    pub(super) fn transposed(self) -> Self {
        Self { ptr: self.ptr, row_stride: self.col_stride, col_stride: self.row_stride }
    }
}

/// A row-major output, written by several tasks at disjoint blocks.
#[derive(Clone, Copy)]
pub(super) struct Output(pub(super) *mut f32);

// SAFETY: every task writes its own block of rows or columns.
unsafe impl Send for Output {}
unsafe impl Sync for Output {}

/// Which kernel computes a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kernel {
    /// This module's register tiles on AVX-512F.
    Avx512Tiles,
    /// This module's register tiles on AVX2 and FMA.
    Avx2Tiles,
    /// The `gemm` crate's packed kernel, on the calling thread.
    Packed,
}

impl Kernel {
    /// The kernel of an `[m, k] × [k, n]` product (decided on the whole product, never on a
    /// thread's block of it, so the split does not change the result).
    pub(super) fn for_product(m: usize, k: usize, n: usize) -> Self {
        match VectorIsa::detect() {
            VectorIsa::Avx512F if m.min(k).min(n) < SMALL => Self::Avx512Tiles,
            VectorIsa::Avx2Fma if m.min(k).min(n) < SMALL => Self::Avx2Tiles,
            _ => Self::Packed,
        }
    }

    /// `C = A·B + β·C` for `A` `[m, k]` and `B` `[k, n]`, `C` row-major with rows `c_stride`
    /// apart, `β` 0 or 1, on the calling thread.
    ///
    /// # Safety
    /// `a` and `b` hold `m × k` and `k × n` readable elements at their strides; `c` holds
    /// `m × n` elements at its stride that no other thread touches meanwhile, initialised unless
    /// `β = 0` (then they are written without being read); a tile kernel only where the CPU has
    /// its instructions (as [`for_product`](Self::for_product) chooses).
    #[allow(clippy::too_many_arguments, reason = "the BLAS argument list: shape, operands, β, output and its stride")]
    pub(super) unsafe fn run(self, m: usize, k: usize, n: usize, a: Operand, b: Operand, beta: f32, c: *mut f32, c_stride: usize) {
        assert!(beta == 0.0 || beta == 1.0, "β is 0 or 1");
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX-512F; the caller's contract covers the memory.
            Self::Avx512Tiles => unsafe { tiles::gemm::<tiles::Avx512>(m, k, n, a, b, beta != 0.0, c, c_stride) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX2 and FMA; the caller's contract covers the memory.
            Self::Avx2Tiles => unsafe { tiles::gemm::<tiles::Avx2>(m, k, n, a, b, beta != 0.0, c, c_stride) },
            // SAFETY: the caller's contract.
            _ => unsafe { packed(m, k, n, a, b, beta, c, c_stride) },
        }
    }
}

/// `C = A·B + β·C` on the `gemm` crate's kernel, which computes `dst = α·dst + β·lhs·rhs`: its
/// `α` is this function's `β` (`dst` not read when it is 0), its `β` is 1.
///
/// # Safety
/// As [`Kernel::run`].
#[allow(clippy::too_many_arguments, reason = "the BLAS argument list: shape, operands, β, output and its stride")]
#[rustfmt::skip]
unsafe fn packed(m: usize, k: usize, n: usize, a: Operand, b: Operand, beta: f32, c: *mut f32, c_stride: usize) {
    // SAFETY: the caller's contract; `C`'s columns are adjacent, its rows `c_stride` apart.
    unsafe {
        ::gemm::gemm(
            m, n, k,
            c, 1, c_stride as isize, beta != 0.0,
            a.ptr, a.col_stride, a.row_stride,
            b.ptr, b.col_stride, b.row_stride,
            beta, 1.0,
            false, false, false,
            ::gemm::Parallelism::None,
        )
    }
}

/// `C = A·B + β·C`, the whole product on the calling thread with its [`Kernel`].
///
/// # Safety
/// As [`Kernel::run`].
#[allow(clippy::too_many_arguments, reason = "the BLAS argument list: shape, operands, β, output and its stride")]
pub(super) unsafe fn gemm(m: usize, k: usize, n: usize, a: Operand, b: Operand, beta: f32, c: *mut f32, c_stride: usize) {
    // SAFETY: the caller's contract; the kernel comes from `for_product`.
    unsafe { Kernel::for_product(m, k, n).run(m, k, n, a, b, beta, c, c_stride) }
}

#[cfg(target_arch = "x86_64")]
mod tiles {
    use std::arch::x86_64::*;

    use super::{KC, Operand};

    /// A register-tile kernel on one instruction set.
    pub(super) trait Isa {
        /// Rows of the register tile.
        const MR: usize;
        /// Columns of the register tile (its vectors times their lanes).
        const NR: usize;

        /// `C[rows, width]` (+)= `A[rows, depth]·B[depth, width]` for the tile, `rows ≤ MR`,
        /// `1 ≤ width ≤ NR`.
        ///
        /// # Safety
        /// The CPU has the instruction set; the tile's elements of `A`, `B` and `C` are inside
        /// the operands.
        unsafe fn run(tile: &Tile, rows: usize, width: usize);
    }

    /// See [`Kernel::run`](super::Kernel::run); `accumulate` is `β = 1`.
    ///
    /// # Safety
    /// As [`Kernel::run`](super::Kernel::run), and the CPU has `I`'s instructions.
    #[allow(clippy::too_many_arguments, reason = "the BLAS argument list: shape, operands, β, output and its stride")]
    pub(super) unsafe fn gemm<I: Isa>(m: usize, k: usize, n: usize, a: Operand, b: Operand, accumulate: bool, c: *mut f32, c_stride: usize) {
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            if !accumulate {
                for i in 0..m {
                    // SAFETY: row `i` of `C` holds `n` elements.
                    unsafe { std::ptr::write_bytes(c.add(i * c_stride), 0, n) };
                }
            }
            return;
        }
        // `B` row-major (columns adjacent), copied so when it is not.
        let mut copy = Vec::new();
        let (b_ptr, b_stride) = if b.col_stride == 1 {
            (b.ptr, b.row_stride)
        } else {
            copy.resize(k * n, 0.0f32);
            // SAFETY: `b` holds `k × n` readable elements at its strides; both instruction sets
            // include AVX.
            unsafe { row_major_copy(k, n, b, &mut copy) };
            (copy.as_ptr(), n as isize)
        };
        // A row-major `A` whose rows are a multiple of 4 KiB apart goes through a contiguous
        // copy of each block of its columns (a straight copy of every row's `KC` elements): the
        // tile's rows would otherwise all fall in one set of the L1 cache. At other strides the
        // copy cost more than it saved (measured on the training shapes, 1.5 and 2 KiB strides
        // included), and a transposed `A` already holds a tile's rows side by side.
        let copy_a = a.col_stride == 1 && m > I::MR && a.row_stride % 1024 == 0;
        let mut block = if copy_a { vec![0.0f32; m * KC.min(k)] } else { Vec::new() };
        for pc in (0..k).step_by(KC) {
            let depth = KC.min(k - pc);
            let a = if copy_a {
                for (i, row) in block.chunks_exact_mut(depth).take(m).enumerate() {
                    // SAFETY: row `i` of `A` holds `depth` elements from column `pc` on.
                    row.copy_from_slice(unsafe { std::slice::from_raw_parts(a.at(i, pc).ptr, depth) });
                }
                Operand { ptr: block.as_ptr(), row_stride: depth as isize, col_stride: 1 }
            } else {
                a.at(0, pc)
            };
            let add = accumulate || pc > 0;
            for jc in (0..n).step_by(I::NR) {
                let width = I::NR.min(n - jc);
                for ic in (0..m).step_by(I::MR) {
                    // SAFETY: the tile's elements of `A`, `B` and `C` are inside the operands.
                    unsafe {
                        let tile = Tile {
                            a: a.ptr.offset(ic as isize * a.row_stride),
                            a_row_stride: a.row_stride,
                            a_col_stride: a.col_stride,
                            b: b_ptr.offset(pc as isize * b_stride + jc as isize),
                            b_stride,
                            c: c.add(ic * c_stride + jc),
                            c_stride,
                            depth,
                            add,
                        };
                        I::run(&tile, I::MR.min(m - ic), width);
                    }
                }
            }
        }
    }

    /// `B` `[k, n]` into `out` row-major. A transposed row-major matrix (`B = Wᵀ`, rows of `W`
    /// adjacent in memory) goes in blocks of 8 × 8 through the registers (eight rows of `W`
    /// loaded, transposed with unpacks and shuffles, stored as eight rows of `B`); the edges and
    /// other layouts element by element.
    ///
    /// # Safety
    /// `b` holds `k × n` readable elements at its strides; `out` holds `k × n`; the CPU has AVX.
    #[target_feature(enable = "avx")]
    unsafe fn row_major_copy(k: usize, n: usize, b: Operand, out: &mut [f32]) {
        assert!(out.len() >= k * n);
        // SAFETY (all reads): `B[p, j]` for `p < k`, `j < n` is inside `B`.
        let at = |p: usize, j: usize| unsafe { *b.ptr.offset(p as isize * b.row_stride + j as isize * b.col_stride) };
        let (k8, n8) = if b.row_stride == 1 { (k / 8 * 8, n / 8 * 8) } else { (0, 0) };
        for j in (0..n8).step_by(8) {
            for p in (0..k8).step_by(8) {
                // SAFETY: rows `j .. j + 8` of `W` hold `p .. p + 8`; rows `p .. p + 8` of `out`
                // hold `j .. j + 8`.
                unsafe {
                    let load = |r: usize| _mm256_loadu_ps(b.ptr.offset((j + r) as isize * b.col_stride + p as isize));
                    let (r0, r1, r2, r3, r4, r5, r6, r7) = (load(0), load(1), load(2), load(3), load(4), load(5), load(6), load(7));
                    let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
                    let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
                    let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
                    let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
                    let (u0, u1) = (_mm256_shuffle_ps::<0x44>(t0, t2), _mm256_shuffle_ps::<0xEE>(t0, t2));
                    let (u2, u3) = (_mm256_shuffle_ps::<0x44>(t1, t3), _mm256_shuffle_ps::<0xEE>(t1, t3));
                    let (u4, u5) = (_mm256_shuffle_ps::<0x44>(t4, t6), _mm256_shuffle_ps::<0xEE>(t4, t6));
                    let (u6, u7) = (_mm256_shuffle_ps::<0x44>(t5, t7), _mm256_shuffle_ps::<0xEE>(t5, t7));
                    let rows = [
                        _mm256_permute2f128_ps::<0x20>(u0, u4),
                        _mm256_permute2f128_ps::<0x20>(u1, u5),
                        _mm256_permute2f128_ps::<0x20>(u2, u6),
                        _mm256_permute2f128_ps::<0x20>(u3, u7),
                        _mm256_permute2f128_ps::<0x31>(u0, u4),
                        _mm256_permute2f128_ps::<0x31>(u1, u5),
                        _mm256_permute2f128_ps::<0x31>(u2, u6),
                        _mm256_permute2f128_ps::<0x31>(u3, u7),
                    ];
                    for (r, row) in rows.into_iter().enumerate() {
                        _mm256_storeu_ps(out.as_mut_ptr().add((p + r) * n + j), row);
                    }
                }
            }
            for p in k8..k {
                for jj in j..j + 8 {
                    out[p * n + jj] = at(p, jj);
                }
            }
        }
        for p in 0..k {
            for j in n8..n {
                out[p * n + j] = at(p, j);
            }
        }
    }

    /// One register tile: `C[rows, width]` (+)= `A[rows, depth]·B[depth, width]`.
    ///
    /// `A` is held as its pointer and strides rather than an [`Operand`]: copying an operand
    /// into the tile went through the stack as a wide load of narrower stores, a stall that
    /// perf put at a tenth of a training step.
    pub(super) struct Tile {
        a: *const f32,
        a_row_stride: isize,
        a_col_stride: isize,
        b: *const f32,
        b_stride: isize,
        c: *mut f32,
        c_stride: usize,
        depth: usize,
        add: bool,
    }

    /// The kernel for a tile's shape: `$kernel::<R, V>` for its rows `R ≤ $rows` and vectors
    /// `V ≤ $vectors`.
    macro_rules! by_shape {
        ($kernel:ident, $tile:expr, $rows:expr, $vectors:expr, $mask:expr; $($r:literal)*; $($v:literal)*) => {
            by_shape!(@rows $kernel, $tile, $rows, $vectors, $mask; [$($v)*]; $($r)*)
        };
        (@rows $kernel:ident, $tile:expr, $rows:expr, $vectors:expr, $mask:expr; $vs:tt; $($r:literal)*) => {
            match $rows {
                $($r => by_shape!(@vectors $kernel, $tile, $vectors, $mask, $r; $vs),)*
                _ => unreachable!("rows beyond the tile"),
            }
        };
        (@vectors $kernel:ident, $tile:expr, $vectors:expr, $mask:expr, $r:literal; [$($v:literal)*]) => {
            match $vectors {
                $($v => $kernel::<$r, $v>($tile, $mask),)*
                _ => unreachable!("vectors beyond the tile"),
            }
        };
    }

    /// 8 rows × 3 vectors of 16 lanes (24 accumulators of the 32 registers).
    pub(super) struct Avx512;

    impl Isa for Avx512 {
        const MR: usize = 8;
        const NR: usize = 48;

        #[target_feature(enable = "avx512f")]
        unsafe fn run(tile: &Tile, rows: usize, width: usize) {
            let vectors = width.div_ceil(16);
            let tail = width - 16 * (vectors - 1);
            let mask: __mmask16 = if tail == 16 { 0xFFFF } else { (1 << tail) - 1 };
            // SAFETY: the caller's contract.
            unsafe { by_shape!(avx512_kernel, tile, rows, vectors, mask; 1 2 3 4 5 6 7 8; 1 2 3) }
        }
    }

    /// The AVX-512 tile of `R` rows and `V` vectors, the last vector's lanes `mask`.
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512_kernel<const R: usize, const V: usize>(tile: &Tile, mask: __mmask16) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        let (mut a, mut b) = (tile.a, tile.b);
        for _ in 0..tile.depth {
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, bv) in bv.iter_mut().enumerate() {
                let mask = if v + 1 == V { mask } else { 0xFFFF };
                // SAFETY: the masked lanes of this row of `B` are inside it.
                *bv = unsafe { _mm512_maskz_loadu_ps(mask, b.add(16 * v)) };
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: row `r` of the tile's `A` at this step is inside `A`.
                let av = _mm512_set1_ps(unsafe { *a.offset(r as isize * tile.a_row_stride) });
                for (acc, &bv) in acc.iter_mut().zip(&bv) {
                    *acc = _mm512_fmadd_ps(av, bv, *acc);
                }
            }
            // One step along the inner dimension (past the operands after the last: wrapping,
            // never read).
            a = a.wrapping_offset(tile.a_col_stride);
            b = b.wrapping_offset(tile.b_stride);
        }
        for (r, acc) in acc.iter().enumerate() {
            for (v, &acc) in acc.iter().enumerate() {
                let mask = if v + 1 == V { mask } else { 0xFFFF };
                // SAFETY: the masked lanes of this row of `C` are inside it and this call's.
                unsafe {
                    let c = tile.c.add(r * tile.c_stride + 16 * v);
                    let out = if tile.add { _mm512_add_ps(acc, _mm512_maskz_loadu_ps(mask, c)) } else { acc };
                    _mm512_mask_storeu_ps(c, mask, out);
                }
            }
        }
    }

    /// 6 rows × 2 vectors of 8 lanes (12 accumulators of the 16 registers, two for `B`'s row
    /// and one for `A`'s broadcast element).
    pub(super) struct Avx2;

    impl Isa for Avx2 {
        const MR: usize = 6;
        const NR: usize = 16;

        #[target_feature(enable = "avx2,fma")]
        unsafe fn run(tile: &Tile, rows: usize, width: usize) {
            let vectors = width.div_ceil(8);
            let tail = (width - 8 * (vectors - 1)) as i32;
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(tail), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            let mask = (tail < 8).then_some(mask);
            // SAFETY: the caller's contract.
            unsafe { by_shape!(avx2_kernel, tile, rows, vectors, mask; 1 2 3 4 5 6; 1 2) }
        }
    }

    /// The AVX2 tile of `R` rows and `V` vectors, the last vector's lanes `mask` (all of them
    /// when `None`).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2_kernel<const R: usize, const V: usize>(tile: &Tile, mask: Option<__m256i>) {
        // SAFETY (the loads and stores): the masked lanes of these rows of `B` and `C` are inside
        // them (`C`'s this call's).
        let load = |p: *const f32, last: bool| unsafe {
            match mask {
                Some(mask) if last => _mm256_maskload_ps(p, mask),
                _ => _mm256_loadu_ps(p),
            }
        };
        let mut acc = [[_mm256_setzero_ps(); V]; R];
        let (mut a, mut b) = (tile.a, tile.b);
        for _ in 0..tile.depth {
            let mut bv = [_mm256_setzero_ps(); V];
            for (v, bv) in bv.iter_mut().enumerate() {
                *bv = load(b.wrapping_add(8 * v), v + 1 == V);
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: row `r` of the tile's `A` at this step is inside `A`.
                let av = _mm256_set1_ps(unsafe { *a.offset(r as isize * tile.a_row_stride) });
                for (acc, &bv) in acc.iter_mut().zip(&bv) {
                    *acc = _mm256_fmadd_ps(av, bv, *acc);
                }
            }
            // One step along the inner dimension (past the operands after the last: wrapping,
            // never read).
            a = a.wrapping_offset(tile.a_col_stride);
            b = b.wrapping_offset(tile.b_stride);
        }
        for (r, acc) in acc.iter().enumerate() {
            for (v, &acc) in acc.iter().enumerate() {
                let c = tile.c.wrapping_add(r * tile.c_stride + 8 * v);
                let out = if tile.add { _mm256_add_ps(acc, load(c, v + 1 == V)) } else { acc };
                // SAFETY: as the loads.
                unsafe {
                    match mask {
                        Some(mask) if v + 1 == V => _mm256_maskstore_ps(c, mask, out),
                        _ => _mm256_storeu_ps(c, out),
                    }
                }
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// `C = A·B (+ C)` in the tiles' order: per element, one `mul_add` per step of each [`KC`]
    /// block from zero, the block's sum then added to `C` (zeros with no inner dimension and `β = 0`).
    #[allow(clippy::too_many_arguments, reason = "the BLAS argument list, as the kernels'")]
    fn reference(m: usize, k: usize, n: usize, a: Operand, b: Operand, accumulate: bool, c: &mut [f32], c_stride: usize) {
        let at = |o: Operand, i: usize, j: usize| unsafe { *o.ptr.offset(i as isize * o.row_stride + j as isize * o.col_stride) };
        for i in 0..m {
            for j in 0..n {
                if k == 0 && !accumulate {
                    c[i * c_stride + j] = 0.0;
                }
                for pc in (0..k).step_by(KC) {
                    let sum = (pc..k.min(pc + KC)).fold(0.0f32, |sum, p| at(a, i, p).mul_add(at(b, p, j), sum));
                    let c = &mut c[i * c_stride + j];
                    *c = if accumulate || pc > 0 { sum + *c } else { sum };
                }
            }
        }
    }

    /// Values whose products and sums round (not small integers), varied by position.
    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len as u32).map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 10_007) as f32 / 3_001.0 - 1.6).collect()
    }

    /// Every tile kernel this CPU has gives the bits of the reference: shapes with partial row
    /// tiles and masked columns, an inner dimension over several blocks, `A` transposed and with
    /// rows 4 KiB apart (its copied path), `B` transposed (its row-major copy), `β = 1`.
    #[test]
    fn tiles_sum_in_the_reference_order_on_every_instruction_set() {
        let kernels: Vec<Kernel> = [("avx512f", Kernel::Avx512Tiles), ("avx2", Kernel::Avx2Tiles)]
            .into_iter()
            .filter(|(feature, _)| match *feature {
                "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
                _ => std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
            })
            .map(|(_, kernel)| kernel)
            .collect();
        let shapes = [(1, 1, 1), (7, 3, 5), (13, 130, 17), (64, 32, 64), (25, 300, 50), (9, 1024, 49), (6, 0, 16)];
        for kernel in kernels {
            for (m, k, n) in shapes {
                for (transpose_a, transpose_b, accumulate) in [(false, false, false), (true, false, true), (false, true, false), (true, true, true)] {
                    let (a_data, b_data) = (values(m * k, 1), values(k * n, 2));
                    let a = if transpose_a { Operand::row_major(&a_data, m).transposed() } else { Operand::row_major(&a_data, k) };
                    let b = if transpose_b { Operand::row_major(&b_data, k).transposed() } else { Operand::row_major(&b_data, n) };
                    let c_stride = n + 3;
                    let start = values(m * c_stride, 3);
                    let (mut got, mut want) = (start.clone(), start);
                    unsafe { kernel.run(m, k, n, a, b, if accumulate { 1.0 } else { 0.0 }, got.as_mut_ptr(), c_stride) };
                    reference(m, k, n, a, b, accumulate, &mut want, c_stride);
                    for i in 0..m {
                        let row = i * c_stride..i * c_stride + c_stride;
                        let bits = |c: &[f32]| c.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&got[row.clone()]), bits(&want[row]), "{kernel:?} {m}×{k}×{n}, Aᵀ {transpose_a}, Bᵀ {transpose_b}, β {accumulate}: row {i}");
                    }
                }
            }
        }
    }
}
