#!/usr/bin/env python3
"""Independent DSSE + in-toto v1 + SLSA provenance v1 check, written from the specs alone.

Usage: verify_dsse.py ENVELOPE.json KEYID PUBLIC_KEY_BASE64 ARTIFACT...

- DSSE (github.com/secure-systems-lab/dsse, envelope.md and protocol.md): the signature is
  over PAE(payloadType, payload) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body, with
  LEN the ASCII decimal byte length; payload and sig are standard base64.
- in-toto Statement v1: _type https://in-toto.io/Statement/v1, subject[].digest.sha256.
- SLSA provenance v1: predicateType https://slsa.dev/provenance/v1 with buildDefinition and
  runDetails.builder.id.
Each ARTIFACT file's SHA-256 must be a subject digest. Exits non-zero naming the failure.
"""
import base64
import hashlib
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def pae(payload_type: bytes, payload: bytes) -> bytes:
    return b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type, len(payload), payload)


def fail(msg: str) -> None:
    print(f"verify_dsse: {msg}", file=sys.stderr)
    sys.exit(1)


def main() -> None:
    env_path, keyid, pub_b64, *artifacts = sys.argv[1:]
    env = json.load(open(env_path, encoding="utf-8"))
    if set(env) - {"payload", "payloadType", "signatures"}:
        fail(f"unexpected envelope fields {sorted(set(env))}")
    if env["payloadType"] != "application/vnd.in-toto+json":
        fail(f"payloadType is {env['payloadType']!r}")
    payload = base64.b64decode(env["payload"], validate=True)
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(pub_b64, validate=True))
    sigs = [s for s in env["signatures"] if s.get("keyid") == keyid]
    if not sigs:
        fail(f"no signature with keyid {keyid!r}")
    try:
        key.verify(base64.b64decode(sigs[0]["sig"], validate=True), pae(env["payloadType"].encode(), payload))
    except InvalidSignature:
        fail("signature does not verify over the PAE")
    st = json.loads(payload)
    if st.get("_type") != "https://in-toto.io/Statement/v1":
        fail(f"_type is {st.get('_type')!r}")
    if st.get("predicateType") != "https://slsa.dev/provenance/v1":
        fail(f"predicateType is {st.get('predicateType')!r}")
    pred = st["predicate"]
    if "buildType" not in pred["buildDefinition"] or "id" not in pred["runDetails"]["builder"]:
        fail("provenance lacks buildDefinition.buildType or runDetails.builder.id")
    digests = {s["digest"].get("sha256") for s in st["subject"]}
    for a in artifacts:
        h = hashlib.sha256(open(a, "rb").read()).hexdigest()
        if h not in digests:
            fail(f"{a} (sha256 {h}) is not a subject of the statement")
    print(f"ok: {len(st['subject'])} subject(s), builder {pred['runDetails']['builder']['id']}")


if __name__ == "__main__":
    main()
