#!/usr/bin/env python3
"""fastai's lr_find, written out with PyTorch, on the job of finetune_parity.py's head mode.

usage: lr_find_parity.py DATA OUTDIR START_LR END_LR NUM_IT   (OUTDIR/init.pth from `finetune_parity.py weights`)
writes OUTDIR/torch_lr_find.json: per step lr, loss, smoothed loss; why it stopped; the steep and minimum
suggestions.

As fastai's LRFinder, Recorder and AvgSmoothLoss do it (fastai 2.7, callback/schedule.py and learner.py): before
each batch the lr is start * (end / start) ** (iteration / num_it) (SchedExp); after it the smoothed loss is
torch.lerp(loss, avg, 0.98) / (1 - 0.98 ** count); stop when it exceeds 4x its minimum (stop_div) or after num_it
batches. Suggestions over recorder.lrs / losses[num_it // 10 : -5]: steep = the lr at the most negative
d(loss)/d(log lr); minimum = the lr at the lowest loss / 10.
The job: resnet18 from init.pth in float64, only fc trains (frozen batch norm still uses batch statistics in
train()), ImageFolder train/ with Resize((32, 32)), ToTensor, Normalize(ImageNet), no shuffling, batch 8, the
epochs repeated as needed, SGD(momentum 0.9), CrossEntropyLoss.
"""
import json
import math
import os
import sys

import torch
import torchvision
from torchvision import transforms

from finetune_parity import build


def suggestions(lrs, losses, num_it):
    lrs, losses = torch.tensor(lrs[num_it // 10:-5]), torch.tensor(losses[num_it // 10:-5])
    grads = (losses[1:] - losses[:-1]) / (lrs[1:].log() - lrs[:-1].log())
    return {"steep": lrs[grads.argmin()].item(), "minimum": lrs[losses.argmin()].item() / 10}


def main():
    data, outdir = sys.argv[1:3]
    start, end, num_it = float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
    torch.set_num_threads(1)
    m = build("resnet18")
    m.load_state_dict(torch.load(os.path.join(outdir, "init.pth"), weights_only=True))
    m.double()
    for name, p in m.named_parameters():
        p.requires_grad = name.startswith("fc.")
    t = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor(),
                            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    train = torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(os.path.join(data, "train"), t),
                                        batch_size=8, shuffle=False)
    opt = torch.optim.SGD(m.fc.parameters(), lr=start, momentum=0.9)
    crit = torch.nn.CrossEntropyLoss()
    m.train()
    out = {"lrs": [], "losses": [], "smoothed": [], "stopped": ""}
    avg, count, best = torch.tensor(0.0, dtype=torch.float64), 0, math.inf
    while not out["stopped"]:
        for x, y in train:
            lr = start * (end / start) ** (len(out["lrs"]) / num_it)
            for g in opt.param_groups:
                g["lr"] = lr
            loss = crit(m(x.double()), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            avg = torch.lerp(loss.detach(), avg, 0.98)
            count += 1
            smooth = (avg / (1 - 0.98 ** count)).item()
            out["lrs"].append(lr)
            out["losses"].append(loss.item())
            out["smoothed"].append(smooth)
            best = min(best, smooth)
            if smooth > 4 * best:
                out["stopped"] = "diverged"
            elif len(out["lrs"]) >= num_it:
                out["stopped"] = "num_it"
            if out["stopped"]:
                break
    out["suggestions"] = suggestions(out["lrs"], out["smoothed"], num_it)
    with open(os.path.join(outdir, "torch_lr_find.json"), "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
