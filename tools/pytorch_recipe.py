#!/usr/bin/env python3
"""The torchvision transfer-learning tutorial recipe (the workflow tlengine replaces, ../shared/MISSION.md),
as a script for the time-to-result comparison (tools/time_to_result.sh):

ImageFolder train/ and val/; train: RandomResizedCrop(224), RandomHorizontalFlip, ToTensor, Normalize;
val: Resize(256), CenterCrop(224), ToTensor, Normalize; DataLoader(shuffle=True, batch 4, 4 workers);
the model with a new head for the class count; CrossEntropyLoss, SGD(lr 1e-3, momentum 0.9), StepLR(7, 0.1);
a train and a val phase per epoch; the best val accuracy's weights saved to <out>/best.pth when they improve;
at the end <out>/last.pth (model, optimizer and scheduler state: the final checkpoint) and <out>/summary.json.

Variants (for tools/time_to_result_cpu.sh):
  --feature-extract  the tutorial's "ConvNet as fixed feature extractor": every parameter requires_grad=False
                     except the new head's; the optimizer gets the head's parameters only; model.train() in the
                     train phase as in the tutorial, so the frozen backbone's batch norm uses batch statistics
                     and updates its running statistics;
  --freeze-bn        batch norm layers whose parameters are all frozen stay in eval() mode (running statistics)
                     in the train phase too, as tlengine's --freeze-bn (not the tutorial's behaviour);
  --no-augment       train on the val transform (Resize(size*256/224) + CenterCrop(size)), as tlengine's
                     --no-augment (its train transform is then its val transform, --val-transform crop);
  --threads N        torch.set_num_threads(N) (PyTorch 1.13 may default to 1 thread on a small machine);
                     0: PyTorch's default.

  python3 tools/pytorch_recipe.py --data DIR --arch resnet18 --epochs 25 --out runs/pytorch [--weights x.pth]
"""
import argparse
import json
import os
import time

START = time.time()

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torchvision import datasets, models, transforms  # noqa: E402

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--weights", help="a torchvision state_dict .pth (ImageNet weights); default: random init")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", default="runs/pytorch")
    p.add_argument("--feature-extract", action="store_true",
                   help="only the new head trains (the tutorial's fixed feature extractor)")
    p.add_argument("--freeze-bn", action="store_true",
                   help="frozen batch norm layers stay in eval mode in the train phase (as tlengine --freeze-bn)")
    p.add_argument("--no-augment", action="store_true", help="train on the val transform (as tlengine --no-augment)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads(N); 0: PyTorch's default")
    p.add_argument("--seed", type=int, default=None, help="torch.manual_seed(N) (shuffling, crops, the new head)")
    a = p.parse_args()
    if a.seed is not None:
        torch.manual_seed(a.seed)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device)
    size = a.image_size
    val_transform = transforms.Compose([transforms.Resize(size * 256 // 224), transforms.CenterCrop(size),
                                        transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    data_transforms = {
        "train": val_transform if a.no_augment else transforms.Compose([
            transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
            transforms.ToTensor(), transforms.Normalize(MEAN, STD)]),
        "val": val_transform,
    }
    image_datasets = {x: datasets.ImageFolder(os.path.join(a.data, x), data_transforms[x]) for x in ["train", "val"]}
    dataloaders = {x: torch.utils.data.DataLoader(image_datasets[x], batch_size=a.batch_size, shuffle=True,
                                                  num_workers=a.workers) for x in ["train", "val"]}
    sizes = {x: len(image_datasets[x]) for x in ["train", "val"]}
    classes = image_datasets["train"].classes

    model = getattr(models, a.arch)()
    if a.weights:
        model.load_state_dict(torch.load(a.weights, map_location="cpu"))
    if a.arch.startswith("resnet"):
        model.fc = nn.Linear(model.fc.in_features, len(classes))
    elif a.arch.startswith("densenet"):
        model.classifier = nn.Linear(model.classifier.in_features, len(classes))
    else:
        raise SystemExit(f"pytorch_recipe.py: --arch {a.arch}: only ResNet and DenseNet")
    head = model.fc if a.arch.startswith("resnet") else model.classifier
    if a.feature_extract:  # the tutorial: freeze everything, then the new head (created after) trains
        for param in model.parameters():
            param.requires_grad = False
        for param in head.parameters():
            param.requires_grad = True
    # Batch norm layers with no trainable parameter: kept in eval mode in the train phase with --freeze-bn.
    frozen_bn = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 and not any(q.requires_grad for q in m.parameters())] if a.freeze_bn else []
    model = model.to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(head.parameters() if a.feature_extract else model.parameters(), lr=a.lr,
                                momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    os.makedirs(a.out, exist_ok=True)
    best_path = os.path.join(a.out, "best.pth")
    best_acc, best_epoch = -1.0, -1

    for epoch in range(a.epochs):
        for phase in ["train", "val"]:
            model.train() if phase == "train" else model.eval()
            for m in frozen_bn:
                m.eval()
            running_loss, running_corrects = 0.0, 0
            for inputs, labels in dataloaders[phase]:
                inputs, labels = inputs.to(device), labels.to(device)
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    outputs = model(inputs)
                    _, preds = torch.max(outputs, 1)
                    loss = criterion(outputs, labels)
                    if phase == "train":
                        loss.backward()
                        optimizer.step()
                running_loss += loss.item() * inputs.size(0)
                running_corrects += torch.sum(preds == labels.data).item()
            if phase == "train":
                scheduler.step()
            epoch_loss = running_loss / sizes[phase]
            epoch_acc = running_corrects / sizes[phase]
            print(f"epoch {epoch + 1}/{a.epochs} {phase} loss {epoch_loss:.4f} acc {epoch_acc:.4f}", flush=True)
            if phase == "val" and epoch_acc > best_acc:
                best_acc, best_epoch = epoch_acc, epoch + 1
                torch.save(model.state_dict(), best_path)

    last_path = os.path.join(a.out, "last.pth")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": a.epochs}, last_path)
    seconds = time.time() - START
    model.load_state_dict(torch.load(best_path))
    summary = {"engine": "pytorch", "arch": a.arch, "epochs": a.epochs, "batch_size": a.batch_size,
               "workers": a.workers, "device": str(device), "best_val_acc": best_acc, "best_epoch": best_epoch,
               "start_to_final_checkpoint_s": seconds, "torch": torch.__version__,
               "threads": torch.get_num_threads(), "feature_extract": a.feature_extract,
               "frozen_bn": "eval (running statistics)" if a.freeze_bn else "train (batch statistics)",
               "frozen_bn_layers_in_eval": len(frozen_bn), "no_augment": a.no_augment,
               "trainable_params": sum(q.numel() for q in model.parameters() if q.requires_grad)}
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    print(f"best val acc {best_acc:.4f} (epoch {best_epoch}); {seconds:.1f} s from start to {last_path}")


if __name__ == "__main__":
    main()
