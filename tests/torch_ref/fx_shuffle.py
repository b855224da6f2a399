"""PyTorch reference for channel shuffle and channel splitting (ShuffleNet V2): torchvision's channel_shuffle,
x.chunk(2, dim=1), torch.narrow along other dims, and a stride-1 ShuffleNet V2 unit's data path
(chunk -> branch on the second half -> cat -> channel_shuffle(2)). Outputs and input gradients."""
import torch


def channel_shuffle(x, groups):  # torchvision.models.shufflenetv2.channel_shuffle
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, -1, height, width)


def build():
    out = {}
    for name, shape, groups in (("shuffle_g2", (2, 6, 3, 4), 2), ("shuffle_g3", (2, 12, 2, 3), 3),
                                ("shuffle_g4", (1, 8, 5, 1), 4)):
        x = torch.randn(*shape, requires_grad=True)
        y = channel_shuffle(x, groups)
        gy = torch.randn(y.shape)
        y.backward(gy)
        out.update({f"{name}.x": x, f"{name}.gy": gy, f"{name}.y": y, f"{name}.gx": x.grad})
    # chunk(2, dim=1): both halves receive an upstream gradient
    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    a, b = x.chunk(2, dim=1)
    ga, gb = torch.randn(a.shape), torch.randn(b.shape)
    torch.autograd.backward([a, b], [ga, gb])
    out.update({"chunk.x": x, "chunk.y0": a, "chunk.y1": b, "chunk.gy0": ga, "chunk.gy1": gb, "chunk.gx": x.grad})
    # narrow of the middle channels only (the rest of dx is zero), and along dim 2 and of a 2-D tensor
    for name, shape, dim, start, length in (("narrow_c", (2, 7, 3, 2), 1, 2, 3), ("narrow_h", (2, 3, 6, 4), 2, 1, 4),
                                            ("narrow_2d", (3, 9), 1, 4, 5)):
        x = torch.randn(*shape, requires_grad=True)
        y = x.narrow(dim, start, length)
        gy = torch.randn(y.shape)
        y.backward(gy)
        out.update({f"{name}.x": x, f"{name}.gy": gy, f"{name}.y": y, f"{name}.gx": x.grad})
    # ShuffleNet V2 stride-1 unit's data path with relu as the branch
    x = torch.randn(2, 8, 4, 3, requires_grad=True)
    x1, x2 = x.chunk(2, dim=1)
    y = channel_shuffle(torch.cat((x1, torch.relu(x2)), dim=1), 2)
    gy = torch.randn(y.shape)
    y.backward(gy)
    out.update({"unit.x": x, "unit.gy": gy, "unit.y": y, "unit.gx": x.grad})
    return out
