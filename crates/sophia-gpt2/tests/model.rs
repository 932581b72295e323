//! GPT-2 model behaviour: causality and gradients of every modern option, the label sampler's
//! distribution, weight round trips, parameter counts and the errors users can hit.

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use sophia_gpt2::{Activation, Gpt2, Gpt2Config, ModelError, Precision, SampledLabelHessian};
use sophia_optim::hutchinson::rademacher;

fn tiny() -> Gpt2Config {
    Gpt2Config::new(2, 4, 16, 12, 23)
}

/// Every modern option alone, and all of them together.
fn variants() -> Vec<(&'static str, Gpt2Config)> {
    let base = tiny;
    vec![
        ("plain", base()),
        ("rope", Gpt2Config { rope: true, ..base() }),
        ("qk_norm", Gpt2Config { qk_norm: true, ..base() }),
        ("relu_squared", Gpt2Config { activation: Activation::ReluSquared, ..base() }),
        ("untied_head", Gpt2Config { untied_head: true, ..base() }),
        ("zero_init_projections", Gpt2Config { zero_init_projections: true, ..base() }),
        ("logit_softcap", Gpt2Config { logit_softcap: Some(2.0), ..base() }),
        ("gqa", Gpt2Config { n_kv_head: Some(2), ..base() }),
        ("mqa", Gpt2Config { n_kv_head: Some(1), ..base() }),
        ("no_bias", Gpt2Config { bias: false, ..base() }),
        (
            "all",
            Gpt2Config {
                rope: true,
                qk_norm: true,
                activation: Activation::ReluSquared,
                untied_head: true,
                logit_softcap: Some(3.0),
                n_kv_head: Some(2),
                bias: false,
                ..base()
            },
        ),
    ]
}

/// [`variants`] with non-zero projections, so every parameter receives a gradient.
fn variants_with_all_gradients() -> Vec<(&'static str, Gpt2Config)> {
    variants().into_iter().map(|(name, config)| (name, Gpt2Config { zero_init_projections: false, ..config })).collect()
}

/// A fixed 10-token input of the tiny vocabulary, and fixed targets for it.
fn sequence() -> Vec<i64> {
    (0..10).map(|i| (i * 5 + 1) % 23).collect()
}

fn next_tokens() -> Vec<i64> {
    (0..10).map(|i| (i * 3 + 2) % 23).collect()
}

fn tokens(values: &[i64], device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(values.to_vec(), [1, values.len()]), device)
}

fn floats(t: Tensor<3>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn changing_a_future_token_never_changes_earlier_logits() {
    let device = Device::flex();
    for (name, config) in variants() {
        let model = Gpt2::new(&config, &device, 1).unwrap();
        let seq: Vec<i64> = (0..12).map(|i| (i * 7 + 3) % 23).collect();
        let vocab = config.vocab_size;
        let base = floats(model.forward(tokens(&seq, &device)).unwrap());
        for position in [3usize, 8, 11] {
            let mut changed = seq.clone();
            changed[position] = (changed[position] + 5) % 23;
            let after = floats(model.forward(tokens(&changed, &device)).unwrap());
            let earlier = position * vocab;
            for i in 0..earlier {
                assert!((base[i] - after[i]).abs() <= 1e-6, "{name}: logit {i} changed when token {position} changed");
            }
            assert!(
                base[earlier..].iter().zip(&after[earlier..]).any(|(a, b)| a != b),
                "{name}: changing token {position} changed nothing (the test would prove nothing)"
            );
        }
    }
}

/// Moves every parameter by `step · u` (u from a Rademacher draw).
struct Shift<'a> {
    direction: &'a GradientsParams,
    step: f64,
}

impl ModuleMapper for Shift<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let u = self.direction.get::<D>(param.id).unwrap();
        let step = self.step;
        param.map(|value| Tensor::from_inner(value.inner().add(u.mul_scalar(step))).require_grad())
    }
}

