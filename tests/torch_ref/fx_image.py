"""PIL reference for image decoding edge cases (tests/test_data.cpp, DataDecode.* and DataTransforms.Jpeg*).

Writes test images into <fixture dir>/image_files and returns what PIL (Pillow 9.4, Debian) makes of them:
  decode|<file>        Image.open(file).convert("RGB") as uint8 HWC (what torchvision's default loader gives)
  pil_refuses|<file>   1 when PIL raises OSError on convert("RGB") (truncated files), else 0
  pil_libjpeg_turbo    1 when this PIL decodes JPEG with libjpeg-turbo (then tlengine's JPEG pixels equal PIL's)
  val|<file>           torchvision's eval pipeline Resize(256), CenterCrop(224), ToTensor, Normalize of a
                       500x375 JPEG (float32 CHW): JPEG file to network input, end to end
Cases: JPEG subsampling 4:2:0 / 4:2:2 / 4:4:4 at odd sizes (fancy upsampling at the edges), progressive,
quality 100 and 30, CMYK (Adobe), EXIF orientation 6, a missing end-of-image marker, a file cut after its last
row, corrupt entropy data, truncation; PNG 16-bit grey / grey+alpha / RGB / RGBA, 1/2/4-bit grey, a gAMA
chunk, damaged chunks and zlib data, empty IDAT chunks, a zlib bomb. PNG files are written by hand (zlib) so the
bit depth and chunks are exactly what the case needs.
YCCK, arithmetic-coded and restart-marker JPEGs cannot be written by PIL; tests/test_data.cpp writes them with
libjpeg and asks tests/torch_ref/pil_decode.py for PIL's pixels.
"""
import io
import os
import struct
import sys
import zlib

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image, features

OUTDIR = sys.argv[1] if len(sys.argv) > 1 else "fixtures"
IMG_DIR = os.path.join(OUTDIR, "image_files")


