"""PyTorch reference for concatenation: torch.cat outputs and the gradients sliced back to each input."""
import torch


def build():
    out = {}
    # DenseNet-style channel concatenation of 4-D tensors.
    xs = [torch.randn(2, c, 3, 4, requires_grad=True) for c in (2, 3, 1)]
    y = torch.cat(xs, dim=1)
    gy = torch.randn(y.shape)
    y.backward(gy)
    out.update({"nchw.y": y, "nchw.gy": gy})
    for i, x in enumerate(xs):
        out[f"nchw.x{i}"] = x
        out[f"nchw.gx{i}"] = x.grad
    # Features (N, F) along dim 1.
    xs = [torch.randn(3, f, requires_grad=True) for f in (4, 2)]
    y = torch.cat(xs, dim=1)
    gy = torch.randn(y.shape)
    y.backward(gy)
    out.update({"flat.y": y, "flat.gy": gy})
    for i, x in enumerate(xs):
        out[f"flat.x{i}"] = x
        out[f"flat.gx{i}"] = x.grad
    return out
