#!/usr/bin/env python3
"""Independent verifier for a transparency log served per the C2SP specs.

Written from the specifications alone, not from custody's source:

  * c2sp.org/signed-note      - note format, key IDs, Ed25519 signatures
  * c2sp.org/tlog-checkpoint  - checkpoint note text (origin, size, root)
  * c2sp.org/tlog-tiles       - tile / entry-bundle paths, widths and contents
  * RFC 6962 section 2.1      - Merkle Tree Hash (MTH), leaf/node hashing
  * RFC 9162 sections 2.1.3.2 and 2.1.4.2 - inclusion / consistency proof verification

The verifier key uses the note verifier-key text form
`<name>+<8 hex digits of key ID>+<base64(0x01 || 32-byte Ed25519 public key)>`.

Usage: verify_log.py BASE_URL [--key VKEY] [--old-checkpoint FILE]

BASE_URL is the server (e.g. http://127.0.0.1:8750); the log prefix `/log` is appended
unless BASE_URL already ends with it (see --log-prefix). Exit status: 0 all checks
passed, 1 a check failed, 2 usage, network or environment error.

Needs only the standard library plus the `cryptography` package (Ed25519).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import concurrent.futures
import gzip
import hashlib
import json
import random
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
except ImportError:  # pragma: no cover - environment problem, reported clearly
    sys.stderr.write(
        "verify_log.py: the Python `cryptography` package is required for Ed25519 "
        "(pip install cryptography)\n"
    )
    sys.exit(2)

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT  # 256 hashes per full tile (c2sp.org/tlog-tiles)
HASH_SIZE = 32
EM_DASH = "\u2014"


class VerifyError(Exception):
    """A check against the specifications failed. The message names the check."""


class EnvError(Exception):
    """Usage, network or environment problem: not a verdict about the log."""


# --------------------------------------------------------------------------------------
# Output


class Report:
    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.passed: list[str] = []
        self.warnings: list[str] = []
        self.notes: dict[str, str] = {}

    def ok(self, msg: str) -> None:
        self.passed.append(msg)
        print(f"ok    {msg}", flush=True)

    def info(self, msg: str) -> None:
        if self.verbose:
            print(f"      {msg}", flush=True)

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)
        print(f"WARN  {msg}", flush=True)

    def note(self, topic: str, msg: str) -> None:
        """A SHOULD-level observation (caching, compression): printed once per topic, never fatal."""
        if topic not in self.notes:
            self.notes[topic] = msg
            print(f"NOTE  {msg}", flush=True)


# --------------------------------------------------------------------------------------
# HTTP


class Http:
    def __init__(self, prefix: str, timeout: float) -> None:
        self.prefix = prefix.rstrip("/")
        self.timeout = timeout
        self.requests = 0

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        """GET <prefix>/<path>; returns (status, lower-cased headers, decoded body)."""
        url = f"{self.prefix}/{path.lstrip('/')}"
        # tlog-tiles: "Clients SHOULD include `gzip` and `identity` in their Accept-Encoding".
        req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip, identity"})
        self.requests += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                status, headers, body = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            status, headers, body = e.code, e.headers, e.read()
        except (urllib.error.URLError, OSError) as e:
            raise EnvError(f"GET {url}: {e}") from e
        hdrs = {k.lower(): v for k, v in headers.items()}
        enc = hdrs.get("content-encoding", "identity").strip().lower()
        if enc == "gzip":
            try:
                body = gzip.decompress(body)
            except OSError as e:
                raise VerifyError(f"GET {url}: Content-Encoding gzip but body is not gzip: {e}") from e
        elif enc not in ("", "identity"):
            raise VerifyError(f"GET {url}: unrequested Content-Encoding {enc!r}")
        return status, hdrs, body

    def get_ok(self, path: str, what: str) -> tuple[dict[str, str], bytes]:
        status, hdrs, body = self.get(path)
        if status != 200:
            snippet = body[:200].decode("utf-8", "replace")
            raise VerifyError(f"{what}: GET {self.prefix}/{path} returned HTTP {status}: {snippet!r}")
        return hdrs, body


def check_content_type(report: Report, hdrs: dict[str, str], expected: str, what: str, spec: str) -> None:
    got = hdrs.get("content-type")
    if re.sub(r"\s+", "", got or "").lower() != re.sub(r"\s+", "", expected).lower():
        report.warn(f"{what}: Content-Type is {got!r}, {spec} says {expected!r}")


# --------------------------------------------------------------------------------------
# Signed notes (c2sp.org/signed-note)


def b64decode_strict(s: str, what: str) -> bytes:
    """Standard base64 (RFC 4648 section 4), padding required, no stray characters."""
    if not re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", s) or len(s) % 4 != 0:
        raise VerifyError(f"{what}: not standard padded base64: {s!r}")
    try:
        return base64.b64decode(s, validate=True)
    except binascii.Error as e:
        raise VerifyError(f"{what}: bad base64 {s!r}: {e}") from e


def key_name_valid(name: str) -> bool:
    # "Key names MUST be non-empty and MUST NOT contain any Unicode spaces or plus (U+002B)."
    return bool(name) and "+" not in name and not any(c.isspace() for c in name)


def ed25519_key_id(name: str, pub: bytes) -> bytes:
    # signed-note: key ID = SHA-256(key name || 0x0A || 0x01 || 32-byte Ed25519 public key)[:4]
    return hashlib.sha256(name.encode("utf-8") + b"\x0a" + b"\x01" + pub).digest()[:4]


class VerifierKey:
    def __init__(self, text: str) -> None:
        text = text.strip()
        parts = text.split("+", 2)  # the name and hex ID hold no '+'; the base64 may
        if len(parts) != 3:
            raise VerifyError(f"verifier key {text!r}: want <name>+<hex key id>+<base64 key>")
        name, hex_id, b64 = parts
        if not key_name_valid(name):
            raise VerifyError(f"verifier key: invalid key name {name!r} (signed-note: no spaces or '+')")
        if not re.fullmatch(r"[0-9a-fA-F]{8}", hex_id):
            raise VerifyError(f"verifier key: key ID {hex_id!r} is not 8 hex digits")
        raw = b64decode_strict(b64, "verifier key")
        if len(raw) != 33 or raw[0] != 0x01:
            raise VerifyError(
                f"verifier key: want base64(0x01 || 32-byte Ed25519 key) (33 bytes), got {len(raw)} bytes"
                + (f" with type byte 0x{raw[0]:02x}" if raw else "")
            )
        self.name = name
        self.pub = raw[1:]
        self.key_id = bytes.fromhex(hex_id)
        want = ed25519_key_id(name, self.pub)
        if want != self.key_id:
            raise VerifyError(
                f"verifier key: key ID {hex_id} does not match SHA-256(name || 0x0A || 0x01 || pubkey)[:4] "
                f"= {want.hex()} (c2sp.org/signed-note, Ed25519 signatures)"
            )
        self.key = Ed25519PublicKey.from_public_bytes(self.pub)
        self.text = text

    def __str__(self) -> str:
        return f"{self.name}+{self.key_id.hex()}"


def open_note(note: bytes, key: VerifierKey, what: str) -> str:
    """Verify a signed note against `key`; returns the note text (with its final newline)."""
    try:
        s = note.decode("utf-8")
    except UnicodeDecodeError as e:
        raise VerifyError(f"{what}: signed notes MUST be valid UTF-8: {e}") from e
    for i, c in enumerate(s):
        if ord(c) < 0x20 and c != "\n":
            raise VerifyError(
                f"{what}: control character U+{ord(c):04X} at offset {i} (signed-note forbids all but newline)"
            )
    # "the text is separated from the signatures by the last empty line in the note."
    sep = s.rfind("\n\n")
    if sep < 0:
        raise VerifyError(f"{what}: no blank line separating text from signatures")
    text, sig_block = s[: sep + 1], s[sep + 2 :]
    if not sig_block.endswith("\n"):
        raise VerifyError(f"{what}: signature block does not end in a newline")
    lines = sig_block[:-1].split("\n")
    seen = []
    verified = 0
    for line in lines:
        # em dash (U+2014), space, key name, space, base64-encoded signature, newline
        if not line.startswith(EM_DASH + " "):
            raise VerifyError(f"{what}: malformed signature line {line!r} (want '\u2014 <name> <base64>')")
        rest = line[2:].split(" ")
        if len(rest) != 2 or not key_name_valid(rest[0]):
            raise VerifyError(f"{what}: malformed signature line {line!r}")
        name, b64 = rest
        raw = b64decode_strict(b64, f"{what}: signature by {name}")
        if len(raw) < 5:
            raise VerifyError(f"{what}: signature by {name} shorter than 4-byte key ID + signature")
        key_id, sig = raw[:4], raw[4:]
        seen.append(f"{name}+{key_id.hex()}")
        # "Verifiers MUST ignore signatures from unknown keys, even if they share a name or ID
        # (but not both) with a known key. If the key name and ID match a known key, verifiers
        # MUST verify the signature."
        if name != key.name or key_id != key.key_id:
            continue
        if len(sig) != 64:
            raise VerifyError(f"{what}: Ed25519 signature by {key} is {len(sig)} bytes, want 64")
        try:
            key.key.verify(sig, text.encode("utf-8"))
        except InvalidSignature:
            raise VerifyError(
                f"{what}: Ed25519 signature by trusted key {key} does not verify over the note text "
                "(signed-note: 'If a signature from a known key fails to verify, clients SHOULD reject the whole note')"
            ) from None
        verified += 1
    if verified == 0:
        raise VerifyError(
            f"{what}: no signature from the trusted key {key}; signatures present: {', '.join(seen) or 'none'} "
            "(signed-note: 'If no signature from a known key verifies successfully, clients MUST reject the note')"
        )
    return text


class Checkpoint:
    def __init__(self, raw: bytes, key: VerifierKey, what: str) -> None:
        self.raw = raw
        text = open_note(raw, key, what)
        # tlog-checkpoint: at least three non-empty lines: origin, tree size, root hash, [extensions]
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise VerifyError(f"{what}: checkpoint text has {len(lines)} lines, want at least 3")
        for i, line in enumerate(lines):
            if not line:
                raise VerifyError(f"{what}: checkpoint line {i + 1} is empty")
        self.origin, size, root = lines[0], lines[1], lines[2]
        self.extensions = lines[3:]
        if not re.fullmatch(r"0|[1-9][0-9]*", size):
            raise VerifyError(f"{what}: tree size {size!r} is not ASCII decimal without leading zeroes")
        self.size = int(size)
        self.root = b64decode_strict(root, f"{what}: root hash")
        if len(self.root) != HASH_SIZE:
            raise VerifyError(f"{what}: root hash is {len(self.root)} bytes, want 32 (SHA-256)")


# --------------------------------------------------------------------------------------
# Merkle trees (RFC 6962 section 2.1)


def sha256(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def leaf_hash(entry: bytes) -> bytes:
    return sha256(b"\x00" + entry)


def node_hash(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01" + left + right)


def mth(leaves: list[bytes], lo: int = 0, hi: int | None = None) -> bytes:
    """MTH(D[lo:hi]) given the leaf hashes of D (RFC 6962 section 2.1)."""
    if hi is None:
        hi = len(leaves)
    n = hi - lo
    if n == 0:
        return sha256(b"")  # MTH({}) = SHA-256()
    if n == 1:
        return leaves[lo]  # MTH({d(0)}) = SHA-256(0x00 || d(0)), already a leaf hash
    k = 1 << ((n - 1).bit_length() - 1)  # the largest power of two smaller than n
    return node_hash(mth(leaves, lo, lo + k), mth(leaves, lo + k, hi))


def verify_inclusion(index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes) -> None:
    """RFC 9162 section 2.1.3.2, step by step."""
    if index >= size:
        raise VerifyError(f"leaf_index {index} >= tree_size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise VerifyError("inclusion path longer than the tree is deep (sn reached 0)")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerifyError("inclusion path too short (sn is not 0 at the end)")
    if r != root:
        raise VerifyError(f"inclusion path leads to {r.hex()}, not the root {root.hex()}")


def verify_consistency(first: int, second: int, first_hash: bytes, second_hash: bytes, proof: list[bytes]) -> None:
    """RFC 9162 section 2.1.4.2, step by step (first == second and first == 0 handled first)."""
    if first > second:
        raise VerifyError(f"first size {first} > second size {second}")
    if first == second:
        if proof:
            raise VerifyError("consistency proof between equal sizes must be empty")
        if first_hash != second_hash:
            raise VerifyError("equal sizes but different root hashes")
        return
    if first == 0:
        if proof:
            raise VerifyError("consistency proof from the empty tree must be empty")
        return
    path = list(proof)
    if not path:
        raise VerifyError("consistency_path is empty")
    if first & (first - 1) == 0:  # first is an exact power of 2
        path.insert(0, first_hash)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise VerifyError("consistency path longer than needed (sn reached 0)")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if fr != first_hash:
        raise VerifyError(f"consistency path yields old root {fr.hex()}, want {first_hash.hex()}")
    if sr != second_hash:
        raise VerifyError(f"consistency path yields new root {sr.hex()}, want {second_hash.hex()}")
    if sn != 0:
        raise VerifyError("consistency path too short (sn is not 0 at the end)")


# --------------------------------------------------------------------------------------
# Tiles (c2sp.org/tlog-tiles)


def encode_index(n: int) -> str:
    """Zero-padded 3-digit path elements, all but the last prefixed with 'x'."""
    groups = []
    while True:
        groups.append(n % 1000)
        n //= 1000
        if n == 0:
            break
    groups.reverse()
    return "/".join([f"x{g:03d}" for g in groups[:-1]] + [f"{groups[-1]:03d}"])


def tile_path(level: int | str, n: int, width: int) -> str:
    suffix = "" if width == TILE_WIDTH else f".p/{width}"
    return f"tile/{level}/{encode_index(n)}{suffix}"


def tiles_at_level(size: int, level: int) -> list[tuple[int, int]]:
    """(index, width) of every tile at `level` for a tree of `size`: full ones, then the partial one."""
    count = size // TILE_WIDTH**level  # hashes at this level
    out = [(n, TILE_WIDTH) for n in range(count // TILE_WIDTH)]
    # "The partial tile at level l for a tree of size s has floor(s / 256**l) mod 256 entries."
    if count % TILE_WIDTH:
        out.append((count // TILE_WIDTH, count % TILE_WIDTH))
    return out


class LogVerifier:
    def __init__(self, http: Http, key: VerifierKey, report: Report, args: argparse.Namespace) -> None:
        self.http = http
        self.key = key
        self.report = report
        self.args = args

    def fetch_checkpoint(self) -> Checkpoint:
        hdrs, body = self.http.get_ok("checkpoint", "checkpoint")
        check_content_type(self.report, hdrs, "text/plain; charset=utf-8", "checkpoint", "tlog-tiles")
        m = re.search(r"max-age=(\d+)", hdrs.get("cache-control", ""))
        if m and int(m.group(1)) > 10:
            self.report.note(
                "cache-checkpoint",
                f"checkpoint Cache-Control max-age={m.group(1)}; "
                "tlog-tiles: 'headers SHOULD prevent caching beyond a few seconds'",
            )
        return Checkpoint(body, self.key, "checkpoint")

    def fetch_tile(self, level: int | str, n: int, width: int, what: str) -> bytes:
        path = tile_path(level, n, width)
        status, hdrs, body = self.http.get(path)
        if status == 404 and width < TILE_WIDTH:
            # tlog-tiles: logs "MAY delete any partial tile once the corresponding full tile is
            # available"; clients "MAY fetch the full tile ... as a fallback". Only legitimate if
            # the log has grown past this tile since our checkpoint.
            lvl = 0 if level == "entries" else int(level)
            latest = self.fetch_checkpoint()
            if latest.size >= (n + 1) * TILE_WIDTH ** (lvl + 1):
                self.report.info(f"{path}: partial gone, log grew to {latest.size}; using the full tile")
                status, hdrs, body = self.http.get(tile_path(level, n, TILE_WIDTH))
                if status == 200:
                    if level == "entries":
                        body = _truncate_bundle(body, width, tile_path(level, n, TILE_WIDTH))
                    else:
                        body = body[: width * HASH_SIZE]
        if status != 200:
            raise VerifyError(
                f"{what}: GET {self.http.prefix}/{path} returned HTTP {status} "
                "(tlog-tiles: 'Logs MUST serve partial tiles corresponding to tree sizes for which a "
                "checkpoint was produced')"
                if width < TILE_WIDTH
                else f"{what}: GET {self.http.prefix}/{path} returned HTTP {status}"
            )
        check_content_type(self.report, hdrs, "application/octet-stream", path, "tlog-tiles")
        cache = hdrs.get("cache-control", "")
        m = re.search(r"max-age=(\d+)", cache)
        if "no-cache" in cache or "no-store" in cache or not m or int(m.group(1)) < 86400:
            kind = "partial" if width < TILE_WIDTH else "full"
            self.report.note(
                f"cache-{kind}",
                f"{kind} tiles are served with Cache-Control {cache!r} (e.g. {path}); tlog-tiles: "
                "'This endpoint is immutable, so its caching headers SHOULD be long-lived'",
            )
        if level == "entries" and "content-encoding" not in hdrs:
            self.report.note(
                "gzip",
                "entry bundles are not compressed although gzip was accepted; tlog-tiles: "
                "'Entry bundles SHOULD be compressed at the HTTP layer'",
            )
        return body

    def run(self) -> int:
        r = self.report
        cp = self.fetch_checkpoint()
        r.ok(
            f"checkpoint signed by {self.key}: origin={cp.origin!r} size={cp.size} root={cp.root.hex()}"
            + (f" extensions={cp.extensions}" if cp.extensions else "")
        )
        if cp.origin != self.key.name:
            r.warn(
                f"checkpoint origin {cp.origin!r} differs from key name {self.key.name!r} "
                "(tlog-checkpoint: SHOULD match)"
            )
        if cp.size == 0:
            if cp.root != sha256(b""):
                raise VerifyError("checkpoint: empty tree but root is not SHA-256() (RFC 6962 MTH({}))")
            r.ok("empty tree: root is SHA-256 of the empty string")
            return 0

        # Level 0: hash tiles and entry bundles, every one of them.
        leaves: list[bytes] = []
        entries = 0
        for n, width in tiles_at_level(cp.size, 0):
            tile = self.fetch_tile(0, n, width, "level-0 hash tile")
            if len(tile) != width * HASH_SIZE:
                raise VerifyError(
                    f"{tile_path(0, n, width)}: {len(tile)} bytes, want {width} hashes = {width * HASH_SIZE} bytes"
                )
            hashes = [tile[i : i + HASH_SIZE] for i in range(0, len(tile), HASH_SIZE)]
            bundle = self.fetch_tile("entries", n, width, "entry bundle")
            items = split_bundle(bundle, width, tile_path("entries", n, width))
            for i, (entry, h) in enumerate(zip(items, hashes)):
                idx = n * TILE_WIDTH + i
                if leaf_hash(entry) != h:
                    raise VerifyError(
                        f"entry {idx}: SHA-256(0x00 || entry) = {leaf_hash(entry).hex()} but level-0 tile "
                        f"{tile_path(0, n, width)} holds {h.hex()} (tlog-tiles: 'Each entry in a bundle hashes to "
                        "the corresponding entry in the corresponding level 0 Merkle Tree tile')"
                    )
            leaves.extend(hashes)
            entries += len(items)
        r.ok(f"{entries} entries in {len(tiles_at_level(cp.size, 0))} bundle(s) hash to their level-0 tile hashes")

        root = mth(leaves)
        if root != cp.root:
            raise VerifyError(
                f"root: RFC 6962 MTH of the {len(leaves)} level-0 hashes is {root.hex()}, "
                f"checkpoint says {cp.root.hex()}"
            )
        r.ok(f"RFC 6962 MTH over all {len(leaves)} leaves equals the checkpoint root")

        # Higher levels: each hash is the MTH of a full tile at the level below.
        below = leaves
        level = 1
        while cp.size // TILE_WIDTH**level > 0:
            here: list[bytes] = []
            tiles = tiles_at_level(cp.size, level)
            for n, width in tiles:
                tile = self.fetch_tile(level, n, width, f"level-{level} hash tile")
                if len(tile) != width * HASH_SIZE:
                    raise VerifyError(f"{tile_path(level, n, width)}: {len(tile)} bytes, want {width * HASH_SIZE}")
                here.extend(tile[i : i + HASH_SIZE] for i in range(0, len(tile), HASH_SIZE))
            for j, h in enumerate(here):
                want = mth(below, j * TILE_WIDTH, (j + 1) * TILE_WIDTH)
                # Cross-check against the spec's formula on the leaves directly.
                span = TILE_WIDTH**level
                if want != h or mth(leaves, j * span, (j + 1) * span) != h:
                    raise VerifyError(
                        f"level-{level} hash {j}: tile holds {h.hex()}, but MTH(D[{j * span}:{(j + 1) * span}]) "
                        f"(the MTH of its 256 children) is {want.hex()} (tlog-tiles: "
                        "'MTH(D[(n * 256 + i) * 256**l : (n * 256 + i + 1) * 256**l])')"
                    )
            r.ok(
                f"level {level}: {len(tiles)} tile(s) {[tile_path(level, n, w) for n, w in tiles]}, "
                f"each of {len(here)} hash(es) is the MTH of its 256 children"
            )
            below = here
            level += 1

        self.check_inclusion(cp, leaves)
        self.check_extra_sizes(cp, leaves)
        if self.args.old_checkpoint:
            self.check_old_checkpoint(cp, leaves)
        return cp.size

    def inclusion(self, index: int, size: int, leaves: list[bytes], root: bytes) -> None:
        path = f"proof/inclusion?index={index}&size={size}"
        status, _, body = self.http.get(path)
        if status != 200:
            raise VerifyError(f"inclusion proof {index}@{size}: HTTP {status}: {body[:200]!r}")
        proof = parse_proof(body, {"index": index, "size": size}, f"inclusion proof {index}@{size}")
        try:
            verify_inclusion(index, size, leaves[index], proof, root)
        except VerifyError as e:
            raise VerifyError(f"inclusion proof {index}@{size} (RFC 9162 2.1.3.2): {e}") from None

    def check_inclusion(self, cp: Checkpoint, leaves: list[bytes]) -> None:
        size = cp.size
        if size <= 200:
            indexes = list(range(size))
        else:
            rng = random.Random(self.args.seed)
            edges = {0, 1, size - 1, size - 2, size // 2}
            edges |= {b + d for b in range(TILE_WIDTH, size, TILE_WIDTH) for d in (-1, 0, 1)}
            edges = {i for i in edges if 0 <= i < size}
            rest = [i for i in range(size) if i not in edges]
            indexes = sorted(edges | set(rng.sample(rest, min(len(rest), max(0, self.args.sample - len(edges))))))
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda i: self.inclusion(i, size, leaves, cp.root), indexes))
        self.report.ok(
            f"inclusion proofs verify (RFC 9162 2.1.3.2) for {len(indexes)} of {size} indexes"
            + ("" if len(indexes) == size else f" (seed {self.args.seed})")
        )

    def consistency(self, first: int, second: int, first_hash: bytes, second_hash: bytes) -> None:
        path = f"proof/consistency?from={first}&to={second}"
        status, _, body = self.http.get(path)
        if status != 200:
            raise VerifyError(f"consistency proof {first}->{second}: HTTP {status}: {body[:200]!r}")
        proof = parse_proof(body, {"old_size": first, "size": second}, f"consistency proof {first}->{second}")
        try:
            verify_consistency(first, second, first_hash, second_hash, proof)
        except VerifyError as e:
            raise VerifyError(f"consistency proof {first}->{second} (RFC 9162 2.1.4.2): {e}") from None

    def check_extra_sizes(self, cp: Checkpoint, leaves: list[bytes]) -> None:
        """Proofs against smaller, unsigned tree sizes, checked against locally computed roots.

        No spec obliges a log to serve these; a refusal is only noted, a wrong proof fails."""
        size = cp.size
        sizes = sorted({s for s in (1, 2, 3, 7, 8, 255, 256, 257, size // 2, size - 1) if 0 < s < size})
        served = 0
        for m in sizes:
            status, _, _ = self.http.get(f"proof/consistency?from={m}&to={size}")
            if status != 200:
                self.report.info(f"no consistency proof served for unsigned size {m} (HTTP {status}); not required")
                continue
            self.consistency(m, size, mth(leaves, 0, m), cp.root)
            for i in sorted({0, m // 2, m - 1}):
                self.inclusion(i, m, leaves, mth(leaves, 0, m))
            served += 1
        if served:
            self.report.ok(
                f"consistency and inclusion proofs for {served} smaller tree sizes {sizes} verify against MTH"
            )

    def check_old_checkpoint(self, cp: Checkpoint, leaves: list[bytes]) -> None:
        fname = self.args.old_checkpoint
        try:
            with open(fname, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise EnvError(f"--old-checkpoint {fname}: {e}") from e
        old = Checkpoint(raw, self.key, f"old checkpoint {fname}")
        self.report.ok(f"old checkpoint signed by {self.key}: size={old.size} root={old.root.hex()}")
        if old.origin != cp.origin:
            raise VerifyError(f"old checkpoint origin {old.origin!r} differs from current {cp.origin!r}")
        if old.size > cp.size:
            raise VerifyError(f"old checkpoint size {old.size} is larger than the current {cp.size}: the log shrank")
        local = mth(leaves, 0, old.size)
        if local != old.root:
            raise VerifyError(
                f"old checkpoint root {old.root.hex()} is not the MTH of the first {old.size} served entries "
                f"({local.hex()}): the log rewrote history"
            )
        self.report.ok(f"old root equals the MTH of the first {old.size} served entries")
        if old.size in (0, cp.size):
            verify_consistency(old.size, cp.size, old.root, cp.root, [])
            self.report.ok(f"old size {old.size}: consistent with {cp.size} without a proof")
            return
        self.consistency(old.size, cp.size, old.root, cp.root)
        self.report.ok(f"consistency proof {old.size} -> {cp.size} verifies (RFC 9162 2.1.4.2)")


def split_bundle(bundle: bytes, width: int, path: str) -> list[bytes]:
    """Entry bundles: 'sequences of big-endian uint16 length-prefixed log entries'."""
    items, off = [], 0
    while off < len(bundle):
        if off + 2 > len(bundle):
            raise VerifyError(f"{path}: truncated uint16 length prefix at byte {off}")
        n = int.from_bytes(bundle[off : off + 2], "big")
        off += 2
        if off + n > len(bundle):
            raise VerifyError(f"{path}: entry {len(items)} claims {n} bytes, only {len(bundle) - off} remain")
        items.append(bundle[off : off + n])
        off += n
    if len(items) != width:
        raise VerifyError(f"{path}: bundle holds {len(items)} entries, want {width} (its width)")
    return items


def _truncate_bundle(full: bytes, width: int, path: str) -> bytes:
    items = split_bundle(full, TILE_WIDTH, path)[:width]
    return b"".join(len(e).to_bytes(2, "big") + e for e in items)


def parse_proof(body: bytes, expect: dict[str, int], what: str) -> list[bytes]:
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise VerifyError(f"{what}: not JSON: {e}: {body[:200]!r}") from e
    if not isinstance(doc, dict):
        raise VerifyError(f"{what}: want a JSON object, got {doc!r}")
    for k, v in expect.items():
        if doc.get(k) != v:
            raise VerifyError(f"{what}: field {k!r} is {doc.get(k)!r}, requested {v}")
    proof = doc.get("proof")
    if not isinstance(proof, list) or not all(isinstance(p, str) for p in proof):
        raise VerifyError(f"{what}: 'proof' must be a list of base64 strings, got {proof!r}")
    out = []
    for i, p in enumerate(proof):
        h = b64decode_strict(p, f"{what}: proof[{i}]")
        if len(h) != HASH_SIZE:
            raise VerifyError(f"{what}: proof[{i}] is {len(h)} bytes, want 32")
        out.append(h)
    return out



# --------------------------------------------------------------------------------------
# Self-test against published vectors, so a verdict on a log is not a verdict on this file.

# RFC 6962 reference leaves and roots (the certificate-transparency test suite's MTH vectors).
_RFC6962_LEAVES = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
_RFC6962_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# golang.org/x/mod/sumdb/note's documented example note and verifier key.
_GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
_GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
_GO_SIG = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="


def _rfc6962_path(m: int, d: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 6962 section 2.1.1, used only to exercise the verifier."""
    n = len(d)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    return _rfc6962_path(m, d[:k]) + [mth(d[k:])] if m < k else _rfc6962_path(m - k, d[k:]) + [mth(d[:k])]


