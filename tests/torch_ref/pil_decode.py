#!/usr/bin/env python3
"""PIL's pixels for images that tests write at run time (tests/test_image.cpp: JPEGs only libjpeg can write).

Usage: pil_decode.py IMAGE OUT.npy [IMAGE OUT.npy ...]
Writes Image.open(IMAGE).convert("RGB") as a float32 H x W x 3 array (integer values 0..255) to OUT.npy.
"""
import sys

import numpy as np
from PIL import Image


def main(args):
    if len(args) % 2 or not args:
        sys.exit(__doc__)
    for image, out in zip(args[0::2], args[1::2]):
        np.save(out, np.asarray(Image.open(image).convert("RGB"), dtype=np.float32))


if __name__ == "__main__":
    main(sys.argv[1:])