/// The autodiff gradient agrees with a central difference of the loss along a random
/// direction: ⟨∇L, u⟩ ≈ (L(θ + εu) − L(θ − εu)) / 2ε, extrapolated to ε → 0.
#[test]
fn gradients_match_finite_differences_for_every_option() {
    let (device, seq, targets) = (Device::flex().autodiff(), sequence(), next_tokens());
    for (name, config) in variants_with_all_gradients() {
        let model = Gpt2::new(&config, &device, 2).unwrap();
        let loss = |m: &Gpt2| m.loss(tokens(&seq, &device), tokens(&targets, &device)).unwrap();
        let grads = GradientsParams::from_grads(loss(&model).backward(), &model);
        let u = rademacher(&model, 11);
        let mut directional = 0.0f64;
        for (_, id, shape) in model.named_params() {
            let dot = match shape.len() {
                1 => grads.get::<1>(id).unwrap().mul(u.get::<1>(id).unwrap()).sum(),
                _ => grads.get::<2>(id).unwrap().mul(u.get::<2>(id).unwrap()).sum(),
            };
            directional += dot.into_scalar::<f64>();
        }
        let central = |eps: f64| {
            let plus = loss(&model.clone().map(&mut Shift { direction: &u, step: eps })).into_scalar::<f64>();
            let minus = loss(&model.clone().map(&mut Shift { direction: &u, step: -eps })).into_scalar::<f64>();
            (plus - minus) / (2.0 * eps)
        };
        // Richardson extrapolation cancels the O(ε²) error of the central difference, which is
        // large here because every parameter moves at once.
        let numeric = (4.0 * central(5e-4) - central(1e-3)) / 3.0;
        assert!((numeric - directional).abs() <= 0.01 * directional.abs() + 2e-3, "{name}: directional derivative {directional} but finite difference {numeric}");
    }
}

/// bf16 mixed precision: logits, weights and gradients stay f32 and close to the f32 model's,
/// and differ from them (the products really run in bfloat16).
#[test]
fn bf16_products_keep_f32_weights_and_gradients_close_to_f32() {
    let (device, seq, targets) = (Device::flex().autodiff(), sequence(), next_tokens());
    for (name, config) in variants_with_all_gradients() {
        let full = Gpt2::new(&config, &device, 2).unwrap();
        let mixed = full.clone().with_precision(Precision::Bf16);
        assert_eq!(mixed.precision(), Precision::Bf16);
        let (a, b) = (full.forward(tokens(&seq, &device)).unwrap(), mixed.forward(tokens(&seq, &device)).unwrap());
        assert_eq!(b.dtype(), DType::F32, "{name}: logits");
        let scale = a.clone().abs().max().into_scalar::<f64>().max(1.0);
        let diff = a.sub(b).abs().max().into_scalar::<f64>();
        assert!(diff > 0.0 && diff < 3e-2 * scale, "{name}: bf16 logits differ by {diff} (scale {scale})");

        let grads = |m: &Gpt2| GradientsParams::from_grads(m.loss(tokens(&seq, &device), tokens(&targets, &device)).unwrap().backward(), m);
        let (ga, gb) = (grads(&full), grads(&mixed));
        let (mut diff, mut norm) = (0.0f64, 0.0f64);
        for (param, id, shape) in full.named_params() {
            let (x, y) = match shape.len() {
                1 => (ga.get::<1>(id).unwrap().flatten::<1>(0, 0), gb.get::<1>(id).unwrap().flatten::<1>(0, 0)),
                _ => (ga.get::<2>(id).unwrap().flatten::<1>(0, 1), gb.get::<2>(id).unwrap().flatten::<1>(0, 1)),
            };
            assert_eq!(y.dtype(), DType::F32, "{name}: gradient of {param}");
            diff += x.clone().sub(y).square().sum().into_scalar::<f64>();
            norm += x.square().sum().into_scalar::<f64>();
        }
        let relative = (diff / norm).sqrt();
        assert!(relative > 0.0 && relative < 5e-2, "{name}: bf16 gradients differ by {relative} (relative L2)");
    }
}

