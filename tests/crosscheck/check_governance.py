#!/usr/bin/env python3
"""Cross-check governance records v1 (docs/governance.md) with independent implementations:
`cbor2` (CBOR) and `cryptography` (Ed25519).

1. tests/vectors/governance-v1.json (written by the Rust manager with coset): every record is
   decoded with cbor2, its Sig_structure rebuilt here and its signature verified under the root;
   every field is compared with the JSON; the kid is SHA-256(public key)[:8]; and every record is
   rebuilt here from its fields with the vectors' root seed, byte for byte (Ed25519 is
   deterministic, so equal bytes mean equal encodings).
2. tests/vectors/governance-v1-python.json: records built here (another fleet, another root) that
   the Rust device core must accept (`vectors_from_the_manager_and_python` in the core's tests).
   The file must equal what this script builds; `--write` rewrites it.
3. Root handovers (kind 3): tests/vectors/governance-handover-v1.json (written by the Rust
   manager: a record by the old root, the handover, a record by the new root) is checked as in 1,
   each record under the root that signed it, the handover's new kid being SHA-256(new key)[:8];
   tests/vectors/governance-handover-v1-python.json is built here and must be accepted in order
   by the Rust device core (`python_handover_vectors_are_accepted_by_the_device`).

Run from the repository root: python3 tests/crosscheck/check_governance.py
"""
import hashlib
import json
import sys

try:
    import cbor2
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )
except ImportError as e:  # pragma: no cover
    sys.exit(f"governance: missing Python package ({e}); pip install cbor2 cryptography")

RUST = "tests/vectors/governance-v1.json"
PYTHON = "tests/vectors/governance-v1-python.json"
RUST_HANDOVER = "tests/vectors/governance-handover-v1.json"
PYTHON_HANDOVER = "tests/vectors/governance-handover-v1-python.json"
AAD = b"fleetkey governance v1"
POP = b"fleetkey pop v1"


def fail(msg):
    sys.exit(f"governance: MISMATCH: {msg}")


def kid_of(pk: bytes) -> bytes:
    return hashlib.sha256(pk).digest()[:8]


def payload_map(r: dict) -> dict:
    """The payload map (labels as in docs/governance.md) of a record described in JSON."""
    m = {1: r["kind"], 2: r["fleet"], 3: r["not_before"], 4: r["not_after"]}
    if r["kind"] == 1:
        m.update({5: r["sequence"], 6: r["current"], 7: r["accepted"], 8: r["revoked"], 9: r["denied"]})
    elif r["kind"] == 2:
        m.update({
            10: r["grant_id"], 11: r["subject"], 12: r["role"],
            13: [bytes.fromhex(p) for p in r["scope"]], 14: bytes.fromhex(r["subject_key"]),
        })
    elif r["kind"] == 3:
        m.update({
            5: r["sequence"], 15: bytes.fromhex(r["new_root_key"]),
            16: bytes.fromhex(r["new_root_kid"]),
        })
    else:
        fail(f"unknown kind {r['kind']}")
    return m


def sign1(sk: Ed25519PrivateKey, kid: bytes, payload: bytes) -> bytes:
    protected = cbor2.dumps({1: -8, 4: kid}, canonical=True)
    tbs = cbor2.dumps(["Signature1", protected, AAD, payload])
    sig = sk.sign(tbs)
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, sig]))


def root_of(doc: dict, prefix: str):
    """(signing key, public key, kid) of the root named `<prefix>root_*` in a vectors document."""
    sk = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(doc[prefix + "root_seed"]))
    pk = bytes.fromhex(doc[prefix + "root_public_key"])
    if sk.public_key().public_bytes_raw() != pk:
        fail(f"{prefix}root seed and public key disagree")
    kid = bytes.fromhex(doc[prefix + "root_kid"])
    if kid != kid_of(pk):
        fail(f"{prefix}root kid is not SHA-256(public key)[:8]")
    return sk, pk, kid


def check_rust(doc: dict) -> int:
    if bytes.fromhex(doc["external_aad"]) != AAD:
        fail("external_aad")
    if "root_seed" in doc:
        roots = {None: root_of(doc, "")}
    else:
        roots = {"old": root_of(doc, "old_"), "new": root_of(doc, "new_")}
    n = 0
    for i, r in enumerate(doc["records"]):
        sk, pk, kid = roots[r.get("signer")]
        vk = Ed25519PublicKey.from_public_bytes(pk)
        if r["kind"] == 3:
            new_key = bytes.fromhex(r["new_root_key"])
            if bytes.fromhex(r["new_root_kid"]) != kid_of(new_key):
                fail(f"record {i}: the handover's new kid is not SHA-256(new key)[:8]")
            if "new" in roots and new_key != roots["new"][1]:
                fail(f"record {i}: the handover names another root than the new one")
        cose = bytes.fromhex(r["cose"])
        top = cbor2.loads(cose)
        if not isinstance(top, cbor2.CBORTag) or top.tag != 18 or len(top.value) != 4:
            fail(f"record {i}: not a tagged COSE_Sign1")
        protected, unprotected, payload, sig = top.value
        if cbor2.loads(protected) != {1: -8, 4: kid}:
            fail(f"record {i}: protected header {cbor2.loads(protected)!r}")
        if unprotected != {} or len(sig) != 64:
            fail(f"record {i}: unprotected header or signature length")
        tbs = cbor2.dumps(["Signature1", protected, AAD, payload])
        try:
            vk.verify(sig, tbs)
        except Exception:
            fail(f"record {i}: signature does not verify over the independently built Sig_structure")
        decoded = cbor2.loads(payload)
        expected = payload_map(r)
        if decoded != expected:
            fail(f"record {i}: payload {decoded!r} != fields {expected!r}")
        if list(decoded.keys()) != sorted(decoded.keys()):
            fail(f"record {i}: labels not ascending")
        if cbor2.dumps(expected, canonical=True) != payload or payload.hex() != r["payload"]:
            fail(f"record {i}: payload not the deterministic encoding")
        if sign1(sk, kid, payload) != cose:
            fail(f"record {i}: rebuilt in Python, bytes differ")
        n += 1
    return n


