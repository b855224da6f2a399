#!/usr/bin/env python3
"""Reference for the model parity tests: a torchvision model with random weights, saved as .pth, and its
outputs on a random batch (eval logits; train-mode logits, parameter gradients and updated running stats).

usage: model_parity.py ARCH IMAGE_SIZE OUTDIR     writes OUTDIR/ARCH.pth and OUTDIR/ARCH_ref.safetensors
       model_parity.py --variants OUTDIR          state-dict variants and hostile files for the converter tests
       model_parity.py --compare A.pth B.pth      exits 0 when both state dicts are bit-identical
"""
import collections
import copy
import math
import os
import sys

import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import write_safetensors  # noqa: E402

NUM_CLASSES = 10
SAMPLE = 1 << 18  # larger gradients are compared on a strided sample of about this many elements (keeps the
# reference small: resnet152's full float64 gradients alone would be 470 MB)


def build(arch, size=224):
    torch.manual_seed(0)
    # Dropout off, so that train mode is deterministic (the tests call set_dropout(0) on tlengine's model).
    kwargs = {"dropout": 0.0} if arch.startswith(("vgg", "alexnet", "squeezenet", "mobilenet", "mnasnet")) else {}
    if arch in ("googlenet", "inception_v3"):  # as torchvision builds them for its pretrained weights, aux heads on
        # (Inception v3's needs about 299 px: smaller inputs are checked without it; tlengine then drops its own
        # because the weights have none)
        aux = arch == "googlenet" or size >= 299
        kwargs = {"dropout": 0.0, "aux_logits": aux, "transform_input": True, "init_weights": True}
        if arch == "googlenet":
            kwargs["dropout_aux"] = 0.0
    m = torchvision.models.__dict__[arch](weights=None, num_classes=NUM_CLASSES, **kwargs)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):  # non-trivial affine and running statistics
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
                mod.num_batches_tracked.fill_(3)
    return m


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-300)).item()


def reference(arch, size, outdir):
    """Everything in float64 (the reference values) plus, for each value, PyTorch's own float32 error against
    float64 ("err.<key>"). Train-mode batch norm on a batch of 2 at 64x64 normalises over as few as 8 values per
    channel in the last stage, and float32 rounding flips the ReLU masks of pre-activations within ~1e-7 of zero;
    both make some train-mode values ill-conditioned in float32 (PyTorch's own float32 error reaches 1e-1 there)."""
    m = build(arch, size)
    torch.save(m.state_dict(), os.path.join(outdir, arch + ".pth"))
    m64 = copy.deepcopy(m).double()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    out = {"x": x}

    def put(key, v32, v64):
        out[key] = v64.detach().double().clone()
        out["err." + key] = torch.tensor([rel(v32.detach(), v64.detach())], dtype=torch.float64)

    m.eval()
    m64.eval()
    with torch.no_grad():
        put("y_eval", m(x), m64(x.double()))
    m.train()
    m64.train()
    y, y64 = m(x), m64(x.double())
    aux, aux64 = {}, {}  # auxiliary classifiers' train-mode logits, by tlengine's name of their module
    if arch == "googlenet":
        # torchvision 0.14's GoogLeNetOutputs has the names swapped: _forward returns (x, aux2, aux1) and forward
        # unpacks it as (x, aux1, aux2), so the field aux_logits2 holds module aux1's output (checked by hand).
        y, aux = y.logits, {"aux1": y.aux_logits2, "aux2": y.aux_logits1}
        y64, aux64 = y64.logits, {"aux1": y64.aux_logits2, "aux2": y64.aux_logits1}
    elif arch == "inception_v3" and m.aux_logits:
        y, aux = y.logits, {"AuxLogits": y.aux_logits}
        y64, aux64 = y64.logits, {"AuxLogits": y64.aux_logits}
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    outs, outs64, grads = [y], [y64], [gy]
    for i, name in enumerate(sorted(aux)):
        g = torch.randn(aux[name].shape, generator=torch.Generator().manual_seed(10 + i))
        put("aux." + name, aux[name], aux64[name])
        out["gy_aux." + name] = g
        outs.append(aux[name])
        outs64.append(aux64[name])
        grads.append(g)
    torch.autograd.backward(outs, grads)
    torch.autograd.backward(outs64, [g.double() for g in grads])
    put("y_train", y, y64)
    out["gy"] = gy
    for (name, p), (_, p64) in zip(m.named_parameters(), m64.named_parameters()):
        g, g64 = p.grad.flatten(), p64.grad.flatten()
        stride = 1 if g.numel() <= SAMPLE else math.ceil(g.numel() / SAMPLE)
        put("grad." + name, g[::stride], g64[::stride])
        out["gradstride." + name] = torch.tensor([stride], dtype=torch.int32)
    for (name, b), (_, b64) in zip(m.named_buffers(), m64.named_buffers()):
        if b.dtype.is_floating_point:
            put("after." + name, b, b64)
    write_safetensors(os.path.join(outdir, arch + "_ref.safetensors"), out)


