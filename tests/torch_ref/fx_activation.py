"""PyTorch reference for ReLU and add: forward outputs and input gradients for a given upstream gradient."""
import torch


def build():
    out = {}
    x = torch.randn(2, 3, 5, 4, requires_grad=True)
    gy = torch.randn(2, 3, 5, 4)
    y = torch.relu(x)
    y.backward(gy)
    out.update({"relu.x": x, "relu.gy": gy, "relu.y": y, "relu.gx": x.grad})
    a = torch.randn(3, 4, requires_grad=True)
    b = torch.randn(3, 4, requires_grad=True)
    gy = torch.randn(3, 4)
    y = a + b
    y.backward(gy)
    out.update({"add.a": a, "add.b": b, "add.gy": gy, "add.y": y, "add.ga": a.grad, "add.gb": b.grad})
    return out
