#!/usr/bin/env python3
"""Loader-alone benchmark, PyTorch side (tools/time_to_result_cpu.sh): torchvision's ImageFolder + DataLoader
over a folder of images with the tutorial's train transform (PIL decode, RandomResizedCrop(size),
RandomHorizontalFlip, ToTensor, Normalize), no model: images/s of the data pipeline alone.

DataLoader(batch_size, shuffle=True, num_workers=workers) as the tutorial builds it (workers are started anew
each epoch, as there; --persistent-workers to keep them). Each epoch is timed from iter() to the last batch;
the result has every epoch's time, images/s over all epochs and over the epochs after the first (the first
includes the workers' start-up and a cold page cache).

  python3 tools/bench_loader.py --data DIR [--image-size 224] [--batch-size 32] [--workers 4] [--epochs 3]
      [--threads N] [--json out.json]

--data is an ImageFolder root (its train/ subfolder is used when there is one).
"""
import argparse
import json
import os
import statistics
import time

import torch
import torchvision
from torchvision import datasets, transforms

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--persistent-workers", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads(N); 0: PyTorch's default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the result here")
    a = p.parse_args()
    if a.epochs < 1 or a.batch_size < 1 or a.workers < 0:
        raise SystemExit("bench_loader.py: --epochs and --batch-size must be >= 1, --workers >= 0")
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    root = os.path.join(a.data, "train") if os.path.isdir(os.path.join(a.data, "train")) else a.data
    transform = transforms.Compose([transforms.RandomResizedCrop(a.image_size), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    dataset = datasets.ImageFolder(root, transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=a.batch_size, shuffle=True, num_workers=a.workers,
                                         persistent_workers=a.persistent_workers and a.workers > 0)
    epoch_s = []
    checksum = 0.0
    for _ in range(a.epochs):
        t = time.perf_counter()
        count = 0
        for images, _labels in loader:
            count += images.shape[0]
            checksum += float(images[0, 0, 0, 0])  # touch the batch
        epoch_s.append(time.perf_counter() - t)
        assert count == len(dataset)
    n = len(dataset)
    result = {"engine": "pytorch-dataloader", "data": root, "images": n, "image_size": a.image_size,
              "batch_size": a.batch_size, "workers": a.workers, "persistent_workers": a.persistent_workers,
              "epochs": a.epochs, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "torchvision": torchvision.__version__,
              "transform": f"decode (PIL) + RandomResizedCrop({a.image_size}) + RandomHorizontalFlip + ToTensor + "
                           "Normalize",
              "epoch_s": epoch_s, "images_per_s": n * a.epochs / sum(epoch_s),
              "images_per_s_after_first": (n * (a.epochs - 1) / sum(epoch_s[1:])) if a.epochs > 1 else None,
              "median_epoch_images_per_s": n / statistics.median(epoch_s)}
    print(f"pytorch DataLoader: {n} images x {a.epochs} epochs, {a.workers} workers, batch {a.batch_size}, "
          f"{a.image_size} px: {result['images_per_s']:.1f} img/s"
          + (f" ({result['images_per_s_after_first']:.1f} after the first epoch)" if a.epochs > 1 else ""))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
