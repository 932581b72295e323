//! GPT-2 against the independent JAX reference in `gpt2_tiny/` (directory from
//! `$SOPHIA_GOLDEN_DIR` or `../shared/golden`): logits, loss, every gradient, the sampled-label
//! gradient and the SophiaG `h` after one refresh. The weights go through the same safetensors
//! loader users use.

use std::collections::BTreeMap;

use burn::module::ParamId;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::Deserialize;
use sophia_golden::{GoldenTensor, RecordedState, Tolerance, golden_dir, load};
use sophia_gpt2::{Gpt2, Gpt2Config, Kernels, SampledLabelHessian};
use sophia_optim::{EstimateFn, SophiaGConfig};

#[derive(Deserialize)]
struct Expected {
    batch: usize,
    seq_len: usize,
    param_order: Vec<String>,
    input_ids: GoldenTensor<i64>,
    targets: GoldenTensor<i64>,
    logits: GoldenTensor,
    loss: f64,
    grads: BTreeMap<String, GoldenTensor>,
    sampled: Sampled,
}

#[derive(Deserialize)]
struct Sampled {
    labels: GoldenTensor<i64>,
    loss: f64,
    grads: BTreeMap<String, GoldenTensor>,
    beta2: f64,
    hessian_after_refresh: BTreeMap<String, GoldenTensor>,
}

const LOGITS: Tolerance = Tolerance::new(0.0, 1e-4);
const LOSS: Tolerance = Tolerance::new(1e-5, 1e-5);
const GRADS: Tolerance = Tolerance::new(1e-3, 1e-5);
const HESSIAN: Tolerance = Tolerance::new(2e-3, 1e-8);

fn ids(t: &GoldenTensor<i64>, device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), device)
}

fn model(device: &Device) -> Gpt2 {
    let dir = golden_dir().join("gpt2_tiny");
    let config = Gpt2Config::from_hf_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    Gpt2::new(&config, device, 0).unwrap().load_safetensors(dir.join("model.safetensors")).unwrap()
}

fn grad_values(grads: &GradientsParams, id: ParamId, rank: usize) -> Vec<f32> {
    let data = match rank {
        1 => grads.get::<1>(id).map(|g| g.into_data()),
        2 => grads.get::<2>(id).map(|g| g.into_data()),
        _ => panic!("GPT-2 parameters have rank 1 or 2"),
    };
    data.expect("every parameter has a gradient").try_to_vec::<f32>().unwrap()
}

fn check_grads(what: &str, model: &Gpt2, grads: &GradientsParams, want: &BTreeMap<String, GoldenTensor>, order: &[String]) {
    let params = model.named_params();
    assert_eq!(params.len(), order.len(), "{what}: the model has {} parameters, the reference {}", params.len(), order.len());
    for name in order {
        let (_, id, shape) = params.iter().find(|(n, _, _)| n == name).unwrap_or_else(|| panic!("no parameter `{name}`"));
        let want = &want[name];
        assert_eq!(shape, &want.shape, "{what}: shape of {name}");
        GRADS.assert_close(&format!("{what}: grad of {name}"), &grad_values(grads, *id, shape.len()), &want.data);
    }
}

/// Both implementations of the loss (the fused kernels where the test device has them, and
/// Burn's composed operations) must match the reference.
const KERNELS: [Kernels; 2] = [Kernels::Fused, Kernels::Composed];

#[test]
fn golden_gpt2_logits_loss_and_gradients() {
    for kernels in KERNELS {
        logits_loss_and_gradients(kernels);
    }
}

fn logits_loss_and_gradients(kernels: Kernels) {
    let device = sophia_golden::test_device().autodiff();
    let model = model(&device).with_kernels(kernels);
    let expected: Expected = load("gpt2_tiny/expected.json");
    assert_eq!(expected.input_ids.shape, vec![expected.batch, expected.seq_len]);

    let logits = model.forward(ids(&expected.input_ids, &device)).unwrap();
    assert_eq!(logits.dims().to_vec(), expected.logits.shape);
    LOGITS.assert_close("logits", &logits.clone().into_data().try_to_vec::<f32>().unwrap(), &expected.logits.data);

    // The loss of the materialised logits (the refresh's path) and the model's own loss, whose
    // LM head and cross-entropy are one operation (the training step's path).
    let targets = ids(&expected.targets, &device);
    let losses = [
        ("cross_entropy_with", sophia_gpt2::loss::cross_entropy_with(kernels, logits, targets.clone())),
        ("Gpt2::loss", model.loss(ids(&expected.input_ids, &device), targets).unwrap()),
    ];
    for (path, loss) in losses {
        let what = format!("loss ({kernels:?}, {path})");
        LOSS.assert_scalar(&what, loss.clone().into_scalar::<f64>(), expected.loss);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        check_grads(&what, &model, &grads, &expected.grads, &expected.param_order);
    }
}

#[test]
fn golden_gpt2_sampled_label_gradient_and_sophia_refresh() {
    for kernels in KERNELS {
        sampled_label_gradient_and_sophia_refresh(kernels);
    }
}

fn sampled_label_gradient_and_sophia_refresh(kernels: Kernels) {
    let device = sophia_golden::test_device().autodiff();
    let model = model(&device).with_kernels(kernels);
    let expected: Expected = load("gpt2_tiny/expected.json");
    let sampled = &expected.sampled;

    let inputs = ids(&expected.input_ids, &device);
    let labels = ids(&sampled.labels, &device);
    let logits = model.forward(inputs.clone()).unwrap();
    LOSS.assert_scalar("sampled loss", sophia_gpt2::loss::cross_entropy_with(kernels, logits, labels.clone()).into_scalar::<f64>(), sampled.loss);
    let ghat = SampledLabelHessian::gradients_for_labels(&model, inputs.clone(), labels.clone()).unwrap();
    check_grads("sampled", &model, &ghat, &sampled.grads, &expected.param_order);

    // One SophiaG refresh from zero through the optimizer's own refresh, with the reference's
    // labels as the estimate: h = (1 − β₂)·ĝ² (the reference does not clip ĝ), weights untouched.
    let mut optim = SophiaGConfig::new(expected.batch * expected.seq_len).with_beta_2(sampled.beta2).with_refresh_grad_clip(None).try_init().unwrap();
    let before = model.named_tensors();
    let mut estimator = EstimateFn(|m: &Gpt2, _| SampledLabelHessian::gradients_for_labels(m, inputs.clone(), labels.clone()));
    let model = optim.refresh_with(model, &mut estimator).unwrap();
    assert_eq!(model.named_tensors(), before, "a refresh changed weights");
    let state = RecordedState::read(optim.to_record());
    for (name, id, shape) in model.named_params() {
        let want = &sampled.hessian_after_refresh[&name];
        let len = shape.iter().product();
        HESSIAN.assert_close(&format!("h of {name}"), &state.tensor(id, "hessian", len), &want.data);
    }
}