class Exploit:  # a pickle that would run code if loaded unsafely
    def __reduce__(self):
        return (os.system, ("touch " + os.environ.get("TL_EXPLOIT_MARKER", "/tmp/tl_exploit_marker"),))


def variants(outdir):
    r18 = build("resnet18").state_dict()
    d121 = build("densenet121").state_dict()
    torch.save(r18, os.path.join(outdir, "resnet18_plain.pth"))
    torch.save({"epoch": 3, "state_dict": collections.OrderedDict(("module." + k, v) for k, v in r18.items())},
               os.path.join(outdir, "resnet18_ddp_checkpoint.pth"))
    legacy = collections.OrderedDict()
    for k, v in d121.items():  # torchvision's downloadable DenseNet weights use "norm.1" for "norm1"
        if k.endswith("num_batches_tracked"):
            continue  # and predate num_batches_tracked
        for old, new in ((".norm1.", ".norm.1."), (".norm2.", ".norm.2."), (".conv1.", ".conv.1."),
                         (".conv2.", ".conv.2.")):
            if "denselayer" in k:
                k = k.replace(old, new)
        legacy[k] = v
    torch.save({"model": legacy}, os.path.join(outdir, "densenet121_legacy.pth"))
    torch.save(d121, os.path.join(outdir, "densenet121_plain.pth"))
    torch.save({"weights": Exploit()}, os.path.join(outdir, "exploit.pth"))
    with open(os.path.join(outdir, "garbage.pth"), "wb") as f:
        f.write(b"this is not a pytorch file" * 10)
    torch.save({"fc.weight": torch.zeros(3, 3), "some_layer.bias": torch.zeros(3)},
               os.path.join(outdir, "unknown_arch.pth"))
    torch.save(torch.nn.Linear(3, 3), os.path.join(outdir, "whole_module.pth"))


def compare(a, b):
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    if list(sa.keys()) != list(sb.keys()):
        print("key lists differ")
        return 1
    for k in sa:
        if sa[k].dtype != sb[k].dtype or sa[k].shape != sb[k].shape or not torch.equal(sa[k], sb[k]):
            print("tensor differs:", k, sa[k].dtype, sb[k].dtype, tuple(sa[k].shape), tuple(sb[k].shape))
            return 1
    # torchvision must accept it strictly
    arch = "resnet18"
    torchvision.models.__dict__[arch](weights=None, num_classes=NUM_CLASSES).load_state_dict(sb, strict=True)
    print("identical:", len(sa), "tensors")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "--variants":
        os.makedirs(sys.argv[2], exist_ok=True)
        variants(sys.argv[2])
    elif sys.argv[1] == "--compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        os.makedirs(sys.argv[3], exist_ok=True)
        reference(sys.argv[1], int(sys.argv[2]), sys.argv[3])
