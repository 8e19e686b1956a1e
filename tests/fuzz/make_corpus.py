#!/usr/bin/python3
"""Writes the seed corpora of the pickle, image_cache, image_folder and mat fuzz targets (tests/fuzz/corpus/).

Run with Debian's python3-torch: /usr/bin/python3 tests/fuzz/make_corpus.py (from anywhere). The inputs of
issue 21 that crashed xfer are among them (names starting with their target's mode byte, then 'issue_').
"""
import collections
import io
import os
import struct
import zipfile
import zlib

import torch

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    os.makedirs(os.path.join(HERE, target), exist_ok=True)
    with open(os.path.join(HERE, target, name), "wb") as f:
        f.write(data)


def save(obj):
    b = io.BytesIO()
    torch.save(obj, b)
    return b.getvalue()


def entries(archive):
    z = zipfile.ZipFile(io.BytesIO(archive))
    return {n.split("/", 1)[1]: z.read(n) for n in z.namelist()}


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(2, 2)
        self.k = 3

    def forward(self, x):
        return self.fc(x) * self.k


def pickles():
    # Mode 0: whole files, as torch.save writes them.
    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    write("pickle", "0_dict.pt", b"\x00" + save({"conv1.weight": w, "fc.bias": torch.tensor([1, 2])}))
    write("pickle", "0_views.pt", b"\x00" + save({"t": w.t(), "row": w[1], "half": torch.ones(3, dtype=torch.float16),
                                                   "mask": torch.tensor([True, False]), "scalar": torch.tensor(7.0)}))
    write("pickle", "0_ordered_dict.pt", b"\x00" + save(torch.nn.Linear(2, 2).state_dict()))
    # Mode 1: a data.pkl whose tensors use storage "0" of 16 floats (the target supplies 64 bytes).
    p = entries(save({"w": torch.zeros(16), "v": torch.zeros(16)[2:10:2]}))
    write("pickle", "1_sixteen_floats.pkl", b"\x01" + p["data.pkl"])
    write("pickle", "1_issue_tuple_of_empty_stack.pkl", b"\x01\x80\x02\x85.")
    # Mode 2: the pickles of a TorchScript archive, and the one-opcode data.pkl.
    b = io.BytesIO()
    torch.jit.save(torch.jit.script(Tiny()), b)
    s = entries(b.getvalue())
    write("pickle", "2_script_data.pkl", b"\x02" + s["data.pkl"])
    write("pickle", "2_script_constants.pkl", b"\x02" + s["constants.pkl"])
    write("pickle", "2_issue_tuple_of_empty_stack.pkl", b"\x02\x80\x02\x85.")


def cache(items, side=8):
    head = b"XFERIMC1" + struct.pack("<QQ", len(items), side)
    start = len(head) + sum(20 + len(p) for p, _, _, _ in items)
    records, pixels = b"", b""
    for path, h, w, px in items:
        records += struct.pack("<QIII", start + len(pixels), h, w, len(path)) + path
        pixels += px
    return head + records + pixels


def image_caches():
    write("image_cache", "valid.cache", cache([(b"/d/a/1.png", 2, 3, bytes(range(18))), (b"/d/a/bad.jpg", 0, 0, b""),
                                               (b"/d/b/2.png", 1, 1, b"\x01\x02\x03")]))
    # offset + h*w*3 overflowed 64 bits and pointed outside the mapping (a segfault).
    write("image_cache", "issue_overflowing_size.cache",
          b"XFERIMC1" + struct.pack("<QQ", 1, 8) + struct.pack("<QIII", 48, 0xFFFFFFFF, 0xFFFFFFFF, 4) + b"/a/b" + bytes(16))
    write("image_cache", "huge_count.cache", b"XFERIMC1" + struct.pack("<QQ", 2 ** 62, 8) + bytes(8))


def image_folders():
    # (op, arg) pairs, as image_folder_fuzz.cpp reads them.
    programs = {
        "plain": [(1, 0), (1, 1), (5, 0), (5, 1)],
        "issue_link_to_self_twice": [(1, 0), (1, 1), (2, 0), (2, 1 << 5)],
        "issue_link_to_parent": [(1, 0), (1, 1), (2, 1 << 2)],
        "link_to_other_class": [(1, 0), (1, 1), (2, 4 << 2)],
        "link_outside_root": [(1, 0), (2, 5 << 2)],
        "class_link_to_root": [(1, 0), (3, 0)],
        "sub_link_loop": [(1, 0), (5, 0), (6, 1 << 2)],
    }
    for name, ops in programs.items():
        write("image_folder", name, bytes(b for op in ops for b in op))


def mat_element(kind, data):
    """A MAT v5 data element: 8-byte tag, data padded to 8 bytes."""
    return struct.pack("<II", kind, len(data)) + data + bytes(-len(data) % 8)


def mat_matrix(name, mclass, dims, real=b"", real_kind=9, extra=b""):
    """A miMATRIX variable (class numbers: 6 double, 4 char, 1 cell, 2 struct, 9 uint8)."""
    body = (mat_element(6, struct.pack("<II", mclass, 0)) + mat_element(5, struct.pack(f"<{len(dims)}i", *dims)) +
            mat_element(1, name) + extra)
    if real:
        body += mat_element(real_kind, real)
    return mat_element(14, body)


def mats():
    header = b"MATLAB 5.0 MAT-file, written by make_corpus.py".ljust(116, b" ") + bytes(8) + struct.pack("<H", 0x0100) + b"IM"
    labels = mat_matrix(b"labels", 6, [1, 3], struct.pack("<3d", 1, 2, 102))
    write("mat", "double_row.mat", header + labels)
    write("mat", "compressed.mat", header + mat_element(15, zlib.compress(labels)))
    write("mat", "char.mat", header + mat_matrix(b"name", 4, [1, 3], "abc".encode("utf-16-le"), real_kind=4))
    cell = mat_matrix(b"", 6, [1, 1], struct.pack("<d", 7))
    write("mat", "cell.mat", header + mat_matrix(b"c", 1, [1, 1], extra=cell))
    fields = mat_element(5, struct.pack("<i", 4)) + mat_element(1, b"fnamclas")
    write("mat", "struct.mat", header + mat_matrix(b"s", 2, [1, 1], extra=fields + cell + cell))
    write("mat", "truncated.mat", (header + labels)[:-9])


if __name__ == "__main__":
    torch.manual_seed(0)
    pickles()
    image_caches()
    image_folders()
    mats()
