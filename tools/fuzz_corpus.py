#!/usr/bin/env python3
"""Writes the seed corpora of the libFuzzer targets in tests/fuzz (run with /usr/bin/python3: numpy, PIL).

    fuzz_corpus.py OUT_DIR   ->  OUT_DIR/image/*, OUT_DIR/safetensors/*, OUT_DIR/npy/*, OUT_DIR/pth/*

Small, valid files of every kind each reader accepts (and a few it must refuse), so that the fuzzer starts from
the formats' real structure. The checkpoint seeds come from the checkpoint_seeds tool (real optimizer state).
"""
import io
import json
import os
import struct
import sys
import zlib

import numpy as np
from PIL import Image


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def image_seeds(out):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (7, 5, 3), dtype=np.uint8), "RGB")
    grey = rgb.convert("L")
    seeds = {
        "rgb.png": (rgb, "PNG", {}),
        "grey.png": (grey, "PNG", {}),
        "la.png": (rgb.convert("LA"), "PNG", {}),
        "rgba.png": (rgb.convert("RGBA"), "PNG", {}),
        "palette.png": (rgb.convert("P", palette=Image.ADAPTIVE, colors=8), "PNG", {}),
        "interlaced.png": (rgb, "PNG", {"interlace": 1}),
        "mono.png": (grey.convert("1"), "PNG", {}),
        "rgb.jpg": (rgb, "JPEG", {"quality": 80}),
        "grey.jpg": (grey, "JPEG", {"quality": 80}),
        "progressive.jpg": (rgb, "JPEG", {"quality": 80, "progressive": True}),
        "subsampled.jpg": (rgb.resize((17, 9)), "JPEG", {"quality": 50, "subsampling": 2}),
        "cmyk.jpg": (rgb.convert("CMYK"), "JPEG", {"quality": 80}),
        "rgb.bmp": (rgb, "BMP", {}),
        "grey.bmp": (grey, "BMP", {}),
        "palette.bmp": (rgb.convert("P", palette=Image.ADAPTIVE, colors=16), "BMP", {}),
        "rgba.bmp": (rgb.convert("RGBA"), "BMP", {}),
        "rgb.ppm": (rgb, "PPM", {}),
        "grey.pgm": (grey, "PPM", {}),
    }
    for name, (img, fmt, kw) in seeds.items():
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        write(os.path.join(out, name), buf.getvalue())
    # 16-bit PNG and an ASCII PPM (P3), which PIL does not write.
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 65536, (4, 3), dtype=np.uint16).astype(np.int32), "I").save(buf, "PNG")
    write(os.path.join(out, "grey16.png"), buf.getvalue())
    write(os.path.join(out, "ascii.ppm"), b"P3\n2 2\n255\n255 0 0  0 255 0\n0 0 255  9 9 9\n")
    write(os.path.join(out, "ascii.pgm"), b"P2\n# comment\n3 1\n15\n0 7 15\n")
    # A zero-length IDAT chunk before the image data (legal; the findings of 2026-12-01: stb_image copied 0 bytes to
    # a null pointer there), the file cut short after such a chunk's header, and the data split across two chunks.
    with open(os.path.join(out, "rgb.png"), "rb") as f:
        png = f.read()
    data_at = png.index(b"IDAT") - 4
    n = struct.unpack(">I", png[data_at:data_at + 4])[0]
    data = png[data_at + 8:data_at + 8 + n]
    write(os.path.join(out, "empty_idat.png"), png[:data_at] + png_chunk(b"IDAT", b"") + png[data_at:])
    write(os.path.join(out, "split_idat.png"), png[:data_at] + png_chunk(b"IDAT", data[:n // 2]) +
          png_chunk(b"IDAT", data[n // 2:]) + png[data_at + 12 + n:])
    write(os.path.join(out, "cut_empty_idat.png"), png[:data_at] + png_chunk(b"IDAT", b"")[:8])


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def safetensors_bytes(tensors, metadata=None):
    """The safetensors layout: u64 header length, JSON header, data (as the tlengine writer, aligned to 8)."""
    header, data, offset = {}, b"", 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dtype, arr) in tensors.items():
        raw = arr.tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(len(text) + 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def safetensors_seeds(out):
    rng = np.random.default_rng(1)
    f32 = rng.standard_normal((2, 3)).astype("<f4")
    seeds = {
        "one.safetensors": safetensors_bytes({"w": ("F32", f32)}),
        "dtypes.safetensors": safetensors_bytes({
            "a": ("F64", rng.standard_normal(3).astype("<f8")),
            "b": ("F16", rng.standard_normal(4).astype("<f2")),
            "c": ("BF16", (rng.integers(0, 65536, 2, dtype=np.uint32).astype("<u2"))),
            "d": ("I32", rng.integers(-5, 5, (2, 2)).astype("<i4")),
            "e": ("I64", rng.integers(-5, 5, 1).astype("<i8")),
        }),
        "meta.safetensors": safetensors_bytes({"x": ("F32", f32[:1])}, {"format": "pt", "value:epoch": "3"}),
        "scalar_empty.safetensors": safetensors_bytes({"s": ("F32", np.float32(1.5).reshape(())),
                                                       "z": ("F32", np.zeros((0, 4), "<f4"))}),
        "empty.safetensors": safetensors_bytes({}),
    }
    for name, data in seeds.items():
        write(os.path.join(out, name), data)


def npy_seeds(out):
    rng = np.random.default_rng(2)
    arrays = {
        "f4_2d.npy": rng.standard_normal((2, 3)).astype("<f4"),
        "f8_4d.npy": rng.standard_normal((1, 3, 2, 2)).astype("<f8"),
        "scalar.npy": np.float32(2.5),
        "empty.npy": np.zeros((0, 3), "<f4"),
        "i4.npy": np.arange(4, dtype="<i4"),  # refused: dtype
        "fortran.npy": np.asfortranarray(rng.standard_normal((2, 3)).astype("<f4")),  # refused: order
    }
    for name, a in arrays.items():
        buf = io.BytesIO()
        np.save(buf, a)
        write(os.path.join(out, name), buf.getvalue())
    buf = io.BytesIO()
    np.lib.format.write_array(buf, rng.standard_normal(5).astype("<f4"), version=(2, 0))
    write(os.path.join(out, "v2.npy"), buf.getvalue())


def pth_seeds(out):
    """Small state dicts as torch.save writes them: zip and legacy layouts, several dtypes, a view, shared storage,
    a checkpoint dict with a nested state dict."""
    import collections
    import torch
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, generator=g)
    sd = collections.OrderedDict([("fc.weight", w), ("fc.bias", torch.zeros(3)),
                                  ("bn.num_batches_tracked", torch.tensor(5)),
                                  ("half", w.half()), ("double", w.double()[:, 1:]), ("t", w.t()),
                                  ("shared", w[1])])
    for name, obj in (("state", sd), ("ckpt", {"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3})):
        torch.save(obj, os.path.join(out, name + "_zip.pth"))
        torch.save(obj, os.path.join(out, name + "_legacy.pth"), _use_new_zipfile_serialization=False)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    root = sys.argv[1]
    for kind, fn in (("image", image_seeds), ("safetensors", safetensors_seeds), ("npy", npy_seeds),
                     ("pth", pth_seeds)):
        d = os.path.join(root, kind)
        os.makedirs(d, exist_ok=True)
        fn(d)
        print(f"{kind}: {len(os.listdir(d))} seeds in {d}")


if __name__ == "__main__":
    main()
