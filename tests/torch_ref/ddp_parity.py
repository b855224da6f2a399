#!/usr/bin/env python3
"""PyTorch DistributedDataParallel doing the same short data-parallel job as `mpirun -np 2 tlengine train`.

usage: ddp_parity.py DATA OUTDIR EPOCHS LR BATCH OPTIM DTYPE [ARCH SIZE]
    trains OUTDIR/init.pth (written by finetune_parity.py weights) on 2 processes (torch.multiprocessing.spawn,
    gloo on the CPU, 127.0.0.1 and a free port) and writes OUTDIR/ddp_OPTIM_DTYPE.json: per epoch the train and
    val losses over the whole set (each rank's loss sums and counts summed over the ranks, as tlengine reports
    them), and rank 0's final weights and buffers (OUTDIR/ddp_OPTIM_DTYPE.pth).

The job, as tlengine's DataParallel.MatchesPyTorchDdp runs it: ImageFolder, Resize((SIZE, SIZE)) (32 by default),
ToTensor, Normalize(ImageNet), no augmentation; BATCH images per process and step. Train: DistributedSampler
without shuffling (tlengine --no-shuffle): rank r takes positions r, r + 2, ... (padded by repeating the start;
the test's set divides evenly). Val: the same interleaved split without padding (tlengine's val shares), rank 0's
buffers (DDP's broadcast_buffers=True, the default: every forward starts from rank 0's running statistics) and the
metrics summed over the ranks. Per-rank batch norm (no SyncBatchNorm). OPTIM: sgd (momentum 0.9) or adam; DTYPE:
fp64 (model and inputs in float64, the tight reference) or fp32. CrossEntropyLoss; DDP averages the gradients.
"""
import datetime
import json
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision
from torchvision import transforms

WORLD = 2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(arch):
    kwargs = {"dropout": 0.0} if arch.startswith(("mobilenet", "mnasnet", "squeezenet", "alexnet", "vgg")) else {}
    return torchvision.models.__dict__[arch](weights=None, num_classes=4, **kwargs)


def summed(values):
    """Sums a list of floats over the ranks (float64)."""
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def worker(rank, port, args):
    data, outdir, epochs, lr, batch, optim, dtype, arch, size = args
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    # A peer that died must not leave the other waiting forever: every collective gives up after 2 minutes.
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=120))
    m = build(arch)
    m.load_state_dict(torch.load(os.path.join(outdir, "init.pth")))
    if dtype == "fp64":
        m.double()
    cast = (lambda x: x.double()) if dtype == "fp64" else (lambda x: x)  # noqa: E731
    ddp = torch.nn.parallel.DistributedDataParallel(m)  # broadcast_buffers=True, per-rank batch norm
    t = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    train_set = torchvision.datasets.ImageFolder(os.path.join(data, "train"), t)
    val_set = torchvision.datasets.ImageFolder(os.path.join(data, "val"), t)
    sampler = torch.utils.data.distributed.DistributedSampler(train_set, WORLD, rank, shuffle=False)
    train = torch.utils.data.DataLoader(train_set, batch_size=batch, sampler=sampler)
    val = torch.utils.data.DataLoader(torch.utils.data.Subset(val_set, range(rank, len(val_set), WORLD)),
                                      batch_size=batch)
    if optim == "sgd":
        opt = torch.optim.SGD(ddp.parameters(), lr=lr, momentum=0.9)
    else:
        opt = torch.optim.Adam(ddp.parameters(), lr=lr)
    crit = torch.nn.CrossEntropyLoss()
    out = {"train_loss": [], "val_loss": []}
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        ddp.train()
        total, n = 0.0, 0
        for x, y in train:
            loss = crit(ddp(cast(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
            n += len(y)
        total, n = summed([total, n])
        out["train_loss"].append(total / n)
        ddp.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for x, y in val:
                total += crit(ddp(cast(x)), y).item() * len(y)
                n += len(y)
        total, n = summed([total, n])
        out["val_loss"].append(total / n)
    if rank == 0:
        name = os.path.join(outdir, "ddp_" + optim + "_" + dtype)
        torch.save(m.state_dict(), name + ".pth")
        with open(name + ".json", "w") as f:
            json.dump(out, f)
    dist.destroy_process_group()


def main():
    data, outdir = sys.argv[1:3]
    epochs, lr, batch, optim, dtype = int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7]
    arch = sys.argv[8] if len(sys.argv) > 8 else "resnet18"
    size = int(sys.argv[9]) if len(sys.argv) > 9 else 32
    assert optim in ("sgd", "adam") and dtype in ("fp32", "fp64"), "OPTIM: sgd | adam; DTYPE: fp32 | fp64"
    mp.spawn(worker, args=(free_port(), (data, outdir, epochs, lr, batch, optim, dtype, arch, size)), nprocs=WORLD)


if __name__ == "__main__":
    main()
