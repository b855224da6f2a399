"""torchvision/PIL reference for the data pipeline (tests/test_data.cpp).

Writes test images with PIL into <fixture dir>/data_images (the fixture dir is make_fixtures.py's argument),
and returns what PIL and torchvision 0.14 make of them:
  decode|<file>            PIL Image.open(file).convert("RGB") as uint8 HWC
  <transform>|<file>       torchvision transforms of the PIL image (uint8 HWC, or float32 CHW after Normalize)
  resizedcrop|<file>|<k>   F.resized_crop(img, i, j, h, w, [224, 224]) with params resizedcrop_params|<file>|<k>
  rrc.*                    RandomResizedCrop.get_params with torch's draws replaced by scripted ones
  tree.*                   torchvision ImageFolder on a small class tree (data_tree)
"""
import math
import os
import sys

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
import torchvision.transforms.transforms as transforms_module
from PIL import Image
from torchvision.datasets import ImageFolder

OUTDIR = sys.argv[1] if len(sys.argv) > 1 else "fixtures"
IMG_DIR = os.path.join(OUTDIR, "data_images")
TREE_DIR = os.path.join(OUTDIR, "data_tree")
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def photo(h, w, seed):
    """A smooth, photo-like RGB array with some edges and noise."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.zeros((h, w, 3))
    for c in range(3):
        fx, fy, ph = rng.uniform(0.01, 0.08), rng.uniform(0.01, 0.08), rng.uniform(0, 6.28)
        out[..., c] = 128 + 90 * np.sin(x * fx + y * fy + ph)
    cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(5, max(6, min(h, w) / 2))
    out[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    out += rng.normal(0, 12, out.shape)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def write_images():
    os.makedirs(IMG_DIR, exist_ok=True)
    files = {}

    def save(name, im, **kw):
        path = os.path.join(IMG_DIR, name)
        im.save(path, **kw)
        files[name] = path

    save("rgb_517x389.png", Image.fromarray(photo(389, 517, 1)))
    save("rgb_97x61.png", Image.fromarray(photo(61, 97, 2)))
    save("rgb_300x300.png", Image.fromarray(photo(300, 300, 3)))
    save("rgb_640x150.png", Image.fromarray(photo(150, 640, 4)))
    save("rgb_229x1001.png", Image.fromarray(photo(1001, 229, 5)))
    save("grey_123x77.png", Image.fromarray(photo(77, 123, 6)[..., 0], "L"))
    la = np.stack([photo(50, 64, 7)[..., 0], photo(50, 64, 8)[..., 1]], axis=-1)
    save("greyalpha_64x50.png", Image.fromarray(la, "LA"))
    save("rgba_81x93.png", Image.fromarray(np.concatenate([photo(93, 81, 9), photo(93, 81, 10)[..., :1]], -1), "RGBA"))
    pal = Image.fromarray(photo(70, 90, 11)).quantize(colors=200)
    save("palette_90x70.png", pal)
    pal_t = Image.fromarray(photo(45, 33, 12)).quantize(colors=16)
    save("palette_trns_33x45.png", pal_t, transparency=3)
    save("rgb_151x97.bmp", Image.fromarray(photo(97, 151, 13)))
    save("palette_41x29.bmp", Image.fromarray(photo(29, 41, 14)).quantize(colors=50))
    save("rgb_q90_420_333x250.jpg", Image.fromarray(photo(250, 333, 15)), quality=90)
    save("rgb_q95_444_200x131.jpg", Image.fromarray(photo(131, 200, 16)), quality=95, subsampling=0)
    save("rgb_progressive_160x120.jpg", Image.fromarray(photo(120, 160, 17)), quality=90, progressive=True)
    save("grey_99x101.jpg", Image.fromarray(photo(101, 99, 18)[..., 1], "L"), quality=90)
    save("cmyk_120x80.jpg", Image.fromarray(photo(80, 120, 19)).convert("CMYK"), quality=95)
    save("rgb_77x55.ppm", Image.fromarray(photo(55, 77, 20)))
    return files


class _Scripted:
    """Stands in for torch's generator: each draw takes the next value of a fixed list of u in [0, 1)."""

    def __init__(self, draws):
        self.draws, self.used = list(draws), 0

    def next(self):
        u = self.draws[self.used]
        self.used += 1
        return u


class _FakeEmpty:
    def __init__(self, src):
        self.src = src

    def uniform_(self, lo, hi):
        lo, hi = float(lo), float(hi)
        return torch.tensor([lo + self.src.next() * (hi - lo)], dtype=torch.float32)


class _TorchShim:
    """The `torch` module as seen by torchvision.transforms.transforms, with empty().uniform_ and randint scripted."""

    def __init__(self, src):
        self.src = src

    def __getattr__(self, name):
        return getattr(torch, name)

    def empty(self, *args, **kwargs):
        return _FakeEmpty(self.src)

    def randint(self, low, high, size):
        return torch.tensor([low + int(math.floor(self.src.next() * (high - low)))])


