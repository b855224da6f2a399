"""PyTorch reference for conv2d: forward output and the x, w, bias gradients for a given upstream gradient,
for several configurations. Each config also stores its options as int32 [sh, sw, ph, pw, dh, dw, groups].
Also nn.Conv2d's default initialisation bounds (init.<name>) for the module test."""
import math

import torch
import torch.nn.functional as F

# name: (x shape, w shape, bias?, stride, padding, dilation, groups)
CONFIGS = {
    "basic": ((2, 3, 7, 6), (4, 3, 3, 3), True, (1, 1), (1, 1), (1, 1), 1),
    "stride2": ((2, 4, 9, 8), (6, 4, 3, 3), False, (2, 2), (1, 1), (1, 1), 1),
    "dil2_groups2": ((2, 4, 8, 8), (6, 2, 3, 3), True, (1, 1), (2, 2), (2, 2), 2),
    "pointwise_s2": ((2, 8, 6, 6), (4, 8, 1, 1), False, (2, 2), (0, 0), (1, 1), 1),
    "stem7x7": ((1, 3, 12, 12), (4, 3, 7, 7), True, (2, 2), (3, 3), (1, 1), 1),
    "depthwise_asym": ((2, 4, 7, 6), (4, 1, 3, 2), True, (2, 1), (0, 1), (1, 2), 4),
    # Inception v3's factorised kernels: 1x7 / 7x1 with padding (0, 3) / (3, 0), 1x3 / 3x1 with (0, 1) / (1, 0)
    "incep_1x7": ((2, 4, 9, 8), (5, 4, 1, 7), True, (1, 1), (0, 3), (1, 1), 1),
    "incep_7x1": ((2, 4, 9, 8), (5, 4, 7, 1), False, (1, 1), (3, 0), (1, 1), 1),
    "incep_1x3": ((2, 3, 6, 7), (4, 3, 1, 3), False, (1, 1), (0, 1), (1, 1), 1),
    "incep_3x1": ((2, 3, 6, 7), (4, 3, 3, 1), True, (1, 1), (1, 0), (1, 1), 1),
    # Depthwise (groups == C): MobileNet V2 3x3 stride 1 and 2, MNASNet 5x5 stride 2, channel multiplier 2,
    # dilation and asymmetric stride/padding
    "dw_s1": ((2, 6, 9, 8), (6, 1, 3, 3), False, (1, 1), (1, 1), (1, 1), 6),
    "dw_s2": ((2, 6, 9, 8), (6, 1, 3, 3), True, (2, 2), (1, 1), (1, 1), 6),
    "dw_5x5_s2": ((2, 4, 10, 9), (4, 1, 5, 5), False, (2, 2), (2, 2), (1, 1), 4),
    "dw_mult2": ((2, 3, 7, 7), (6, 1, 3, 3), True, (1, 1), (1, 1), (1, 1), 3),
    "dw_dil_asym": ((1, 4, 9, 9), (8, 1, 3, 2), True, (1, 2), (2, 1), (2, 1), 4),
}

# nn.Conv2d default init: name: (in, out, kernel, groups); stores [in, out, kh, kw, groups] and PyTorch's bounds
# (weight: kaiming_uniform a = sqrt(5), i.e. gain * sqrt(3 / fan_in); bias: 1 / sqrt(fan_in)) from its helpers,
# and the largest |w| and |b| of one PyTorch initialisation (within the bounds).
INIT = {
    "square3": (64, 32, (3, 3), 1),
    "incep_1x7": (128, 64, (1, 7), 1),
    "incep_7x1": (96, 64, (7, 1), 1),
    "depthwise": (96, 96, (3, 3), 96),
    "grouped_1x3": (64, 64, (1, 3), 4),
}


def build():
    out = {}
    for name, (xs, ws, has_bias, stride, pad, dil, groups) in CONFIGS.items():
        x = torch.randn(*xs, requires_grad=True)
        w = torch.randn(*ws, requires_grad=True)
        b = torch.randn(ws[0], requires_grad=True) if has_bias else None
        y = F.conv2d(x, w, b, stride=stride, padding=pad, dilation=dil, groups=groups)
        gy = torch.randn_like(y)
        y.backward(gy)
        p = name + "."
        out[p + "opts"] = torch.tensor([*stride, *pad, *dil, groups], dtype=torch.int32)
        out.update({p + "x": x, p + "w": w, p + "gy": gy, p + "y": y, p + "gx": x.grad, p + "gw": w.grad})
        if has_bias:
            out.update({p + "b": b, p + "gb": b.grad})
    for name, (cin, cout, k, groups) in INIT.items():
        conv = torch.nn.Conv2d(cin, cout, k, groups=groups, bias=True)
        fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(conv.weight)
        w_bound = torch.nn.init.calculate_gain("leaky_relu", math.sqrt(5)) * math.sqrt(3.0 / fan_in)
        b_bound = 1 / math.sqrt(fan_in)
        p = "init." + name + "."
        out[p + "config"] = torch.tensor([cin, cout, *k, groups], dtype=torch.int32)
        out[p + "bounds"] = torch.tensor([w_bound, b_bound], dtype=torch.float64)
        out[p + "max"] = torch.tensor([conv.weight.abs().max().item(), conv.bias.abs().max().item()],
                                      dtype=torch.float64)
    return out
