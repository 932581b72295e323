//! Flush-to-zero for the CPU backends' threads.
//!
//! A training run can produce subnormal `f32` values (magnitudes below 1.18e-38), for example where
//! probabilities underflow in a softmax and flow on through the backward pass. x86 CPUs handle
//! subnormal operands and results in microcode, many times slower than a normal FMA, and subnormals
//! in a matrix stall gemm's micro-kernel. Measured on the char model with SophiaG at lr
//! 2.4e-3 on our 2-core AVX-512 machine: the step time grew from 0.22 s to 1.2 s between steps 100
//! and 400, 87% of it in gemm's AVX-512 micro-kernel; setting FTZ and DAZ in the running process
//! brought it back to 0.28 s. PyTorch offers the same switch (`torch.set_flush_denormal(True)`).
//!
//! Flushing changes only values below 1.18e-38 (to zero), far below anything a loss, gradient or
//! optimizer state of this project resolves; runs stay deterministic, and a resumed run flushes
//! like the run it continues. It is a property of threads, so it is the application's choice:
//! `xtask` and the `learner_gpt2` example call [`flush_denormals`] first thing in `main`; a library
//! that depends on `sophia-optim` or `sophia-gpt2` is left as it is.

/// Make `f32`/`f64` arithmetic flush subnormal results to zero and read subnormal inputs as zero
/// on the calling thread and on every thread of rayon's global pool (where Burn's flex backend
/// and gemm run their parallel work): x86-64's MXCSR bits FTZ and DAZ, aarch64's FPCR.FZ.
/// A no-op on other architectures.
///
/// Call it before anything uses rayon: the global pool is configured when it is first built
/// (with threads that have a main thread's stack, so that [`on_pool`](crate::on_pool) can move
/// an application's work there).
///
/// # Errors
/// When rayon's global pool was built before (by an earlier call or by other code).
pub fn flush_denormals() -> Result<(), rayon::ThreadPoolBuildError> {
    flush_denormals_on_this_thread();
    rayon::ThreadPoolBuilder::new().stack_size(crate::pool::STACK_BYTES).start_handler(|_| flush_denormals_on_this_thread()).build_global()
}

/// Set flush-to-zero and denormals-are-zero on the calling thread only.
pub fn flush_denormals_on_this_thread() {
    #[cfg(target_arch = "x86_64")]
    {
        /// MXCSR bit 15: results that would be subnormal are zero.
        const FLUSH_TO_ZERO: u32 = 1 << 15;
        /// MXCSR bit 6: subnormal inputs are read as zero.
        const DENORMALS_ARE_ZERO: u32 = 1 << 6;
        let mut mxcsr: u32 = 0;
        // SAFETY: `stmxcsr`/`ldmxcsr` read and write the thread's SSE control register through a
        // valid, aligned u32; only the two flush bits change.
        unsafe {
            core::arch::asm!("stmxcsr [{}]", in(reg) &mut mxcsr, options(nostack));
            mxcsr |= FLUSH_TO_ZERO | DENORMALS_ARE_ZERO;
            core::arch::asm!("ldmxcsr [{}]", in(reg) &mxcsr, options(nostack, readonly));
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        /// FPCR bit 24: flush subnormal inputs and results to zero.
        const FLUSH_TO_ZERO: u64 = 1 << 24;
        // SAFETY: reading and writing the thread's floating-point control register; only the
        // flush bit changes.
        unsafe {
            let fpcr: u64;
            core::arch::asm!("mrs {}, fpcr", out(reg) fpcr, options(nomem, nostack));
            core::arch::asm!("msr fpcr, {}", in(reg) fpcr | FLUSH_TO_ZERO, options(nomem, nostack));
        }
    }
}
