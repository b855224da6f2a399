#!/usr/bin/env python3
"""torchvision's module tree of one architecture, for tests/test_inspect.cpp: every named module's output shape
(a forward hook, eval mode, one blank image) and parameter count (its own and its descendants').
Usage: /usr/bin/python3 tests/torch_ref/module_tree.py <arch> <image_size> <out.json>
"""
import json
import sys

import torch
import torchvision


def main():
    arch, size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    kwargs = {"aux_logits": False, "init_weights": False} if arch in ("googlenet", "inception_v3") else {}
    model = getattr(torchvision.models, arch)(**kwargs).eval()
    shapes = {}

    def hook(name):
        def record(_module, _inputs, output):
            if torch.is_tensor(output):
                shapes[name] = list(output.shape)
        return record

    for name, m in model.named_modules():
        m.register_forward_hook(hook(name))
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    tree = {name: {"type": type(m).__name__, "params": sum(p.numel() for p in m.parameters()),
                   "shape": shapes.get(name)} for name, m in model.named_modules()}
    with open(out, "w") as f:
        json.dump(tree, f)


if __name__ == "__main__":
    main()
