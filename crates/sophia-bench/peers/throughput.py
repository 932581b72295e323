"""The PyTorch peer of `cargo xtask bench throughput`: the same presets, batch and timings.

For each preset (`char`, `cpu-1m`, `cpu-3m`, `cpu-10m` by default, the same shapes as ours:
GPT-2 blocks with biases, the head tied to the token embedding, context 64, 8 sequences per
step, the GPT-2 vocabulary or the `char` preset's 96 characters), on random tokens, it times in
eager PyTorch on the machine's threads:

- a training step with AdamW (`torch.optim.AdamW`, its default multi-tensor implementation):
  forward, cross-entropy, backward, clipping at 1, the update, as `bench throughput` times ours;
- the official SophiaG refresh (Liu et al. 2023, github.com/Liuhong99/Sophia: a forward pass on
  the step's batch, labels sampled from the model's softmax, the loss on them backward and
  `h ← β₂·h + (1 − β₂)·ĝ⊙ĝ`), and the same refresh on a quarter of the batch, which is what our
  default refresh runs on (`hessian_batch_fraction = 0.25`);
- the peak f32 matmul at 1024³ (`torch.mm`, the best of 20 products).

One warm-up round, then the median of `--repetitions` rounds, as `bench throughput` does.
Run it in the same window as `cargo xtask bench throughput`, nothing else on the CPU (PyTorch's
threads spin while they wait, so a busy machine slows it far more than it slows us):

    python3 -m venv /tmp/torch && /tmp/torch/bin/pip install torch numpy
    cargo xtask bench throughput --kernels fused
    /tmp/torch/bin/python crates/sophia-bench/peers/throughput.py --json results/peer-pytorch-throughput.json
    cargo xtask bench report              # states ours against PyTorch's per preset
"""

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from nanogpt_char import GPT, SophiaG, machine, write_json

# (layers, heads, width, vocabulary) of our presets (sophia_gpt2::Gpt2Config::preset); the
# `char` preset's vocabulary is the 96 characters that stand in before a corpus sets it.
PRESETS = {
    "char": (4, 4, 128, 96),
    "cpu-1m": (2, 2, 16, 50257),
    "cpu-3m": (4, 4, 64, 50257),
    "cpu-10m": (4, 4, 160, 50257),
    "cpu-30m": (6, 8, 384, 50257),
}


def peak_matmul_gflops(n, rounds):
    """The best rate of `rounds` products of two `n × n` f32 matrices after one warm-up, GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b)) for _ in range(rounds))
    return 2 * n**3 / best / 1e9


def timed(f):
    """Seconds `f()` takes."""
    started = time.perf_counter()
    f()
    return time.perf_counter() - started


def measure(preset, batch, block, repetitions):
    n_layer, n_head, n_embd, vocab = PRESETS[preset]
    torch.manual_seed(0)
    model = GPT(vocab, block, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    params = [p for p in model.parameters() if p.requires_grad]
    adamw = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    sophia = SophiaG(params, lr=1e-4, betas=(0.965, 0.99), rho=0.05, weight_decay=0.1)
    tokens = torch.randint(vocab, (batch, block + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]
    quarter = max(1, batch // 4)

    def step():
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        adamw.step()
        adamw.zero_grad(set_to_none=True)

    def refresh(rows):
        logits = model(x[:rows])
        sampled = torch.distributions.Categorical(logits=logits).sample()
        F.cross_entropy(logits.flatten(0, 1), sampled.flatten()).backward()
        sophia.update_hessian()
        sophia.zero_grad(set_to_none=True)

    steps, refreshes, quarters = [], [], []
    for round in range(repetitions + 1):
        times = timed(step), timed(lambda: refresh(batch)), timed(lambda: refresh(quarter))
        if round > 0:
            for series, t in zip((steps, refreshes, quarters), times):
                series.append(t)
    step_secs, refresh_secs, quarter_secs = (statistics.median(s) for s in (steps, refreshes, quarters))
    return {
        "preset": preset,
        "parameters": sum(p.numel() for p in params),
        "batch_tokens": batch * block,
        "step_secs": step_secs,
        "tokens_per_sec": batch * block / step_secs,
        "refresh_secs": refresh_secs,
        "refresh_to_step": refresh_secs / step_secs,
        "quarter_refresh_secs": quarter_secs,
        "quarter_refresh_to_step": quarter_secs / step_secs,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="char,cpu-1m,cpu-3m,cpu-10m", help=f"comma-separated, of {', '.join(PRESETS)}")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--repetitions", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", help="write the figures and the machine to this JSON file")
    args = ap.parse_args()
    presets = args.presets.split(",")
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        ap.error(f"unknown preset(s) {', '.join(unknown)}; known: {', '.join(PRESETS)}")
    if min(args.batch_size, args.block_size, args.repetitions) < 1:
        ap.error("--batch-size, --block-size and --repetitions must be at least 1")

    torch.set_num_threads(args.threads)
    peak = peak_matmul_gflops(1024, 20)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; peak matmul (1024³, f32): {peak:.1f} GFLOP/s", flush=True)
    entries = []
    for preset in presets:
        e = measure(preset, args.batch_size, args.block_size, args.repetitions)
        print(
            f"{preset}: {e['parameters']} parameters, {e['tokens_per_sec']:.0f} tokens/s, "
            f"refresh {e['refresh_to_step']:.2f} steps (a quarter of the batch: {e['quarter_refresh_to_step']:.2f})",
            flush=True,
        )
        entries.append(e)
    if args.json:
        write_record(args.json, args.repetitions, peak_matmul_gflops=peak, peak_matmul_size=1024, entries=entries)


def write_record(path, repetitions, **figures):
    """Write `figures` as JSON with the machine and the PyTorch that measured them."""
    write_json(path, {"machine": machine(), "torch": torch.__version__, "threads": torch.get_num_threads(), "repetitions": repetitions, **figures})


if __name__ == "__main__":
    main()