/// The refresh's loss on labels drawn from the model's own logits is the model's loss on those
/// labels, value and gradients, whichever kernels compute it, and the labels are those drawn from
/// the logits `forward` gives with the same uniforms (the fused kernel draws them inside the LM
/// head's loss).
#[test]
fn the_loss_on_sampled_labels_is_the_loss_on_those_labels() {
    let device = Device::flex().autodiff();
    for kernels in [sophia_gpt2::Kernels::Fused, sophia_gpt2::Kernels::Composed] {
        let model = Gpt2::new(&tiny(), &device, 3).unwrap().with_kernels(kernels);
        let ids = tokens(&sequence(), &device);
        let sampler = SampledLabelHessian::new(9);
        let uniforms = sampler.uniforms(ids.dims(), 1, &device);
        let (loss, labels) = model.loss_on_sampled_labels(ids.clone(), uniforms).unwrap();
        let from_forward = sampler.sample_labels_with(kernels, model.forward(ids.clone()).unwrap(), 1);
        assert_eq!(labels.clone().into_data(), from_forward.into_data(), "{kernels:?}: labels");
        let direct = model.loss(ids, labels).unwrap();
        let value = |l: &Tensor<1>| l.clone().into_scalar::<f64>();
        assert!((value(&loss) - value(&direct)).abs() < 1e-6, "{kernels:?}: {} vs {}", value(&loss), value(&direct));
        let (a, b) = (GradientsParams::from_grads(loss.backward(), &model), GradientsParams::from_grads(direct.backward(), &model));
        for (name, id, shape) in model.named_params() {
            let get = |g: &GradientsParams| match shape.len() {
                1 => g.get::<1>(id).unwrap().into_data(),
                _ => g.get::<2>(id).unwrap().into_data(),
            };
            assert_eq!(get(&a), get(&b), "{kernels:?}: gradient of {name}");
        }
    }
}

#[test]
fn sampled_labels_follow_the_softmax() {
    // Chi-square goodness of fit on a 5-token vocabulary, 20,000 draws, fixed seed.
    let device = Device::flex();
    let logits_row = [1.0f32, 0.0, -1.0, 2.0, 0.5];
    let positions = 20_000;
    let logits: Vec<f32> = logits_row.iter().copied().cycle().take(5 * positions).collect();
    let logits = Tensor::<3>::from_data(TensorData::new(logits, [1, positions, 5]), &device);
    let labels = SampledLabelHessian::new(42).sample_labels(logits, 0);
    let labels = labels.into_data().convert::<i64>().try_to_vec::<i64>().unwrap();
    let mut counts = [0usize; 5];
    for label in labels {
        counts[label as usize] += 1;
    }
    let z: f64 = logits_row.iter().map(|&l| (l as f64).exp()).sum();
    let chi2: f64 = logits_row
        .iter()
        .zip(counts)
        .map(|(&l, c)| {
            let expected = positions as f64 * (l as f64).exp() / z;
            (c as f64 - expected).powi(2) / expected
        })
        .sum();
    // 4 degrees of freedom: P(χ² > 18.47) = 0.001.
    assert!(chi2 < 18.47, "counts {counts:?} give chi-square {chi2}");
    // And the sampler is seeded: the same draw gives the same labels.
    let a = SampledLabelHessian::new(5).sample_labels(Tensor::zeros([2, 7, 5], &device), 3).into_data();
    let b = SampledLabelHessian::new(5).sample_labels(Tensor::zeros([2, 7, 5], &device), 3).into_data();
    assert_eq!(a, b);
}

