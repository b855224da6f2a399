"""PyTorch reference for conv2d: forward output and the x, w, bias gradients for a given upstream gradient,
for several configurations. Each config also stores its options as int32 [sh, sw, ph, pw, dh, dw, groups]."""
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
    return out