def python_doc() -> dict:
    seed = bytes(range(32))
    sk = Ed25519PrivateKey.from_private_bytes(seed)
    pk = sk.public_key().public_bytes_raw()
    kid = kid_of(pk)
    subject_seed = bytes([0x5e] * 32)
    subject = Ed25519PrivateKey.from_private_bytes(subject_seed)
    now = 1_800_000_000
    fleet = "fleet-py"
    recs = [
        {"kind": 1, "fleet": fleet, "not_before": now - 60, "not_after": now + 86400,
         "sequence": 10, "current": 3, "accepted": [2], "revoked": [1], "denied": [5]},
        {"kind": 2, "fleet": fleet, "not_before": now - 60, "not_after": now + 3600,
         "grant_id": 6, "subject": "bob@python", "role": 2, "scope": [b"VIN-".hex()],
         "subject_key": subject.public_key().public_bytes_raw().hex(), "serial": "VIN-123"},
        {"kind": 1, "fleet": fleet, "not_before": now - 60, "not_after": now + 86400,
         "sequence": 1000000, "current": 70000, "accepted": [3], "revoked": [1, 2], "denied": []},
    ]
    for r in recs:
        payload = cbor2.dumps(payload_map(r), canonical=True)
        r["payload"] = payload.hex()
        r["cose"] = sign1(sk, kid, payload).hex()
    challenge = bytes([0xab] * 32)
    pop = subject.sign(POP + (6).to_bytes(8, "big") + challenge)
    return {
        "source": "fleetkey governance v1, built by tests/crosscheck/check_governance.py (cbor2, cryptography)",
        "external_aad": AAD.hex(),
        "root_seed": seed.hex(),
        "root_public_key": pk.hex(),
        "root_kid": kid.hex(),
        "subject_seed": subject_seed.hex(),
        "fleet": fleet,
        "now": now,
        "records": recs,
        "possession": {"grant_id": 6, "challenge": challenge.hex(), "signature": pop.hex()},
    }


def python_handover_doc() -> dict:
    """A record by the old root, a handover to the new root, a record by the new root."""
    old_seed, new_seed = bytes([0x0a] * 32), bytes([0x0b] * 32)
    old = Ed25519PrivateKey.from_private_bytes(old_seed)
    new = Ed25519PrivateKey.from_private_bytes(new_seed)
    old_pk, new_pk = old.public_key().public_bytes_raw(), new.public_key().public_bytes_raw()
    now = 1_800_000_000
    fleet = "fleet-py"
    recs = [
        ({"kind": 1, "signer": "old", "fleet": fleet, "not_before": now - 60,
          "not_after": now + 86400, "sequence": 4, "current": 1, "accepted": [], "revoked": [],
          "denied": []}, old, old_pk),
        ({"kind": 3, "signer": "old", "fleet": fleet, "not_before": now - 60,
          "not_after": now + 86400 * 30, "sequence": 5, "new_root_key": new_pk.hex(),
          "new_root_kid": kid_of(new_pk).hex()}, old, old_pk),
        ({"kind": 1, "signer": "new", "fleet": fleet, "not_before": now - 60,
          "not_after": now + 86400, "sequence": 6, "current": 2, "accepted": [1], "revoked": [],
          "denied": [3]}, new, new_pk),
    ]
    out = []
    for r, sk, pk in recs:
        payload = cbor2.dumps(payload_map(r), canonical=True)
        r["payload"] = payload.hex()
        r["cose"] = sign1(sk, kid_of(pk), payload).hex()
        out.append(r)
    return {
        "source": "fleetkey governance v1 root handover, built by tests/crosscheck/check_governance.py (cbor2, cryptography)",
        "external_aad": AAD.hex(),
        "fleet": fleet,
        "now": now,
        "old_root_seed": old_seed.hex(),
        "old_root_public_key": old_pk.hex(),
        "old_root_kid": kid_of(old_pk).hex(),
        "new_root_seed": new_seed.hex(),
        "new_root_public_key": new_pk.hex(),
        "new_root_kid": kid_of(new_pk).hex(),
        "records": out,
    }


def built(path: str, doc: dict):
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if "--write" in sys.argv:
        with open(path, "w") as f:
            f.write(text)
    with open(path) as f:
        if f.read() != text:
            fail(f"{path} is not what this script builds (rerun with --write)")


def main():
    with open(RUST) as f:
        n = check_rust(json.load(f))
    doc = python_doc()
    built(PYTHON, doc)
    # The Python file checks itself too, so both files pass the same independent decoder.
    m = check_rust(doc)
    with open(RUST_HANDOVER) as f:
        h = check_rust(json.load(f))
    handover_doc = python_handover_doc()
    built(PYTHON_HANDOVER, handover_doc)
    k = check_rust(handover_doc)
    print(f"governance: {n} manager records verified and rebuilt byte for byte, {m} python records for the core; "
          f"handover: {h} manager records (old and new root) verified and rebuilt, {k} python records for the core")


if __name__ == "__main__":
    main()
