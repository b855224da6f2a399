"""PyTorch reference for BatchNorm2d: two training steps (outputs, input/parameter gradients, running statistics
after each step) with momentum 0.1, 0.3 and None (cumulative average), then eval mode (output and gradients)."""
import torch


def build():
    out = {}
    shape = (4, 3, 5, 6)
    for key, momentum in (("mom01", 0.1), ("mom03", 0.3), ("cma", None)):
        bn = torch.nn.BatchNorm2d(shape[1], momentum=momentum, eps=1e-5)
        with torch.no_grad():
            bn.weight.copy_(1.0 + 0.5 * torch.randn(shape[1]))
            bn.bias.copy_(0.3 * torch.randn(shape[1]))
        out[f"{key}.gamma"] = bn.weight.detach().clone()
        out[f"{key}.beta"] = bn.bias.detach().clone()
        bn.train()
        for step in (1, 2):
            x = (2.0 * torch.randn(shape) + 0.5 * step).requires_grad_(True)
            gy = torch.randn(shape)
            bn.weight.grad = None
            bn.bias.grad = None
            y = bn(x)
            y.backward(gy)
            p = f"{key}.s{step}"
            out.update({p + ".x": x, p + ".gy": gy, p + ".y": y, p + ".gx": x.grad,
                        p + ".ggamma": bn.weight.grad.clone(), p + ".gbeta": bn.bias.grad.clone(),
                        p + ".running_mean": bn.running_mean.clone(), p + ".running_var": bn.running_var.clone()})
        bn.eval()
        x = (2.0 * torch.randn(shape) + 0.3).requires_grad_(True)
        gy = torch.randn(shape)
        bn.weight.grad = None
        bn.bias.grad = None
        y = bn(x)
        y.backward(gy)
        p = f"{key}.eval"
        out.update({p + ".x": x, p + ".gy": gy, p + ".y": y, p + ".gx": x.grad,
                    p + ".ggamma": bn.weight.grad.clone(), p + ".gbeta": bn.bias.grad.clone()})
    return out
