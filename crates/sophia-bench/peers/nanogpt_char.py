"""The PyTorch peer of the default run: nanoGPT's CPU quick start on our prepared char data.

Trains nanoGPT's character-level GPT (4 layers, 4 heads, 128 wide, context 64, batch 12,
2000 steps, warmup 100, cosine decay to a tenth, gradient clipping at 1, no dropout) with
PyTorch's AdamW (nanoGPT's quick-start settings) or the official SophiaG update and training
loop (Liu et al. 2023, github.com/Liuhong99/Sophia: a refresh every 10 steps on the step's
batch with labels sampled from the model), on the very `train.bin` / `val.bin` that
`cargo xtask train` prepared, and prints the final validation loss and the wall time of the
loop, split as our run's summary splits it.

Use it to measure the default run against PyTorch on the same CPU in one window:

    python3 -m venv /tmp/torch && /tmp/torch/bin/pip install torch numpy
    cargo xtask train                     # prepares data/shakespeare-char, then trains
    peer=crates/sophia-bench/peers/nanogpt_char.py
    /tmp/torch/bin/python $peer --optimizer adamw --json results/peer-pytorch.json
    /tmp/torch/bin/python $peer --optimizer sophiag --json results/peer-pytorch.json \
        --ours runs/shakespeare-char/summary.json

`--json` collects the runs of one window in one file with the machine, and `--ours` records
our run's summary beside them. Nothing else may run on the CPU meanwhile: PyTorch's threads
spin while they wait, so a busy machine slows it far more than it slows us.

The model keeps the biases (nanoGPT's `bias=True`), as our `char` preset does, so both have
812,288 parameters. Batches are drawn as nanoGPT draws them (uniform random offsets), not with
our sampler, so the losses agree in distribution, not bit for bit.
"""

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(n_embd)
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.attn_proj = nn.Linear(n_embd, n_embd)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.mlp_proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(b, t, c))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)

    def forward(self, idx):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


class SophiaG(torch.optim.Optimizer):
    """The official SophiaG update: clip(m / max(ρ·bs·h, ε), 1) steps, h refreshed by the loop."""

    def __init__(self, params, lr, betas, rho, weight_decay):
        super().__init__(params, dict(lr=lr, betas=betas, rho=rho, weight_decay=weight_decay))

    @torch.no_grad()
    def update_hessian(self):
        for group in self.param_groups:
            beta2 = group["betas"][1]
            for p in group["params"]:
                if p.grad is not None:
                    self._state(p)["hessian"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)

    @torch.no_grad()
    def step(self, bs):
        for group in self.param_groups:
            beta1 = group["betas"][0]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                state["exp_avg"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
                ratio = (state["exp_avg"].abs() / (group["rho"] * bs * state["hessian"] + 1e-15)).clamp(None, 1)
                p.addcmul_(state["exp_avg"].sign(), ratio, value=-group["lr"])

    def _state(self, p):
        state = self.state[p]
        if not state:
            state["exp_avg"] = torch.zeros_like(p)
            state["hessian"] = torch.zeros_like(p)
        return state


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/shakespeare-char", help="prepared char data (train.bin, val.bin, meta.json)")
    ap.add_argument("--optimizer", choices=["adamw", "sophiag"], default="adamw")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--json", help="add this run's summary to this JSON file (one entry per optimizer, with the machine)")
    ap.add_argument("--ours", help="a summary.json of `cargo xtask train` from the same window, recorded beside the peer's runs")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    meta = json.load(open(os.path.join(args.data, "meta.json")))
    splits = {s: np.memmap(os.path.join(args.data, f"{s}.bin"), dtype=np.uint16, mode="r") for s in ("train", "val")}
    batch_size, block_size, warmup = 12, 64, 100
    if args.optimizer == "adamw":  # nanoGPT's quick start
        lr, wd, betas = 1e-3, 0.1, (0.9, 0.99)
    else:  # the official SophiaG settings for this model
        lr, wd, betas, rho, interval = 3e-4, 0.2, (0.965, 0.99), 0.05, 10
    min_lr = lr / 10

    def batch(split):
        data = splits[split]
        ix = torch.randint(len(data) - block_size, (batch_size,))
        x = torch.stack([torch.from_numpy(data[i : i + block_size].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + block_size].astype(np.int64)) for i in ix])
        return x, y

    def lr_at(step):
        if step < warmup:
            return lr * (step + 1) / (warmup + 1)
        ratio = min(1.0, (step - warmup) / (args.steps - warmup))
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)

    model = GPT(meta["vocab_size"], block_size, n_layer=4, n_head=4, n_embd=128)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": wd},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if args.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr, betas=betas)
    else:
        opt = SophiaG(groups, lr=lr, betas=betas, rho=rho, weight_decay=wd)

    @torch.no_grad()
    def evaluate():
        model.eval()
        out = {}
        for split in ("train", "val"):
            losses = [F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item() for x, y in (batch(split) for _ in range(20))]
            out[split] = sum(losses) / len(losses)
        model.train()
        return out

    print(f"{sum(p.numel() for p in params)} parameters, {args.optimizer}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    start, eval_seconds, refresh_seconds, losses = time.perf_counter(), 0.0, 0.0, {}
    for step in range(args.steps + 1):
        if step % 250 == 0 or step == args.steps:
            t = time.perf_counter()
            losses = evaluate()
            eval_seconds += time.perf_counter() - t
            print(f"step {step:5d}  eval: train {losses['train']:.4f}  val {losses['val']:.4f}  ({time.perf_counter() - start:.1f} s)", flush=True)
        if step == args.steps:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        x, y = batch("train")
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        if args.optimizer == "adamw":
            opt.step()
        else:
            opt.step(bs=batch_size * block_size)
        opt.zero_grad(set_to_none=True)
        if args.optimizer == "sophiag" and step % interval == interval - 1:
            t = time.perf_counter()
            logits = model(x)
            sampled = torch.distributions.Categorical(logits=logits).sample()
            F.cross_entropy(logits.flatten(0, 1), sampled.flatten()).backward()
            opt.update_hessian()
            opt.zero_grad(set_to_none=True)
            refresh_seconds += time.perf_counter() - t
    seconds = time.perf_counter() - start
    summary = {
        "optimizer": args.optimizer,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "final_val_loss": losses["val"],
        "seconds": seconds,
        "eval_seconds": eval_seconds,
        "refresh_seconds": refresh_seconds,
        "tokens_per_sec": args.steps * batch_size * block_size / (seconds - eval_seconds),
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        record = json.load(open(args.json)) if os.path.exists(args.json) else {}
        record["machine"] = machine()
        record.setdefault("pytorch", {})[args.optimizer] = summary
        if args.ours:
            record["sophia_burn"] = json.load(open(args.ours))
        write_json(args.json, record)


def write_json(path, record):
    """Write `record` to `path` through a temporary file, so an interrupted write loses nothing."""
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=1)
    os.replace(path + ".tmp", path)


def machine():
    """The CPU, as `bench` records it (sophia_bench::machine::Machine)."""
    cpuinfo = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    name = next((l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith("model name")), "unknown")
    flags = set(next((l.split(":", 1)[1].split() for l in cpuinfo.splitlines() if l.startswith("flags")), []))
    isa = "AVX-512F" if "avx512f" in flags else "AVX2+FMA" if {"avx2", "fma"} <= flags else "none"
    return {"cpu": name, "logical_cpus": os.cpu_count(), "vector_isa": isa, "torch_threads": torch.get_num_threads()}


if __name__ == "__main__":
    main()
