"""A small PNG reader for screenshots (8-bit RGB/RGBA, not interlaced), so that the tests need no
imaging library: chunks, zlib, and the five row filters of the PNG specification."""
from __future__ import annotations

import struct
import zlib

import numpy as np


def read_png(path) -> np.ndarray:
    """height × width × 3 uint8 (alpha dropped)."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG")
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in (2, 6) or interlace:
        raise ValueError(f"{path}: only 8-bit RGB/RGBA without interlacing is read here")
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    rows = np.zeros((height, stride), dtype=np.uint8)
    previous = bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        _unfilter(kind, line, previous, bpp)
        rows[y] = np.frombuffer(bytes(line), dtype=np.uint8)
        previous = line
    return rows.reshape(height, width, bpp)[:, :, :3]


def _unfilter(kind: int, line: bytearray, prior, bpp: int) -> None:
    n = len(line)
    if kind == 0:
        return
    if kind == 2:
        line[:] = ((np.frombuffer(line, np.uint8).astype(np.uint16) + np.frombuffer(bytes(prior), np.uint8))
                   & 0xFF).astype(np.uint8).tobytes()
        return
    if kind == 1:
        for i in range(bpp, n):
            line[i] = (line[i] + line[i - bpp]) & 0xFF
        return
    if kind == 3:
        for i in range(n):
            left = line[i - bpp] if i >= bpp else 0
            line[i] = (line[i] + ((left + prior[i]) >> 1)) & 0xFF
        return
    if kind == 4:
        for i in range(n):
            a = line[i - bpp] if i >= bpp else 0
            b = prior[i]
            c = prior[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        return
    raise ValueError(f"unknown PNG filter {kind}")
