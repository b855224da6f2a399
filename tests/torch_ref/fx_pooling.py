"""PyTorch reference for max_pool2d, avg_pool2d and adaptive_avg_pool2d: outputs and input gradients.

Each configuration <name> stores <name>.x, <name>.gy (upstream gradient), <name>.y and <name>.gx.
The C++ test (tests/test_pooling.cpp) lists the same configurations with the same options.
"""
import torch
import torch.nn.functional as F

# name: (input shape, kind, kernel, stride, padding, ceil_mode, count_include_pad)
POOLS = {
    "max_resnet_stem": ((2, 3, 9, 10), "max", 3, 2, 1, False, True),
    "max_vgg": ((2, 3, 8, 7), "max", 2, 2, 0, False, True),
    "max_ceil": ((2, 2, 8, 8), "max", 3, 2, 0, True, True),
    "max_ceil_pad": ((1, 3, 6, 7), "max", 3, 3, 1, True, True),
    "max_ceil_rule": ((1, 2, 5, 5), "max", 2, 2, 1, True, True),
    "avg_densenet": ((2, 4, 8, 6), "avg", 2, 2, 0, False, True),
    "avg_pad_incl": ((2, 3, 7, 8), "avg", 3, 2, 1, False, True),
    "avg_pad_excl": ((2, 3, 7, 8), "avg", 3, 2, 1, False, False),
    "avg_ceil_incl": ((1, 2, 8, 7), "avg", 3, 2, 1, True, True),
    "avg_ceil_excl": ((1, 2, 8, 7), "avg", 3, 2, 1, True, False),
    "avg_ceil_nopad": ((2, 2, 7, 7), "avg", 2, 2, 0, True, True),
    # ceil mode accepts an input smaller than the kernel (the floor-mode size would be 0)
    "max_ceil_tiny": ((1, 2, 3, 5), "max", 4, 3, 0, True, True),
    "avg_ceil_tiny": ((1, 2, 3, 5), "avg", 4, 3, 0, True, True),
    # the new torchvision models: Inception v3's branch_pool avg_pool2d(3, stride 1, pad 1) (count_include_pad, and
    # the exclude variant); GoogLeNet's / SqueezeNet's max_pool2d(3, 2, ceil_mode=True) on even and odd sizes and
    # GoogLeNet's max_pool2d(2, 2, ceil_mode=True) on an odd size
    "avg_incep_3s1p1": ((2, 3, 7, 6), "avg", 3, 1, 1, False, True),
    "avg_3s1p1_excl": ((2, 3, 7, 6), "avg", 3, 1, 1, False, False),
    "max_googlenet_3s2_ceil": ((2, 3, 12, 11), "max", 3, 2, 0, True, True),
    "max_googlenet_2s2_ceil": ((2, 3, 7, 8), "max", 2, 2, 0, True, True),
}
# name: (input shape, output size)
ADAPTIVE = {
    "adaptive_1x1": ((2, 5, 7, 6), (1, 1)),
    "adaptive_7x7": ((2, 3, 10, 9), (7, 7)),
    "adaptive_7x7_same": ((1, 2, 7, 7), (7, 7)),
    "adaptive_3x4": ((2, 2, 5, 11), (3, 4)),
    # GoogLeNet's aux heads: 14x14 (and an odd size) -> 4x4; AlexNet: 1x1 .. 7x7 -> 6x6 (bins overlap or repeat)
    "adaptive_4x4_14": ((2, 3, 14, 14), (4, 4)),
    "adaptive_4x4_odd": ((1, 2, 9, 11), (4, 4)),
    **{f"adaptive_6x6_from_{k}": ((1, 2, k, k), (6, 6)) for k in range(1, 8)},
}


def build():
    out = {}
    for name, (shape, kind, k, s, p, ceil, incl) in POOLS.items():
        x = torch.randn(*shape, requires_grad=True)
        if kind == "max":
            y = F.max_pool2d(x, k, s, p, ceil_mode=ceil)
        else:
            y = F.avg_pool2d(x, k, s, p, ceil_mode=ceil, count_include_pad=incl)
        gy = torch.randn(y.shape)
        y.backward(gy)
        out.update({f"{name}.x": x, f"{name}.gy": gy, f"{name}.y": y, f"{name}.gx": x.grad})
    for name, (shape, size) in ADAPTIVE.items():
        x = torch.randn(*shape, requires_grad=True)
        y = F.adaptive_avg_pool2d(x, size)
        gy = torch.randn(y.shape)
        y.backward(gy)
        out.update({f"{name}.x": x, f"{name}.gy": gy, f"{name}.y": y, f"{name}.gx": x.grad})
    # Output-size table over a grid of (in, kernel, stride, pad, ceil_mode): rows [in, k, s, p, ceil, out],
    # measured with max_pool2d (configurations PyTorch rejects are left out).
    rows = []
    for n in range(1, 13):
        for k in range(1, 5):
            for st in range(1, 4):
                for p in range(0, k // 2 + 1):
                    for ceil in (0, 1):
                        try:
                            o = F.max_pool2d(torch.zeros(1, 1, n, 1), (k, 1), (st, 1), (p, 0), ceil_mode=bool(ceil))
                        except RuntimeError:
                            continue
                        if o.shape[2] >= 1:
                            rows.append([n, k, st, p, ceil, o.shape[2]])
    out["output_sizes"] = torch.tensor(rows, dtype=torch.int32)
    return out
