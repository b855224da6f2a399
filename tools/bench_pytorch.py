#!/usr/bin/env python3
"""PyTorch side of the training-step benchmark: the same configurations and definitions as `tlengine bench`
(../shared/ANCHORS.md), one configuration per run, JSON out.

One step = forward, cross-entropy, backward, SGD(momentum 0.9) step, zero_grad(set_to_none=True), on a fixed
random batch made once on the device; model in train() mode. Modes: full, last_block (layer4 /
features.denseblock4 and the head train), head (only the head trains; the optimizer gets only trainable
parameters). fp32: TF32 convolutions (cudnn.allow_tf32=True), fp32 matmuls (matmul.allow_tf32=False);
bf16: autocast bfloat16 + channels_last. cudnn.benchmark=True. Median of --steps steps after --warmup steps,
CUDA events around each step (time.perf_counter on the CPU). Peak memory: torch.cuda.max_memory_allocated after
reset_peak_memory_stats once model, optimizer and batch exist. --compile: torch.compile(model,
mode="reduce-overhead") (Inductor + CUDA graphs; the optimizer step stays eager); compile time = wall time of
the first 5 steps (reported for eager runs too, as first5_s; needs --warmup >= 5). The first step always runs
untimed (with --warmup 0 too), as in `tlengine bench`. Runs on the CPU as well (for tests, PyTorch 1.13,
which has no torch.compile: --compile then fails with a clear message). --threads N calls
torch.set_num_threads(N) (PyTorch 1.13 may default to 1 thread on a small machine; give it the thread count
tlengine gets through OMP_NUM_THREADS); the thread count used is recorded as "threads".

  python3 tools/bench_pytorch.py --model resnet50 --mode head --precision bf16 --batch 64 --json out.json
"""
import argparse
import json
import statistics
import sys
import time

PROCESS_START = time.perf_counter()

import torch  # noqa: E402
import torchvision  # noqa: E402

HEADS = {"resnet": "fc", "densenet": "classifier"}


def head_name(model_name):
    for prefix, head in HEADS.items():
        if model_name.startswith(prefix):
            return head
    raise SystemExit(f"bench_pytorch.py: --model {model_name}: only ResNet and DenseNet models are supported")


def build_model(name, classes, memory_efficient=False):
    extra = {"memory_efficient": True} if memory_efficient else {}  # DenseNet only, as tlengine --memory-efficient
    model = getattr(torchvision.models, name)(num_classes=1000, **extra)  # random weights: speed does not depend on them
    head = head_name(name)
    old = getattr(model, head)
    setattr(model, head, torch.nn.Linear(old.in_features, classes))
    return model