#[test]
fn sampled_label_step_leaves_weights_unchanged() {
    let device = Device::flex().autodiff();
    let model = Gpt2::new(&tiny(), &device, 3).unwrap();
    let before = model.named_tensors();
    let step = SampledLabelHessian::new(1).gradients(&model, tokens(&[1, 2, 3, 4], &device), 0).unwrap();
    assert_eq!(model.named_tensors(), before);
    assert_eq!(step.grads.len(), model.named_params().len());
    assert!(step.loss.into_scalar::<f64>().is_finite());
}

#[test]
fn safetensors_round_trip_is_identical() {
    let device = Device::flex();
    let dir = std::env::temp_dir().join(format!("sophia-gpt2-roundtrip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, config) in [("plain", tiny()), ("untied_rope", Gpt2Config { untied_head: true, rope: true, ..tiny() })] {
        let path = dir.join(format!("{name}.safetensors"));
        let model = Gpt2::new(&config, &device, 4).unwrap();
        model.save_safetensors(&path).unwrap();
        let loaded = Gpt2::new(&config, &device, 5).unwrap().load_safetensors(&path).unwrap();
        assert_eq!(loaded.named_tensors(), model.named_tensors(), "{name}");
        let path2 = dir.join(format!("{name}-2.safetensors"));
        loaded.save_safetensors(&path2).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&path2).unwrap(), "{name}: export is stable");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hf_names_follow_the_gpt2_layout() {
    let model = Gpt2::new(&tiny(), &Device::flex(), 0).unwrap();
    let names: Vec<String> = model.named_params().into_iter().map(|(n, _, _)| n).collect();
    for expected in ["wte.weight", "wpe.weight", "h.0.ln_1.weight", "h.0.ln_1.bias", "h.1.attn.c_attn.weight", "h.1.mlp.c_proj.bias", "ln_f.weight"] {
        assert!(names.contains(&expected.to_string()), "{expected} missing from {names:?}");
    }
}

#[test]
fn parameter_counts() {
    // Hugging Face reports 124,439,808 parameters for GPT-2 small.
    assert_eq!(Gpt2Config::preset("gpt2").unwrap().num_params(), 124_439_808);
    assert_eq!(Gpt2Config::preset("gpt2-medium").unwrap().num_params(), 354_823_168);
    for (_, config) in variants() {
        let model = Gpt2::new(&config, &Device::flex(), 0).unwrap();
        assert_eq!(model.num_params(), config.num_params());
    }
    let millions = |name: &str| Gpt2Config::preset(name).unwrap().num_params() as f64 / 1e6;
    assert!((0.7..1.5).contains(&millions("cpu-1m")), "{}", millions("cpu-1m"));
    assert!((7.0..13.0).contains(&millions("cpu-10m")), "{}", millions("cpu-10m"));
    assert!((25.0..35.0).contains(&millions("cpu-30m")), "{}", millions("cpu-30m"));
}

#[test]
fn bad_configs_inputs_and_weights_are_errors() {
    let device = Device::flex();
    let err = |r: Result<Gpt2, ModelError>| match r {
        Ok(_) => panic!("must fail"),
        Err(error) => error.to_string(),
    };
    assert!(err(Gpt2::new(&Gpt2Config::new(1, 3, 16, 8, 10), &device, 0)).contains("divisible by n_head"));
    let message = err(Gpt2::new(&Gpt2Config { n_kv_head: Some(3), ..tiny() }, &device, 0));
    assert!(message.contains("n_kv_head") && message.contains("must divide n_head"), "{message}");
    assert!(Gpt2Config::preset("gpt5").unwrap_err().to_string().contains("cpu-10m"));

    let model = Gpt2::new(&tiny(), &device, 0).unwrap();
    let long: Vec<i64> = vec![1; 13];
    assert!(matches!(model.forward(tokens(&long, &device)), Err(ModelError::SequenceTooLong { len: 13, block_size: 12 })));

    // A file of another shape, and a file missing tensors.
    let dir = std::env::temp_dir().join(format!("sophia-gpt2-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wider = dir.join("wider.safetensors");
    Gpt2::new(&Gpt2Config::new(2, 4, 32, 12, 23), &device, 0).unwrap().save_safetensors(&wider).unwrap();
    let message = Gpt2::new(&tiny(), &device, 0).unwrap().load_safetensors(&wider).unwrap_err().to_string();
    assert!(message.contains("wte.weight") && message.contains("[23, 32]") && message.contains("[23, 16]"), "{message}");
    let shallow = dir.join("shallow.safetensors");
    Gpt2::new(&Gpt2Config::new(1, 4, 16, 12, 23), &device, 0).unwrap().save_safetensors(&shallow).unwrap();
    let message = Gpt2::new(&tiny(), &device, 0).unwrap().load_safetensors(&shallow).unwrap_err().to_string();
    assert!(message.contains("h.1.ln_1.weight") && message.contains("missing"), "{message}");
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"not a safetensors file").unwrap();
    let message = Gpt2::new(&tiny(), &device, 0).unwrap().load_safetensors(&garbage).unwrap_err().to_string();
    assert!(message.contains("garbage.safetensors"), "{message}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn generation_slides_over_the_context_and_respects_top_k_and_seed() {
    let device = Device::flex();
    let model = Gpt2::new(&tiny(), &device, 6).unwrap();
    let options = sophia_gpt2::GenerateOptions { max_new_tokens: 30, top_k: Some(1), seed: 1, ..Default::default() };
    let out = model.generate(&[1, 2, 3], &options).unwrap();
    assert_eq!(out.len(), 30, "generates past block_size (12) on the last 12 tokens");
    // Past the context, the next token depends on the last block_size tokens only: greedy
    // decoding of the window ending at token 20 gives token 21.
    let all: Vec<u32> = [1, 2, 3].into_iter().chain(out.iter().copied()).collect();
    let window: Vec<i64> = all[21 - 12..21].iter().map(|&t| t as i64).collect();
    let logits = model.forward(Tensor::<2, Int>::from_data(TensorData::new(window, [1, 12]), &device)).unwrap();
    let next = logits.narrow(1, 11, 1).argmax(2).into_data().convert::<i64>().try_to_vec::<i64>().unwrap()[0];
    assert_eq!(all[21] as i64, next, "the window slides");
    // top-k = 1 is greedy: each token is the argmax of the logits.
    let logits = model.forward(tokens(&[1, 2, 3], &device)).unwrap();
    let greedy = logits.narrow(1, 2, 1).argmax(2).into_data().convert::<i64>().try_to_vec::<i64>().unwrap()[0];
    assert_eq!(out[0] as i64, greedy);
    let sampled = sophia_gpt2::GenerateOptions { max_new_tokens: 5, top_k: None, temperature: 1.0, seed: 9, stop_token: None };
    assert_eq!(model.generate(&[4], &sampled).unwrap(), model.generate(&[4], &sampled).unwrap());
    assert!(model.generate(&[99], &sampled).is_err());
}

#[test]
fn loads_gpt2_lm_head_model_files_with_the_transformer_prefix() {
    // GPT2LMHeadModel checkpoints prefix every name with `transformer.` and may carry the tied
    // `lm_head.weight`; both load into the same tensors.
    let device = Device::flex();
    let model = Gpt2::new(&tiny(), &device, 8).unwrap();
    let mut tensors = model.named_tensors();
    let wte = tensors.iter().find(|(n, _)| n == "wte.weight").unwrap().1.clone();
    tensors.iter_mut().for_each(|(name, _)| *name = format!("transformer.{name}"));
    tensors.push(("lm_head.weight".into(), wte));
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, data)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, data.shape().to_vec(), data.as_bytes()).unwrap();
            (name.clone(), view)
        })
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    let loaded = Gpt2::new(&tiny(), &device, 9).unwrap().load_safetensors_bytes(&bytes).unwrap();
    assert_eq!(loaded.named_tensors(), model.named_tensors());
}
