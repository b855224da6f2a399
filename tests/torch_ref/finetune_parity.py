#!/usr/bin/env python3
"""PyTorch doing the same short fine-tuning job as tlengine: the same initial weights, data, order and recipe.

usage: finetune_parity.py weights DATA OUTDIR [ARCH]        writes OUTDIR/init.pth (ARCH, default resnet18, 4 classes,
                                                            random; dropout off)
       finetune_parity.py train DATA OUTDIR MODE EPOCHS LR WD DTYPE [ARCH SIZE]
                                                            trains from init.pth, writes OUTDIR/torch_MODE_DTYPE.json
ARCH googlenet / inception_v3: auxiliary classifiers on, loss = main + 0.3 (aux1 + aux2) / main + 0.4 aux, as in
torchvision's recipe; transform_input on, as torchvision sets it for pretrained weights.
MODE: full (every layer trains) or head (feature extraction: only fc trains, frozen batch norm still uses batch
statistics in train(), as in PyTorch). DTYPE: fp32 (PyTorch's default), fp32_nhwc (float32 with channels_last
model and inputs: oneDNN's NHWC kernels, as tlengine runs float32 on the CPU) or fp64 (model and inputs in float64:
the trajectory without float32 rounding, the tight reference). Recipe: ImageFolder, Resize((SIZE, SIZE)) (32 by
default), ToTensor,
Normalize(ImageNet), no augmentation, no shuffling, batch 8, SGD(LR, momentum 0.9, weight_decay WD),
CrossEntropyLoss, train() then eval() each epoch.
"""
import json
import os
import sys

import torch
import torchvision
from torchvision import transforms


def build(arch):
    kwargs = {}
    if arch in ("googlenet", "inception_v3"):
        kwargs = {"aux_logits": True, "transform_input": True, "init_weights": True, "dropout": 0.0}
        if arch == "googlenet":
            kwargs["dropout_aux"] = 0.0
    elif arch.startswith(("mobilenet", "mnasnet", "squeezenet", "alexnet", "vgg")):
        kwargs = {"dropout": 0.0}
    return torchvision.models.__dict__[arch](weights=None, num_classes=4, **kwargs)


def loss_of(out, y, crit):
    """The recipe's loss: with auxiliary classifiers (train mode of googlenet / inception_v3), their weighted sum."""
    if hasattr(out, "aux_logits"):  # InceptionOutputs
        return crit(out.logits, y) + 0.4 * crit(out.aux_logits, y)
    if hasattr(out, "aux_logits1"):  # GoogLeNetOutputs
        return crit(out.logits, y) + 0.3 * (crit(out.aux_logits1, y) + crit(out.aux_logits2, y))
    return crit(out, y)


def main():
    mode, data, outdir = sys.argv[1:4]
    torch.set_num_threads(1)
    if mode == "weights":
        torch.manual_seed(0)
        m = build(sys.argv[4] if len(sys.argv) > 4 else "resnet18")
        torch.save(m.state_dict(), os.path.join(outdir, "init.pth"))
        return
    arch = sys.argv[9] if len(sys.argv) > 9 else "resnet18"
    size = int(sys.argv[10]) if len(sys.argv) > 10 else 32
    m = build(arch)
    m.load_state_dict(torch.load(os.path.join(outdir, "init.pth"), weights_only=True))
    t = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    train = torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(os.path.join(data, "train"), t),
                                        batch_size=8, shuffle=False)
    val = torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(os.path.join(data, "val"), t),
                                      batch_size=8, shuffle=False)
    which, epochs, lr, wd, dtype = sys.argv[4], int(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7]), sys.argv[8]
    if dtype == "fp64":
        m.double()
        cast = lambda x: x.double()  # noqa: E731
    elif dtype == "fp32_nhwc":
        m.to(memory_format=torch.channels_last)
        cast = lambda x: x.contiguous(memory_format=torch.channels_last)  # noqa: E731
    else:
        cast = lambda x: x  # noqa: E731
    params = list(m.parameters())
    if which == "head":
        for name, p in m.named_parameters():
            p.requires_grad = name.startswith("fc.")
        params = list(m.fc.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
    crit = torch.nn.CrossEntropyLoss()
    out = {"train_loss": [], "val_loss": [], "step_loss": []}
    for epoch in range(epochs):
        m.train()
        total, n = 0.0, 0
        for x, y in train:
            loss = loss_of(m(cast(x)), y, crit)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
            n += len(y)
            out["step_loss"].append(loss.item())
        out["train_loss"].append(total / n)
        m.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for x, y in val:
                total += crit(m(cast(x)), y).item() * len(y)
                n += len(y)
        out["val_loss"].append(total / n)
    with open(os.path.join(outdir, "torch_" + which + "_" + dtype + ".json"), "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