def trainable_prefixes(name, mode):
    head = head_name(name)
    if mode == "full":
        return None
    if mode == "head":
        return [head + "."]
    if mode == "last_block":
        block = "layer4." if name.startswith("resnet") else "features.denseblock4."
        return [block, head + "."]
    raise SystemExit(f"bench_pytorch.py: --mode must be full, last_block or head, got {mode!r}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", "--arch", dest="model", default="resnet18")
    p.add_argument("--mode", default="full", choices=["full", "last_block", "head"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--batch", "--batch-size", "-b", dest="batch", type=int, default=64)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--memory-efficient", action="store_true",
                   help="DenseNet: torchvision's memory_efficient=True (checkpointed bottlenecks)")
    p.add_argument("--compile", action="store_true", help='torch.compile(model, mode="reduce-overhead")')
    p.add_argument("--count-flops", action="store_true",
                   help="also count one step's FLOPs with torch.utils.flop_counter (PyTorch >= 2.1, eager only)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads(N); 0: PyTorch's default")
    p.add_argument("--json", help="write the result here")
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    if a.warmup < 0 or a.steps < 1 or a.batch < 1:
        raise SystemExit("bench_pytorch.py: --warmup must be >= 0, --steps and --batch >= 1")

    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_pytorch.py: --device cuda: no CUDA device is available")
    if a.compile and not hasattr(torch, "compile"):
        raise SystemExit(f"bench_pytorch.py: --compile needs PyTorch >= 2.0 (this is {torch.__version__})")
    bf16 = a.precision == "bf16"
    torch.manual_seed(a.seed)
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = False
    memory_format = torch.channels_last if bf16 else torch.contiguous_format

    model = build_model(a.model, a.classes, a.memory_efficient).to(device, memory_format=memory_format)
    model.train()
    prefixes = trainable_prefixes(a.model, a.mode)
    params = []
    for name, prm in model.named_parameters():
        prm.requires_grad_(prefixes is None or any(name.startswith(x) for x in prefixes))
        if prm.requires_grad:
            params.append(prm)
    opt = torch.optim.SGD(params, lr=a.lr, momentum=0.9)
    gen = torch.Generator(device="cpu").manual_seed(a.seed + 1)
    images = torch.randn(a.batch, 3, a.image_size, a.image_size, generator=gen).to(device)
    images = images.contiguous(memory_format=memory_format)
    labels = torch.randint(0, a.classes, (a.batch,), generator=gen).to(device)
    loss_fn = torch.nn.CrossEntropyLoss()
    net = torch.compile(model, mode="reduce-overhead") if a.compile else model
    cuda = device == "cuda"

    def step():
        if a.compile and hasattr(torch, "compiler") and hasattr(torch.compiler, "cudagraph_mark_step_begin"):
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(net(images), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    result = {"engine": "pytorch-compile" if a.compile else "pytorch-eager", "model": a.model, "mode": a.mode,
              "precision": a.precision, "batch": a.batch, "image_size": a.image_size, "classes": a.classes,
              "warmup": a.warmup, "steps": a.steps, "torch": torch.__version__, "torchvision": torchvision.__version__,
              "device": f"cuda: {torch.cuda.get_device_name()}" if cuda else "cpu", "threads": torch.get_num_threads(),
              "trainable_params": sum(x.numel() for x in params),
              "total_params": sum(x.numel() for x in model.parameters())}

    sync()
    result["build_s"] = time.perf_counter() - PROCESS_START
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result["first5_s"] = None  # needs --warmup >= 5
    for i in range(max(a.warmup, 1)):  # as tlengine bench: at least the first step runs untimed
        step()
        if i == 0:
            sync()
            result["first_step_s"] = time.perf_counter() - t0
            result["startup_s"] = time.perf_counter() - PROCESS_START
        if i == 4:
            sync()
            result["first5_s"] = time.perf_counter() - t0
    if a.compile:
        result["compile_s"] = result["first5_s"]

    times = []
    if cuda:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(a.steps)]
        for begin, end in events:
            begin.record()
            step()
            end.record()
        torch.cuda.synchronize()
        times = [begin.elapsed_time(end) for begin, end in events]
        result["peak_bytes"] = torch.cuda.max_memory_allocated()
        result["reserved_bytes"] = torch.cuda.max_memory_reserved()
        free, total = torch.cuda.mem_get_info()
        result["device_used_bytes"] = total - free
    else:
        for _ in range(a.steps):
            t = time.perf_counter()
            step()
            times.append(1000 * (time.perf_counter() - t))
        result["peak_bytes"] = None  # no allocator statistics on the CPU
    if a.count_flops and not a.compile:  # after the timing, so that it does not disturb it
        try:
            from torch.utils.flop_counter import FlopCounterMode
            counter = FlopCounterMode(display=False)
            with counter:
                step()
            result["gflop_per_step_torch"] = counter.get_total_flops() / 1e9
        except ImportError:
            result["gflop_per_step_torch"] = None  # PyTorch < 2.1
    med = statistics.median(times)
    result.update({"median_ms": med, "mean_ms": statistics.mean(times), "min_ms": min(times), "max_ms": max(times),
                   "images_per_s": a.batch / (med / 1000), "step_ms": times})
    line = (f"{a.model:12s} {a.mode:10s} {a.precision:4s} {a.batch:5d} | {med:9.2f} ms {a.batch / med * 1000:9.1f} img/s"
            f" {result['engine']}")
    if result["peak_bytes"]:
        line += f" peak {result['peak_bytes'] / 1e9:.3f} GB"
    print(line)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
