"""PyTorch reference for ReLU, ReLU6 and add: forward outputs and input gradients for a given upstream gradient."""
import torch


def build():
    out = {}
    x = torch.randn(2, 3, 5, 4, requires_grad=True)
    gy = torch.randn(2, 3, 5, 4)
    y = torch.relu(x)
    y.backward(gy)
    out.update({"relu.x": x, "relu.gy": gy, "relu.y": y, "relu.gx": x.grad})
    # ReLU6 over [-3, 9), with exact 0 and 6 (both kinks: hardtanh's backward gives 0 there) and values just inside.
    x = (torch.rand(2, 4, 5, 3) * 12 - 3)
    x.view(-1)[:6] = torch.tensor([0.0, 6.0, 1e-3, 6 - 1e-3, -1e-3, 6 + 1e-3])
    x.requires_grad_(True)
    gy = torch.randn(2, 4, 5, 3)
    y = torch.nn.functional.relu6(x)
    y.backward(gy)
    out.update({"relu6.x": x, "relu6.gy": gy, "relu6.y": y, "relu6.gx": x.grad})
    a = torch.randn(3, 4, requires_grad=True)
    b = torch.randn(3, 4, requires_grad=True)
    gy = torch.randn(3, 4)
    y = a + b
    y.backward(gy)
    out.update({"add.a": a, "add.b": b, "add.gy": gy, "add.y": y, "add.ga": a.grad, "add.gb": b.grad})
    return out
