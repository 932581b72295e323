//! Running an application's work on rayon's global pool.
//!
//! Burn's flex backend runs each tensor operation on the calling thread and hands its parallel
//! loops (and gemm's) to rayon's global pool. Called from the main thread, that makes one more
//! busy thread than the pool has cores: while the main thread runs the many small serial
//! operations of a training step, idle pool threads spin looking for work on the same cores.
//! Measured on our 2-core machine with the char model (`bench throughput`, two pool threads):
//! 3893 training tokens/s from the main thread, 5269 with the work on a pool thread.

/// The stack of the pool's threads: the size of a main thread's on Linux, so that work moved
/// there from `main` has the stack it had.
pub(crate) const STACK_BYTES: usize = 8 << 20;

/// Run `op` on one of the threads of rayon's global pool and return its result; the calling
/// thread sleeps until then. Parallel loops inside `op` run on the pool as before, now with the
/// thread that runs `op` taking part in them.
pub fn on_pool<R: Send>(op: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| op())
}
