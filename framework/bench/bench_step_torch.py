"""PyTorch counterpart of thinklab-bench-step (bench_step.c): the same model and
training step, timed the same way.

Model: token embedding (V = 65) plus learned absolute positions (context 64),
4 GPT-2 style blocks (C = 128, H = 4, LayerNorm without bias, causal attention
written out with a mask, GELU tanh MLP of width 4C), final LayerNorm without
bias, head tied to the token embedding, cross-entropy; batch 12 x 64 random ids.
One step: zero gradients, forward, backward, clip the global norm to 1.0, AdamW
(betas 0.9, 0.95, eps 1e-8, weight decay 0.1 on matrices and embeddings only).

Usage: /usr/bin/python3 bench_step_torch.py [--threads N ...] [--steps 30] [--warmup 5]
Each --threads value (1 to 1024) is measured in turn; the best median is reported last.
--steps takes 1 to 1000000 and --warmup 0 to 1000000, the limits of thinklab-bench-step.
The model's weights and the batches come from torch's random generator, so the losses
are not those of thinklab-bench-step, which draws its own.
"""
import argparse
import ctypes
import math
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB, CONTEXT, WIDTH, HEADS, LAYERS, BATCH = 65, 64, 128, 4, 4, 12
# thinklab-bench-step's upper limits, so that run_bench.sh can give both programs the same.
MAX_STEPS, MAX_THREADS = 1000000, 1024


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        std_out = 0.02 / math.sqrt(2 * LAYERS)
        self.attn_norm = nn.Parameter(torch.ones(WIDTH))
        self.wq, self.wk, self.wv = (nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(3))
        self.wo = nn.Linear(WIDTH, WIDTH, bias=False)
        self.mlp_norm = nn.Parameter(torch.ones(WIDTH))
        self.w1 = nn.Linear(WIDTH, 4 * WIDTH, bias=False)
        self.w2 = nn.Linear(4 * WIDTH, WIDTH, bias=False)
        for lin in (self.wq, self.wk, self.wv, self.w1):
            nn.init.normal_(lin.weight, std=0.02)
        for lin in (self.wo, self.w2):
            nn.init.normal_(lin.weight, std=std_out)
        mask = torch.tril(torch.ones(CONTEXT, CONTEXT, dtype=torch.bool))
        self.register_buffer("mask", mask, persistent=False)

    def attention(self, x):
        b, t, c = x.shape
        d = c // HEADS

        def heads(y):
            return y.view(b, t, HEADS, d).transpose(1, 2)

        q, k, v = heads(self.wq(x)), heads(self.wk(x)), heads(self.wv(x))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        scores = scores.masked_fill(~self.mask[:t, :t], float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v
        return self.wo(out.transpose(1, 2).reshape(b, t, c))

    def forward(self, x):
        h = x + self.attention(F.layer_norm(x, (WIDTH,), self.attn_norm, None, 1e-5))
        hidden = F.gelu(self.w1(F.layer_norm(h, (WIDTH,), self.mlp_norm, None, 1e-5)),
                        approximate="tanh")
        return h + self.w2(hidden)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Parameter(torch.randn(VOCAB, WIDTH) * 0.02)
        self.wpe = nn.Parameter(torch.randn(CONTEXT, WIDTH) * 0.02)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln_f = nn.Parameter(torch.ones(WIDTH))

    def forward(self, ids, targets):
        x = self.wte[ids] + self.wpe[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        x = F.layer_norm(x, (WIDTH,), self.ln_f, None, 1e-5)
        logits = x.view(-1, WIDTH) @ self.wte.T
        return F.cross_entropy(logits, targets.view(-1))


def blas_description():
    """Names the BLAS library this process loaded and, for OpenBLAS, its own
    thread count, which torch.set_num_threads does not change."""
    with open("/proc/self/maps") as maps:
        paths = sorted({line.split()[-1] for line in maps
                        if "blas" in line.split()[-1] and ".so" in line})
    lib = next((p for p in paths if "openblas" in p), paths[0] if paths else None)
    if lib is None:
        return "no BLAS library loaded"
    try:
        openblas = ctypes.CDLL(lib)
        kinds = {0: "sequential", 1: "pthreads", 2: "OpenMP"}
        kind = kinds.get(openblas.openblas_get_parallel(), "unknown threading")
        return f"{lib} ({kind}, {openblas.openblas_get_num_threads()} threads of its own)"
    except (OSError, AttributeError):
        return lib


def measure(threads, steps, warmup):
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    model = Model()
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(2)
    times, cpu_times = [], []
    loss = None
    for _ in range(warmup + steps):
        ids = torch.randint(VOCAB, (BATCH, CONTEXT), generator=gen)
        targets = torch.randint(VOCAB, (BATCH, CONTEXT), generator=gen)
        t0, cpu0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        loss = model(ids, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append((time.perf_counter() - t0) * 1e3)
        cpu_times.append((time.process_time() - cpu0) * 1e3)
    timed = times[warmup:]
    cpu = statistics.median(cpu_times[warmup:])
    return statistics.median(timed), min(timed), statistics.mean(timed), cpu, loss.item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="torch.set_num_threads values to measure (default: 1 2)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    args = parser.parse_args()
    if not 1 <= args.steps <= MAX_STEPS:
        parser.error(f"--steps {args.steps}: give 1 to {MAX_STEPS} timed steps")
    if not 0 <= args.warmup <= MAX_STEPS:
        parser.error(f"--warmup {args.warmup}: give 0 to {MAX_STEPS} warm-up steps")
    for t in args.threads:
        if t < 1:
            parser.error(f"--threads {t}: torch.set_num_threads takes 1 or more (unlike "
                         f"thinklab-bench-step, 0 does not mean all cores)")
        if t > MAX_THREADS:
            parser.error(f"--threads {t}: give 1 to {MAX_THREADS}, the limit of "
                         f"thinklab-bench-step")

    print(f"PyTorch {torch.__version__} step benchmark: GPT-2 style, V {VOCAB}, context "
          f"{CONTEXT}, C {WIDTH}, H {HEADS}, {LAYERS} layers, batch {BATCH}")
    torch.zeros(1)  # loads the BLAS library
    print(f"BLAS: {blas_description()}; 'threads' below is torch.set_num_threads")
    best = None
    for threads in args.threads:
        med, low, mean, cpu, loss = measure(threads, args.steps, args.warmup)
        print(f"threads {threads}: steps {args.steps} after {args.warmup} warm-up: median "
              f"{med:.2f} ms/step, min {low:.2f}, mean {mean:.2f}, median CPU time {cpu:.2f} "
              f"ms/step (final loss {loss:.4f})")
        if best is None or med < best[1]:
            best = (threads, med)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"best: threads {best[0]}, median {best[1]:.2f} ms/step; peak RSS {peak_mib:.1f} MiB")


if __name__ == "__main__":
    main()
