"""The PyTorch peer of `cargo xtask bench step`: optimizer steps on the same parameters.

Times one optimizer step on the parameters of a preset (`gpt2` by default: GPT-2 small's
124,439,808 with the head tied to the token embedding, as ours) with fixed random gradients, in
eager PyTorch on the machine's threads: `torch.optim.AdamW` with its default multi-tensor
(`foreach`) implementation and with `fused=True`, and the official SophiaG update (Liu et al.
2023, github.com/Liuhong99/Sophia: one loop over the parameters, as `nanogpt_char.py` has it).
Warm-up steps create the state; then the rounds are interleaved across the optimizers, as
`bench step` does, and the median of `--repetitions` is reported in ns per parameter.

Run it in the same window as `cargo xtask bench step`, nothing else on the CPU:

    python3 -m venv /tmp/torch && /tmp/torch/bin/pip install torch numpy
    cargo xtask bench step
    /tmp/torch/bin/python crates/sophia-bench/peers/step.py --json results/peer-pytorch-step.json
    cargo xtask bench report              # states ours against PyTorch's
"""

import argparse
import os
import statistics

import torch

from nanogpt_char import GPT, SophiaG
from throughput import PRESETS, timed, write_record

# GPT-2's checkpoints on top of the CPU presets: (layers, heads, width, vocabulary).
SHAPES = {**PRESETS, "gpt2": (12, 12, 768, 50257)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gpt2", choices=sorted(SHAPES))
    ap.add_argument("--block-size", type=int, default=1024, help="position embeddings (GPT-2: 1024)")
    ap.add_argument("--repetitions", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", help="write the figures and the machine to this JSON file")
    args = ap.parse_args()
    if min(args.block_size, args.repetitions) < 1:
        ap.error("--block-size and --repetitions must be at least 1")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n_layer, n_head, n_embd, vocab = SHAPES[args.preset]
    model = GPT(vocab, args.block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    count = sum(p.numel() for p in params)
    optimizers = {
        "adamw (foreach)": torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, foreach=True),
        "adamw (fused)": torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True),
        "sophiag (official)": SophiaG(params, lr=1e-4, betas=(0.965, 0.99), rho=0.05, weight_decay=0.1),
    }
    sophia = optimizers["sophiag (official)"]
    sophia.update_hessian()

    def step(name):
        opt = optimizers[name]
        # SophiaG's `bs` (the tokens of a step) is a factor in its update, not in its time.
        return timed(lambda: opt.step(bs=512) if opt is sophia else opt.step())

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.preset}: {count} parameters", flush=True)
    for name in optimizers:  # warm-up: the state is created on the first step
        step(name)
    times = {name: [] for name in optimizers}
    for _ in range(args.repetitions):
        for name in optimizers:
            times[name].append(step(name))
    timings = []
    for name, series in times.items():
        median = statistics.median(series)
        timings.append({"optimizer": name, "median_secs": median, "min_secs": min(series), "max_secs": max(series), "ns_per_param": median * 1e9 / count})
        print(f"{name}: {median * 1e3:.1f} ms, {median * 1e9 / count:.2f} ns/param", flush=True)
    if args.json:
        write_record(args.json, args.repetitions, preset=args.preset, parameters=count, timings=timings)


if __name__ == "__main__":
    main()
