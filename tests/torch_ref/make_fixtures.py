#!/usr/bin/env python3
"""Writes the PyTorch reference fixtures the C++ tests compare against.

Each tests/torch_ref/fx_<name>.py defines build() -> dict[str, torch.Tensor] (or build(outdir) when it also
writes files of its own there, as fx_pth.py does); its tensors are written to <outdir>/<name>.safetensors
(float64 stays float64, integer tensors become int32, the rest float32).
Run with Debian's PyTorch: /usr/bin/python3 tests/torch_ref/make_fixtures.py build/fixtures
"""
import importlib.util
import inspect
import json
import os
import struct
import sys

import torch

DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.bfloat16: "BF16", torch.float16: "F16", torch.int32: "I32"}


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        if t.dtype in (torch.int64, torch.int16, torch.int8, torch.uint8, torch.bool):
            t = t.to(torch.int32)  # labels and indices
        elif t.dtype not in DTYPES:
            t = t.to(torch.float32)
        data = t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else "fixtures"
    os.makedirs(outdir, exist_ok=True)
    here = os.path.dirname(os.path.abspath(__file__))
    torch.use_deterministic_algorithms(True)
    names = sorted(f[3:-3] for f in os.listdir(here) if f.startswith("fx_") and f.endswith(".py"))
    for name in names:
        spec = importlib.util.spec_from_file_location("fx_" + name, os.path.join(here, "fx_" + name + ".py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        torch.manual_seed(0)
        tensors = mod.build(outdir) if inspect.signature(mod.build).parameters else mod.build()
        write_safetensors(os.path.join(outdir, name + ".safetensors"), tensors)
        print(f"{name}: {len(tensors)} tensors")


if __name__ == "__main__":
    main()
