"""PyTorch reference for the linear layer: y = x w^T + b, and dx, dw, db for a given upstream gradient."""
import torch
import torch.nn.functional as F

# name: (N, in_features, out_features, has_bias)
CONFIGS = {
    "batch1": (1, 7, 3, True),
    "small": (5, 16, 10, True),
    "nobias": (4, 33, 9, False),
    "c1000": (3, 256, 1000, True),
}


def build():
    out = {}
    for name, (n, fin, fout, has_bias) in CONFIGS.items():
        x = torch.randn(n, fin, requires_grad=True)
        w = (torch.randn(fout, fin) / fin ** 0.5).requires_grad_()
        b = torch.randn(fout, requires_grad=True) if has_bias else None
        gy = torch.randn(n, fout)
        y = F.linear(x, w, b)
        y.backward(gy)
        out.update({f"{name}.x": x, f"{name}.w": w, f"{name}.gy": gy, f"{name}.y": y, f"{name}.gx": x.grad,
                    f"{name}.gw": w.grad})
        if has_bias:
            out.update({f"{name}.b": b, f"{name}.gb": b.grad})
    return out
