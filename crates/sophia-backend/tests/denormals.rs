//! `flush_denormals` sets flush-to-zero on the calling thread and on rayon's pool threads.
//! (Each test runs in its own process under nextest, so the global pool is this test's own.)

use std::hint::black_box;

/// A product whose exact value (1e-40) is subnormal in f32.
fn subnormal_product() -> f32 {
    black_box(1e-20_f32) * black_box(1e-20_f32)
}

#[test]
fn flushes_subnormals_on_the_caller_and_the_pool_threads() {
    assert!(subnormal_product() > 0.0, "without the switch the product is subnormal, not zero");
    let before_pool: Vec<f32> = (0..4).map(|_| std::thread::spawn(subnormal_product).join().unwrap()).collect();
    assert!(before_pool.iter().all(|&x| x > 0.0));

    sophia_backend::flush_denormals().expect("the global pool is built here first");

    assert_eq!(subnormal_product(), 0.0, "the calling thread flushes");
    let on_pool: Vec<(usize, f32)> = rayon::broadcast(|ctx| (ctx.index(), subnormal_product()));
    assert_eq!(on_pool.len(), rayon::current_num_threads());
    assert!(on_pool.iter().all(|&(_, x)| x == 0.0), "every pool thread flushes: {on_pool:?}");
    // A subnormal input is read as zero (DAZ) where the architecture has the switch.
    #[cfg(target_arch = "x86_64")]
    assert_eq!(black_box(f32::from_bits(1)) * black_box(2.0_f32), 0.0);

    assert!(sophia_backend::flush_denormals().is_err(), "a second call reports that the pool exists");
}
