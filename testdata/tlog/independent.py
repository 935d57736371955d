#!/usr/bin/env python3
"""Writes independent.json: vectors for custody's own formats, made with Python's
`cryptography` package and a direct transcription of the RFC 6962 definitions, independently
of the Rust code that must verify them.

    python3 testdata/tlog/independent.py > testdata/tlog/independent.json

Deterministic: fixed seeds, fixed timestamp (Ed25519 signatures are deterministic).
"""
import base64
import hashlib
import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def b64(b):
    return base64.b64encode(b).decode()


def sha256(b):
    return hashlib.sha256(b).digest()


def leaf(d):
    return sha256(b"\x00" + d)


def node(l, r):
    return sha256(b"\x01" + l + r)


def k_of(n):  # largest power of two < n
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(d):  # RFC 6962 2.1, over leaf hashes
    if len(d) == 0:
        return sha256(b"")
    if len(d) == 1:
        return d[0]
    k = k_of(len(d))
    return node(mth(d[:k]), mth(d[k:]))


def path(m, d):  # RFC 6962 2.1.1
    if len(d) == 1:
        return []
    k = k_of(len(d))
    if m < k:
        return path(m, d[:k]) + [mth(d[k:])]
    return path(m - k, d[k:]) + [mth(d[:k])]


def subproof(m, d, b):  # RFC 6962 2.1.2
    if m == len(d):
        return [] if b else [mth(d)]
    k = k_of(len(d))
    if m <= k:
        return subproof(m, d[:k], b) + [mth(d[k:])]
    return subproof(m - k, d[k:], False) + [mth(d[:k])]


def key(seed):
    sk = Ed25519PrivateKey.from_private_bytes(seed)
    pk = sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return sk, pk


def key_id(name, typ, pk):
    return sha256(name.encode() + b"\n" + bytes([typ]) + pk)[:4]


def vkey(name, typ, pk):
    return f"{name}+{key_id(name, typ, pk).hex()}+{b64(bytes([typ]) + pk)}"


def sig_line(name, kid, sig):
    return f"\u2014 {name} {b64(kid + sig)}"


def main():
    origin = "custody.example/log"
    log_sk, log_pk = key(bytes([0x42]) * 32)
    log_kid = key_id(origin, 0x01, log_pk)
    w_name = "witness.example/w1"
    w_sk, w_pk = key(bytes(range(32)))
    w_kid = key_id(w_name, 0x04, w_pk)

    entries = [f"custody event {i}".encode() for i in range(7)]
    leaves = [leaf(e) for e in entries]

    def checkpoint(size):
        text = f"{origin}\n{size}\n{b64(mth(leaves[:size]))}\n"
        return text + "\n" + sig_line(origin, log_kid, log_sk.sign(text.encode())) + "\n"

    new_text = f"{origin}\n7\n{b64(mth(leaves))}\n"
    ts = 1679315147
    cosig_msg = f"cosignature/v1\ntime {ts}\n{new_text}".encode()
    cosig = ts.to_bytes(8, "big") + w_sk.sign(cosig_msg)

    start, size, index = 3, 4, 5
    batch = leaves[start:start + size]
    batch_root = mth(batch)
    statement = f"custody-receipt/v1\n{origin}\n{start} {size}\n{b64(batch_root)}\n"
    receipt = {
        "origin": origin,
        "index": index,
        "leaf_hash": b64(leaves[index]),
        "batch_root": b64(batch_root),
        "batch_path": [b64(h) for h in path(index - start, batch)],
        "batch_start": start,
        "batch_size": size,
        "signature": sig_line(origin, log_kid, log_sk.sign(statement.encode())),
    }
    doc = {
        "source": "testdata/tlog/independent.py (Python cryptography + RFC 6962 definitions)",
        "log_vkey": vkey(origin, 0x01, log_pk),
        "log_skey": f"PRIVATE+KEY+{origin}+{log_kid.hex()}+{b64(bytes([0x01]) + bytes([0x42]) * 32)}",
        "entries": [e.decode() for e in entries],
        "checkpoint_3": checkpoint(3),
        "checkpoint_7": checkpoint(7),
        "inclusion_5_in_7": {"index": 5, "size": 7, "proof": [b64(h) for h in path(5, leaves)]},
        "consistency_3_to_7": {"old_size": 3, "size": 7, "proof": [b64(h) for h in subproof(3, leaves, True)]},
        "witness_vkey": vkey(w_name, 0x04, w_pk),
        "witness_timestamp": ts,
        "cosigned_checkpoint_7": checkpoint(7) + sig_line(w_name, w_kid, cosig) + "\n",
        "receipt_statement": statement,
        "receipt": receipt,
    }
    print(json.dumps(doc, indent=1, ensure_ascii=False))


main()