def photo(h, w, seed, channels=3):
    """A smooth, photo-like array with an edge and noise (uint8)."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.zeros((h, w, channels))
    for c in range(channels):
        fx, fy, ph = rng.uniform(0.02, 0.2), rng.uniform(0.02, 0.2), rng.uniform(0, 6.28)
        out[..., c] = 128 + 100 * np.sin(x * fx + y * fy + ph)
    out[: h // 2, : w // 3] = rng.uniform(0, 255, channels)  # a sharp-edged block: chroma errors show here
    out += rng.normal(0, 15, out.shape)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(pixels, bit_depth, colour_type, extra_chunks=()):
    """A PNG of `pixels` (H x W [x C], integers already in range for bit_depth), filter 0 on every row."""
    chunk = _chunk

    h, w = pixels.shape[:2]
    flat = pixels.reshape(h, -1)
    rows = []
    for r in flat:
        if bit_depth == 16:
            raw = r.astype(">u2").tobytes()
        elif bit_depth == 8:
            raw = r.astype(np.uint8).tobytes()
        else:  # 1, 2, 4 bits: pack samples big-end first
            per = 8 // bit_depth
            padded = np.zeros(-(-len(r) // per) * per, dtype=np.int64)
            padded[: len(r)] = r
            groups = padded.reshape(-1, per)
            shifts = (8 - bit_depth * (np.arange(per) + 1)).astype(np.int64)
            raw = np.sum(groups << shifts, axis=1).astype(np.uint8).tobytes()
        rows.append(b"\x00" + raw)
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0)
    body = b"".join(chunk(k, d) for k, d in extra_chunks)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + body + chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) +
            chunk(b"IEND", b""))


def jpeg_bytes(im, **kw):
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


def write_files():
    files = {}

    def put(name, data):
        path = os.path.join(IMG_DIR, name)
        with open(path, "wb") as f:
            f.write(data)
        files[name] = path

    rgb = Image.fromarray(photo(51, 75, 1))
    put("photo_500x375.jpg", jpeg_bytes(Image.fromarray(photo(375, 500, 14)), quality=85))
    put("sub420_75x51.jpg", jpeg_bytes(rgb, quality=85, subsampling=2))
    put("sub422_75x51.jpg", jpeg_bytes(rgb, quality=85, subsampling=1))
    put("sub444_75x51.jpg", jpeg_bytes(rgb, quality=85, subsampling=0))
    put("q100_420_33x17.jpg", jpeg_bytes(Image.fromarray(photo(17, 33, 2)), quality=100))
    put("q30_420_64x48.jpg", jpeg_bytes(Image.fromarray(photo(48, 64, 3)), quality=30))
    progressive = jpeg_bytes(Image.fromarray(photo(43, 61, 4)), quality=90, subsampling=1, progressive=True)
    put("progressive_422_61x43.jpg", progressive)
    put("grey_progressive_41x39.jpg", jpeg_bytes(Image.fromarray(photo(39, 41, 5)[..., 0], "L"), quality=80,
                                                 progressive=True))
    put("cmyk_53x29.jpg", jpeg_bytes(Image.fromarray(photo(29, 53, 6, channels=4), "CMYK"), quality=90))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    put("exif_orient6_64x40.jpg", jpeg_bytes(Image.fromarray(photo(40, 64, 7)), quality=90, exif=exif.tobytes()))

    base = jpeg_bytes(Image.fromarray(photo(48, 80, 8)), quality=90)
    assert base[-2:] == b"\xff\xd9"
    put("no_eoi_80x48.jpg", base[:-2])  # PIL refuses it: libjpeg looks past the last block's bits for a marker
    # After the last row, a comment segment cut short where the end marker should be: libjpeg only runs out of
    # data in jpeg_finish_decompress, and PIL decodes the file.
    put("cut_after_rows_80x48.jpg", base[:-2] + b"\xff\xfe\x00\x10ab")
    sos = base.index(b"\xff\xda")
    corrupt = bytearray(base)
    for k in range(5):  # damage the entropy-coded data; libjpeg warns, PIL decodes (garbage blocks) anyway
        at = sos + 200 + 97 * k
        corrupt[at] = 0x5A if corrupt[at] != 0x5A else 0x3C
    put("corrupt_data_80x48.jpg", bytes(corrupt))
    put("truncated_80x48.jpg", base[: sos + (len(base) - sos) // 2])
    put("truncated_progressive_61x43.jpg", progressive[:-300])

    g16 = (np.arange(37 * 23).reshape(23, 37) * 71 % 65536).astype(np.int64)
    g16[0, :5] = [0, 1, 254, 255, 256]  # around PIL's clip
    put("grey16_37x23.png", png_bytes(g16, 16, 0))
    rgb16 = np.random.RandomState(9).randint(0, 65536, (19, 31, 3))
    put("rgb16_31x19.png", png_bytes(rgb16, 16, 2))
    put("rgba16_17x13.png", png_bytes(np.random.RandomState(10).randint(0, 65536, (13, 17, 4)), 16, 6))
    put("greyalpha16_15x11.png", png_bytes(np.random.RandomState(11).randint(0, 65536, (11, 15, 2)), 16, 4))
    for bits in (1, 2, 4):
        g = np.random.RandomState(12 + bits).randint(0, 1 << bits, (9, 21))
        put(f"grey{bits}bit_21x9.png", png_bytes(g, bits, 0))
    # gAMA 1.0 (100000): a viewer applying gamma would brighten the mid-tones a lot; PIL ignores it.
    put("gamma1_40x30.png", png_bytes(photo(30, 40, 13), 8, 2, [(b"gAMA", struct.pack(">I", 100000))]))
    png_damage_cases(put, png_bytes(photo(30, 40, 15), 8, 2, [(b"gAMA", struct.pack(">I", 45455))]))
    return files


def png_damage_cases(put, good):
    """Damaged PNGs: PIL refuses a bad CRC before the image data and a damaged zlib stream, and accepts a bad
    IDAT CRC, a missing IEND and junk after the image data. The zlib bomb (16x16 pixels, 24 MB of zeros) PIL
    accepts, as it stops reading once the rows are full; tlengine refuses it (tested separately)."""
    def find(b, kind):
        pos = 8
        while b[pos + 4:pos + 8] != kind:
            pos += 12 + struct.unpack(">I", b[pos:pos + 4])[0]
        return pos, struct.unpack(">I", b[pos:pos + 4])[0]

    def fix_crc(b, pos, n):
        b[pos + 8 + n:pos + 12 + n] = struct.pack(">I", zlib.crc32(bytes(b[pos + 4:pos + 8 + n])) & 0xFFFFFFFF)

    b = bytearray(good)
    pos, n = find(b, b"gAMA")
    b[pos + 8 + n] ^= 1
    put("bad_crc_gama_40x30.png", bytes(b))
    b = bytearray(good)
    pos, n = find(b, b"IDAT")
    b[pos + 8 + n // 2] ^= 0x10
    fix_crc(b, pos, n)
    put("bad_deflate_40x30.png", bytes(b))
    b = bytearray(good)
    b[pos + 8 + n] ^= 1
    put("idat_crc_wrong_40x30.png", bytes(b))
    put("no_iend_40x30.png", good[:-12])
    put("junk_after_data_40x30.png", good[:-12] + b"\x00\x00\x00\x00IEN_\x00\x00\x00\x00")
    # Zero-length IDAT chunks are legal and PIL skips them; one before the data made stb_image copy 0 bytes to a
    # null pointer (undefined behaviour, found by fuzzing). With only an empty IDAT PIL reports a truncated file.
    data_at, _ = find(bytearray(good), b"IDAT")
    empty = _chunk(b"IDAT", b"")
    put("empty_idat_first_40x30.png", good[:data_at] + empty + good[data_at:])
    put("only_empty_idat_40x30.png", good[:data_at] + empty + _chunk(b"IEND", b""))
    rows = b"".join(b"\x00" + bytes(16 * 3) for _ in range(16)) + bytes(24 << 20)
    put("zlib_bomb_16x16.png", png_bytes(np.zeros((16, 16, 3), np.uint8), 8, 2)[:33] +
        _chunk(b"IDAT", zlib.compress(rows, 9)) + _chunk(b"IEND", b""))


def build():
    os.makedirs(IMG_DIR, exist_ok=True)
    out = {}
    for name, path in write_files().items():
        try:
            rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)
            out[f"decode|{name}"] = torch.from_numpy(rgb.copy())
            out[f"pil_refuses|{name}"] = torch.tensor([0], dtype=torch.int32)
        except OSError:
            out[f"pil_refuses|{name}"] = torch.tensor([1], dtype=torch.int32)
    val = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                     T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    out["pil_libjpeg_turbo"] = torch.tensor([int(bool(features.check_feature("libjpeg_turbo")))], dtype=torch.int32)
    out["val|photo_500x375.jpg"] = val(Image.open(os.path.join(IMG_DIR, "photo_500x375.jpg")).convert("RGB"))
    return out