def _rfc6962_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) of RFC 6962 section 2.1.2, used only to exercise the verifier."""
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return _rfc6962_subproof(m, d[:k], b) + [mth(d[k:])]
    return _rfc6962_subproof(m - k, d[k:], False) + [mth(d[:k])]


def _must_fail(f, what: str) -> None:
    try:
        f()
    except VerifyError:
        return
    raise VerifyError(f"self-test: {what} was accepted")


def self_test() -> None:
    leaves = [leaf_hash(bytes.fromhex(x)) for x in _RFC6962_LEAVES]
    for n, want in enumerate(_RFC6962_ROOTS, start=1):
        if mth(leaves[:n]).hex() != want:
            raise VerifyError(f"self-test: MTH of {n} RFC 6962 reference leaves is wrong")
    if mth([]) != hashlib.sha256(b"").digest():
        raise VerifyError("self-test: MTH of the empty tree is wrong")
    many = [leaf_hash(i.to_bytes(2, "big")) for i in range(40)]
    for n in range(1, len(many) + 1):
        d, root = many[:n], mth(many[:n])
        for i in range(n):
            p = _rfc6962_path(i, d)
            verify_inclusion(i, n, d[i], p, root)
            _must_fail(lambda: verify_inclusion(i, n, d[i], p + [root], root), "an over-long inclusion path")
            if p:
                _must_fail(lambda: verify_inclusion(i, n, d[i], p[:-1], root), "a short inclusion path")
                _must_fail(lambda: verify_inclusion(i, n, d[(i + 1) % n], p, root), "another leaf")
        for m in range(1, n):
            p = _rfc6962_subproof(m, d, True)
            verify_consistency(m, n, mth(d[:m]), root, p)
            _must_fail(lambda: verify_consistency(m, n, mth(d[:m]), root, p[:-1]), "a short consistency path")
            _must_fail(lambda: verify_consistency(m, n, mth(d[: m - 1]), root, p), "a wrong old root")
    key = VerifierKey(_GO_VKEY)
    note = f"{_GO_TEXT}\n{EM_DASH} PeterNeumann {_GO_SIG}\n"
    if open_note(note.encode(), key, "self-test note") != _GO_TEXT:
        raise VerifyError("self-test: the sumdb/note example note text was not returned")
    _must_fail(lambda: open_note(note.replace("answer", "Answer").encode(), key, "tampered"), "a tampered note")
    _must_fail(lambda: VerifierKey(_GO_VKEY.replace("c74f20a3", "c74f20a4")), "a key with a wrong key ID")
    if encode_index(1234067) != "x001/x234/067" or encode_index(5) != "005":
        raise VerifyError("self-test: tile index encoding differs from the tlog-tiles example")
    # tlog-tiles: size 70,000 is 273 full level-0 tiles + width 112, 1 full level-1 + width 17, level 2 width 1.
    shape = [tiles_at_level(70000, lvl) for lvl in range(3)]
    if [len(t) for t in shape] != [274, 2, 1] or [t[-1][1] for t in shape] != [112, 17, 1] or tiles_at_level(70000, 3):
        raise VerifyError("self-test: tile widths differ from the tlog-tiles size-70,000 example")
    if tiles_at_level(256, 0) != [(0, 256)] or tiles_at_level(256, 1) != [(0, 1)]:
        raise VerifyError("self-test: tile widths differ from the tlog-tiles size-256 example")

# --------------------------------------------------------------------------------------


def log_prefix(base: str, prefix: str) -> str:
    base = base.rstrip("/")
    prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
    if prefix and not urllib.parse.urlsplit(base).path.rstrip("/").endswith(prefix):
        base += prefix
    return base


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base_url", metavar="BASE_URL", nargs="?", help="server URL, e.g. http://127.0.0.1:8750")
    ap.add_argument(
        "--key", metavar="VKEY", help="trusted verifier key name+keyid+base64 (or @FILE); default: trust <prefix>/key"
    )
    ap.add_argument("--old-checkpoint", metavar="FILE", help="an earlier signed checkpoint to prove consistency from")
    ap.add_argument("--log-prefix", default="/log", help="log prefix under BASE_URL (default /log)")
    ap.add_argument("--sample", type=int, default=100, help="inclusion proofs to check when size > 200 (default 100)")
    ap.add_argument("--seed", type=int, default=None, help="seed for the inclusion sample (default: random)")
    ap.add_argument("--strict", action="store_true", help="treat warnings (e.g. Content-Type) as failures")
    ap.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds")
    ap.add_argument("--self-test", action="store_true", help="check this verifier against published vectors first")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.self_test:
        try:
            self_test()
        except VerifyError as e:
            print(f"FAIL  {e}", flush=True)
            return 1
        print("ok    self-test: RFC 6962 MTH vectors, RFC 9162 proof algorithms, sumdb/note example, tile shapes")
        if not args.base_url:
            return 0
    if not args.base_url:
        ap.error("BASE_URL is required unless --self-test is given alone")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 32)

    report = Report(args.verbose)
    http = Http(log_prefix(args.base_url, args.log_prefix), args.timeout)
    started = time.monotonic()
    print(f"verifying the log at {http.prefix}/", flush=True)
    try:
        _, served_key_raw = http.get_ok("key", "verifier key")
        try:
            served_key_text = served_key_raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise VerifyError(f"verifier key: /key is not UTF-8: {e}") from e
        if args.key:
            key_text = args.key
            if key_text.startswith("@"):
                try:
                    with open(key_text[1:], encoding="utf-8") as f:
                        key_text = f.read()
                except OSError as e:
                    raise EnvError(f"--key {args.key}: {e}") from e
            key = VerifierKey(key_text)
            if served_key_text != key.text:
                report.warn(f"served {http.prefix}/key {served_key_text!r} differs from the trusted --key {key.text!r}")
            else:
                report.ok(f"served verifier key matches the trusted --key {key}")
        else:
            key = VerifierKey(served_key_text)
            report.warn(f"no --key given: trusting the served key {key} (proves self-consistency only)")
        report.ok(f"verifier key {key}: key ID = SHA-256(name || 0x0A || 0x01 || pubkey)[:4]")

        size = LogVerifier(http, key, report, args).run()
        if args.strict and report.warnings:
            raise VerifyError(f"--strict: {len(report.warnings)} warning(s): " + "; ".join(report.warnings))
    except VerifyError as e:
        print(f"FAIL  {e}", flush=True)
        print(f"\nVERIFICATION FAILED after {len(report.passed)} passed check(s): {e}", file=sys.stderr)
        return 1
    except EnvError as e:
        print(f"ERROR {e}", flush=True)
        print(f"\nverify_log.py could not complete: {e}", file=sys.stderr)
        return 2
    elapsed = time.monotonic() - started
    print(
        f"\nOK: log of size {size} verified against c2sp.org/signed-note, tlog-checkpoint, tlog-tiles and "
        f"RFC 6962/9162: {len(report.passed)} checks passed, {len(report.warnings)} warning(s), "
        f"{len(report.notes)} note(s), "
        f"{http.requests} HTTP requests, {elapsed:.2f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
