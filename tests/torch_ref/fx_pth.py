"""PyTorch .pth files for tests/test_pth.cpp, written to <fixtures>/pth/, and the values PyTorch saved in them
(returned: <fixtures>/pth.safetensors; int64 values as float64 so that they survive exactly).

Well-formed: a seeded torchvision resnet18 in the zip and legacy layouts; densenet121 with torchvision's legacy
key names ("norm.1") in the legacy layout, without num_batches_tracked (as densenet121-a639ec97.pth); every
dtype, a transposed view, a strided slice with an offset, an expanded (stride 0) view, two tensors sharing one
storage, a Parameter and a 0-d tensor ("misc", both layouts, pickle protocols 2 and 4); a DataParallel
checkpoint dict.
Hostile (both layouts where it matters): os.system and builtins.eval in __reduce__, a global outside the
list, a pickled nn.Module, a storage offset past the end, a stride reaching outside the storage, a stride-0
view of 2^40 elements, a zip bomb (a deflated entry expanding to 256 MiB) and a zip entry shorter than its
storage.
"""
import collections
import os
import zipfile

import torch
import torchvision

LEGACY = {"_use_new_zipfile_serialization": False}


class System:  # would create the marker if the file were unpickled unsafely
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, ("touch " + self.marker,))


class Eval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


class View:  # a tensor reference with a crafted offset / size / stride over a real storage
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride)

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args + (False, collections.OrderedDict()))


def expected(prefix, sd, out, rename=lambda k: k):
    for k, v in sd.items():
        v = v.detach()
        out[prefix + rename(k)] = v.double() if v.dtype == torch.int64 else v.clone()


def legacy_densenet_name(k):
    for old, new in ((".norm1.", ".norm.1."), (".conv1.", ".conv.1."), (".norm2.", ".norm.2."), (".conv2.", ".conv.2."),
                     (".relu1.", ".relu.1."), (".relu2.", ".relu.2.")):
        if "denselayer" in k:
            k = k.replace(old, new)
    return k


def misc():
    g = torch.Generator().manual_seed(5)
    base = torch.randn(10, generator=g)
    big = torch.randn(6, 8, generator=g)
    return collections.OrderedDict([
        ("f32", torch.randn(3, 4, generator=g)),
        ("f16", torch.randn(5, generator=g).half()),
        ("bf16", torch.randn(2, 3, generator=g).bfloat16()),
        ("f64", torch.randn(4, generator=g).double()),
        ("i64", torch.tensor([-(2 ** 40) - 3, 0, 7, 2 ** 50 + 1], dtype=torch.int64)),
        ("i32", torch.tensor([-(2 ** 31), 2 ** 31 - 1, 5], dtype=torch.int32)),
        ("i16", torch.tensor([-32768, 32767, -1], dtype=torch.int16)),
        ("i8", torch.tensor([-128, 127, -1], dtype=torch.int8)),
        ("u8", torch.tensor([0, 255, 128], dtype=torch.uint8)),
        ("bool", torch.tensor([True, False, True])),
        ("transposed", torch.randn(5, 7, generator=g).t()),
        ("sliced", big[2:, 1::3]),
        ("expanded", torch.randn(3, 1, generator=g).expand(3, 4)),
        ("shared_a", base[:6].view(2, 3)),
        ("shared_b", base[4:]),
        ("param", torch.nn.Parameter(torch.randn(3, generator=g))),
        ("scalar", torch.tensor(2.5)),
        ("empty", torch.zeros(0, 3)),
    ])


def rezip(src, dst, compress, replace=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if replace and info.filename.endswith(replace[0]):
                data = replace[1](data)
            zout.writestr(info.filename, data, compress_type=compress)


def build(outdir):
    d = os.path.join(outdir, "pth")
    os.makedirs(d, exist_ok=True)
    p = lambda name: os.path.join(d, name)  # noqa: E731
    out = {}

    torch.manual_seed(0)
    r18 = torchvision.models.resnet18(weights=None, num_classes=10).state_dict()
    torch.save(r18, p("resnet18_zip.pth"))
    torch.save(r18, p("resnet18_legacy.pth"), **LEGACY)
    expected("r18.", r18, out)
    ckpt = {"epoch": 3, "best_acc": 0.5, "arch": "resnet18",
            "state_dict": collections.OrderedDict(("module." + k, v) for k, v in r18.items())}
    torch.save(ckpt, p("resnet18_ddp_checkpoint.pth"))

    d121 = torchvision.models.densenet121(weights=None).state_dict()
    legacy = collections.OrderedDict((legacy_densenet_name(k), v) for k, v in d121.items()
                                     if not k.endswith("num_batches_tracked"))
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    torch.save(legacy, p("densenet121_legacy.pth"), **LEGACY)
    expected("d121.", {k: v for k, v in d121.items() if not k.endswith("num_batches_tracked")}, out)

    m = misc()
    torch.save(m, p("misc_zip.pth"))
    torch.save(m, p("misc_legacy.pth"), **LEGACY)
    torch.save(m, p("misc_p4_zip.pth"), pickle_protocol=4)  # FRAME, MEMOIZE, STACK_GLOBAL, SHORT_BINUNICODE
    torch.save(m, p("misc_p4_legacy.pth"), pickle_protocol=4, **LEGACY)
    expected("misc.", m, out)
    small = collections.OrderedDict([("a", torch.arange(6.0).view(2, 3).t()), ("b", torch.ones(2, dtype=torch.int64))])
    torch.save(small, p("small_zip.pth"))
    torch.save(small, p("small_legacy.pth"), **LEGACY)

    marker = p("exploit_ran")
    for layout, kw in (("zip", {}), ("legacy", LEGACY)):
        torch.save({"fc.weight": torch.zeros(2), "weights": System(marker)}, p(f"exploit_system_{layout}.pth"), **kw)
        torch.save({"fc.weight": torch.zeros(2), "x": Eval()}, p(f"exploit_eval_{layout}.pth"), **kw)
        four = torch.arange(4.0).storage()
        torch.save({"w": View(four, 100, (4,), (1,))}, p(f"offset_past_end_{layout}.pth"), **kw)
        torch.save({"w": View(four, 0, (2, 2), (4, 1))}, p(f"stride_outside_{layout}.pth"), **kw)
        torch.save({"w": View(four, 0, (2 ** 40,), (0,))}, p(f"expand_bomb_{layout}.pth"), **kw)
    torch.save({"fc.weight": torch.zeros(2), "counts": collections.Counter(a=1)}, p("global_counter.pth"))
    torch.save(torch.nn.Linear(3, 3), p("whole_module.pth"))

    torch.save({"w": torch.zeros(2 ** 26)}, p("bomb_src.pth"))  # 256 MiB of zeros
    rezip(p("bomb_src.pth"), p("zip_bomb.pth"), zipfile.ZIP_DEFLATED)
    os.remove(p("bomb_src.pth"))
    rezip(p("small_zip.pth"), p("short_entry.pth"), zipfile.ZIP_STORED, ("/data/0", lambda b: b[:-4]))
    rezip(p("small_zip.pth"), p("deflated_ok.pth"), zipfile.ZIP_DEFLATED)
    with open(p("not_weights.txt.pth"), "w") as f:
        f.write("<html><body>404 Not Found</body></html>\n")
    return out
