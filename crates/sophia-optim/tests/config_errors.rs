//! Invalid configuration gives a typed error naming the field, its value and the allowed range.

use sophia_optim::{AdamWConfig, ConfigError, GlobalNormClip, Hutchinson, LionConfig, SophiaGConfig, SophiaHConfig, TigerConfig, WarmupCosineConfig};

fn assert_rejects(result: Result<(), ConfigError>, field: &str, value: &str) {
    let err = result.expect_err(&format!("`{field}` = {value} must be rejected"));
    assert_eq!(err.field, field);
    assert_eq!(err.value, value);
    let message = err.to_string();
    assert!(message.contains(field) && message.contains(value) && message.contains("expected"), "{message}");
}

#[test]
fn sophia_g_rejects_each_bad_field() {
    let ok = || SophiaGConfig::new(1024);
    assert!(ok().validate().is_ok());
    assert_rejects(SophiaGConfig::new(0).validate(), "batch_size", "0");
    assert_rejects(ok().with_beta_1(1.0).validate(), "beta_1", "1");
    assert_rejects(ok().with_beta_1(-0.1).validate(), "beta_1", "-0.1");
    assert_rejects(ok().with_beta_2(f64::NAN).validate(), "beta_2", "NaN");
    assert_rejects(ok().with_rho(0.0).validate(), "rho", "0");
    assert_rejects(ok().with_rho(f64::INFINITY).validate(), "rho", "inf");
    assert_rejects(ok().with_epsilon(-1e-15).validate(), "epsilon", "-0.000000000000001");
    assert_rejects(ok().with_weight_decay(-0.1).validate(), "weight_decay", "-0.1");
    assert_rejects(ok().with_hessian_interval(0).validate(), "hessian_interval", "0");
    assert_rejects(ok().with_refresh_grad_clip(Some(0.0)).validate(), "refresh_grad_clip", "0");
    assert_rejects(ok().with_refresh_grad_clip(Some(f64::NAN)).validate(), "refresh_grad_clip", "NaN");
    assert!(ok().with_refresh_grad_clip(None).validate().is_ok());
    assert!(ok().with_rho(-1.0).try_init().is_err());
}

#[test]
fn sophia_h_rejects_each_bad_field() {
    let ok = SophiaHConfig::new;
    assert!(ok().validate().is_ok());
    assert_rejects(ok().with_beta_1(1.5).validate(), "beta_1", "1.5");
    assert_rejects(ok().with_gamma(0.0).validate(), "gamma", "0");
    assert_rejects(ok().with_epsilon(0.0).validate(), "epsilon", "0");
    assert_rejects(ok().with_weight_decay(f64::NAN).validate(), "weight_decay", "NaN");
    assert_rejects(ok().with_hessian_interval(0).validate(), "hessian_interval", "0");
}

#[test]
fn adamw_and_lion_reject_each_bad_field() {
    assert!(AdamWConfig::new().validate().is_ok() && LionConfig::new().validate().is_ok());
    assert_rejects(AdamWConfig::new().with_beta_1(1.5).validate(), "beta_1", "1.5");
    assert_rejects(AdamWConfig::new().with_beta_2(-0.1).validate(), "beta_2", "-0.1");
    assert_rejects(AdamWConfig::new().with_epsilon(0.0).validate(), "epsilon", "0");
    assert_rejects(AdamWConfig::new().with_weight_decay(f64::INFINITY).validate(), "weight_decay", "inf");
    assert_rejects(LionConfig::new().with_beta_1(1.0).validate(), "beta_1", "1");
    assert_rejects(LionConfig::new().with_beta_2(f64::NAN).validate(), "beta_2", "NaN");
    assert_rejects(LionConfig::new().with_weight_decay(-1.0).validate(), "weight_decay", "-1");
    let message = AdamWConfig::new().with_beta_2(2.0).try_init().err().expect("beta_2 = 2 is rejected").to_string();
    assert!(message.contains("AdamW"), "{message}");
}

#[test]
fn tiger_schedule_clip_and_hutchinson_reject_bad_values() {
    assert_rejects(TigerConfig::new().with_beta(1.0).validate(), "beta", "1");
    assert_rejects(TigerConfig::new().with_weight_decay(-1.0).validate(), "weight_decay", "-1");
    let schedule = || WarmupCosineConfig::new(6e-4, 10, 100);
    assert!(schedule().validate().is_ok());
    assert_rejects(WarmupCosineConfig::new(-6e-4, 10, 100).validate(), "peak_lr", "-0.0006");
    assert_rejects(schedule().with_min_lr(1.0).validate(), "min_lr", "1");
    assert_rejects(WarmupCosineConfig::new(6e-4, 10, 10).validate(), "decay_iters", "10");
    assert_rejects(schedule().with_initial_lr(Some(f64::NAN)).validate(), "initial_lr", "NaN");
    assert_rejects(GlobalNormClip::new(0.0).map(|_| ()), "max_norm", "0");
    assert_rejects(Hutchinson::new(-1.0, 0).map(|_| ()), "epsilon", "-1");
}

#[test]
fn warmup_with_an_explicit_initial_lr_is_linear() {
    let schedule = WarmupCosineConfig::new(1.0, 4, 8).with_initial_lr(Some(0.2)).try_init().unwrap();
    let lrs: Vec<f64> = (0..5).map(|it| schedule.lr_at(it)).collect();
    let expected = [0.2, 0.4, 0.6, 0.8, 1.0];
    for (got, want) in lrs.iter().zip(expected) {
        assert!((got - want).abs() < 1e-12, "{lrs:?}");
    }
    assert_eq!(schedule.lr_at(9), 0.0);
}