def rrc_cases(out):
    rng = np.random.RandomState(42)
    k = 400
    draws = rng.uniform(0, 1, size=(k, 40))
    hw, scales, ratios, results = [], [], [], []
    for n in range(k):
        kind = n % 4
        if kind == 3:  # extreme aspect ratios and a narrow scale range: exercises the fallback
            h, w = (int(rng.randint(10, 60)), int(rng.randint(400, 900)))
            if n % 8 == 3:
                h, w = w, h
            scale = (0.85, 1.0)
        else:
            h, w = int(rng.randint(1, 700)), int(rng.randint(1, 700))
            scale = (0.08, 1.0) if kind != 2 else (0.3, 0.9)
        ratio = (3.0 / 4.0, 4.0 / 3.0) if kind != 1 else (0.5, 2.0)
        dummy = torch.zeros(1, h, w)
        saved = transforms_module.torch
        transforms_module.torch = _TorchShim(_Scripted(draws[n]))
        try:
            i, j, ch, cw = T.RandomResizedCrop.get_params(dummy, list(scale), list(ratio))
        finally:
            transforms_module.torch = saved
        hw.append([h, w])
        scales.append(scale)
        ratios.append(ratio)
        results.append([i, j, ch, cw])
    out["rrc.draws"] = torch.tensor(draws, dtype=torch.float64)
    out["rrc.hw"] = torch.tensor(hw, dtype=torch.int32)
    out["rrc.scale"] = torch.tensor(scales, dtype=torch.float64)
    out["rrc.ratio"] = torch.tensor(ratios, dtype=torch.float64)
    out["rrc.out"] = torch.tensor(results, dtype=torch.int32)


def hwc(im):
    return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy())


def transform_cases(out, files):
    normalize = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    rng = np.random.RandomState(7)
    for name in ["rgb_517x389.png", "rgb_97x61.png", "rgb_300x300.png", "rgb_640x150.png", "rgb_229x1001.png",
                 "grey_123x77.png"]:
        img = Image.open(files[name]).convert("RGB")
        w, h = img.size
        out[f"resize256|{name}"] = hwc(T.Resize(256)(img))
        out[f"resize100|{name}"] = hwc(T.Resize(100)(img))
        out[f"resize224x224|{name}"] = hwc(T.Resize((224, 224))(img))
        out[f"resize150x40|{name}"] = hwc(T.Resize((150, 40))(img))
        out[f"centercrop224|{name}"] = hwc(T.CenterCrop(224)(img))
        out[f"centercrop101x67|{name}"] = hwc(T.CenterCrop((101, 67))(img))
        out[f"hflip|{name}"] = hwc(F.hflip(img))
        out[f"totensor|{name}"] = normalize(img)
        out[f"val|{name}"] = normalize(T.CenterCrop(224)(T.Resize(256)(img)))
        params = [(0, 0, h, w)]  # the whole image
        for _ in range(4):
            ch, cw = int(rng.randint(1, h + 1)), int(rng.randint(1, w + 1))
            params.append((int(rng.randint(0, h - ch + 1)), int(rng.randint(0, w - cw + 1)), ch, cw))
        if h >= 224 and w >= 224:
            params.append((h - 224, w - 224, 224, 224))  # no resampling at all
        for k, (i, j, ch, cw) in enumerate(params):
            out[f"resizedcrop|{name}|{k}"] = hwc(F.resized_crop(img, i, j, ch, cw, [224, 224]))
            out[f"resizedcrop_params|{name}|{k}"] = torch.tensor([i, j, ch, cw], dtype=torch.int32)


def tree_case(out):
    """A class tree with nested folders, mixed-case extensions and non-image files, read by torchvision."""
    layout = {
        "dogs": ["b.jpg", "A.PNG", "a.png", "sub/z.jpeg", "sub-x.jpg", "sub/deeper/q.bmp", "readme.txt"],
        "Cats": ["1.JPG", "10.jpg", "2.jpg", "notes.md"],
        "birds": ["x.webp", "y.tif", "w.Jpeg"],
    }
    for cls, names in layout.items():
        for n in names:
            p = os.path.join(TREE_DIR, cls, n)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "wb") as f:
                f.write(b"not decoded by this test")
    ds = ImageFolder(TREE_DIR, loader=lambda p: p)
    rel = "\n".join(os.path.relpath(p, TREE_DIR) for p, _ in ds.samples).encode()
    out["tree.paths"] = torch.tensor(list(rel), dtype=torch.int32)
    out["tree.labels"] = torch.tensor([t for _, t in ds.samples], dtype=torch.int32)
    out["tree.classes"] = torch.tensor(list("\n".join(ds.classes).encode()), dtype=torch.int32)


def build():
    files = write_images()
    out = {}
    for name, path in files.items():
        out[f"decode|{name}"] = hwc(Image.open(path))
    transform_cases(out, files)
    rrc_cases(out)
    tree_case(out)
    return out
