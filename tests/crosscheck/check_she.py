#!/usr/bin/env python3
"""Cross-check `fleetkey she build` / `she verify` against an independent SHE M1-M5 implementation.

The messages are recomputed here with Python's `cryptography` (AES and CMAC) from the SHE
functional specification v1.1 memory update protocol, for the specification's example in
tests/vectors/she-key-update.json and for random cases, and compared byte for byte with the
JSON that `fleetkey she build` prints. `fleetkey she verify` must accept every expected M4/M5
and refuse one with a flipped bit.

Run from the repository root after `cargo build -p fleetkey-cli`:
    python3 tests/crosscheck/check_she.py
FLEETKEY_BIN overrides the binary (default target/debug/fleetkey).
"""

import json
import os
import random
import subprocess
import sys
import tempfile

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

ENC_C = bytes.fromhex("010153484500800000000000000000b0")
MAC_C = bytes.fromhex("010253484500800000000000000000b0")
VECTORS = os.path.join("tests", "vectors", "she-key-update.json")
RANDOM_CASES = 20


def aes_enc(key: bytes, block: bytes) -> bytes:
    e = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return e.update(block) + e.finalize()


def aes_cbc(key: bytes, data: bytes) -> bytes:
    e = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).encryptor()
    return e.update(data) + e.finalize()


def aes_cmac(key: bytes, data: bytes) -> bytes:
    c = cmac.CMAC(algorithms.AES(key))
    c.update(data)
    return c.finalize()


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def kdf(key: bytes, constant: bytes) -> bytes:
    """Miyaguchi-Preneel over key || constant, H0 = 0."""
    h = bytes(16)
    for x in (key, constant):
        h = xor(xor(aes_enc(h, x), h), x)
    return h


def she_messages(uid: bytes, key_id: int, auth_id: int, counter: int, flags: int,
                 auth_key: bytes, new_key: bytes) -> dict:
    k1, k2 = kdf(auth_key, ENC_C), kdf(auth_key, MAC_C)
    k3, k4 = kdf(new_key, ENC_C), kdf(new_key, MAC_C)
    m1 = uid + bytes([(key_id << 4) | auth_id])
    # counter (28) | flags (5) | 95 zero bits, as one 128-bit integer.
    first = ((counter << 100) | (flags << 95)).to_bytes(16, "big")
    m2 = aes_cbc(k1, first + new_key)
    m3 = aes_cmac(k2, m1 + m2)
    # counter (28) | 1 | 99 zero bits.
    m4 = m1 + aes_enc(k3, ((counter << 100) | (1 << 99)).to_bytes(16, "big"))
    m5 = aes_cmac(k4, m4)
    return {"k1": k1, "k2": k2, "m1": m1, "m2": m2, "m3": m3, "m4": m4, "m5": m5}


def allowed(key_id: int, auth_id: int) -> bool:
    if key_id == 1:
        return auth_id == 1
    if key_id in (2, 3):
        return auth_id in (1, 2)
    if 4 <= key_id <= 13:
        return auth_id in (1, key_id)
    return False


def fail(message: str) -> None:
    print(f"she: MISMATCH: {message}", file=sys.stderr)
    sys.exit(1)


def run(binary: str, args: list) -> subprocess.CompletedProcess:
    return subprocess.run([binary, *args], capture_output=True, text=True, check=False)


def main() -> None:
    binary = os.environ.get("FLEETKEY_BIN", os.path.join("target", "debug", "fleetkey"))
    if not os.path.exists(binary):
        fail(f"{binary} not found: run `cargo build -p fleetkey-cli` or set FLEETKEY_BIN")

    with open(VECTORS, encoding="utf-8") as f:
        vectors = json.load(f)
    if bytes.fromhex(vectors["kdf_constants"]["KEY_UPDATE_ENC_C"]) != ENC_C:
        fail("KEY_UPDATE_ENC_C")
    if bytes.fromhex(vectors["kdf_constants"]["KEY_UPDATE_MAC_C"]) != MAC_C:
        fail("KEY_UPDATE_MAC_C")

    cases = []
    for v in vectors["cases"]:
        case = {k: v[k] for k in ("key_id", "auth_id", "counter", "flags")}
        case.update(uid=bytes.fromhex(v["uid"]), auth_key=bytes.fromhex(v["auth_key"]),
                    new_key=bytes.fromhex(v["new_key"]))
        ours = she_messages(case["uid"], case["key_id"], case["auth_id"], case["counter"],
                            case["flags"], case["auth_key"], case["new_key"])
        for name in ("k1", "k2", "m1", "m2", "m3", "m4", "m5"):
            if ours[name].hex() != v[name]:
                fail(f"spec vector {name}: python {ours[name].hex()} != vector {v[name]}")
        cases.append(case)

    rng = random.Random(int(os.environ.get("SHE_SEED", "20260101")))
    pairs = [(k, a) for k in range(1, 15) for a in range(1, 15) if allowed(k, a)]
    for i in range(RANDOM_CASES):
        key_id, auth_id = rng.choice(pairs)
        uid = bytes(15) if i % 7 == 3 else rng.randbytes(15)
        counter = rng.choice([0, 1, (1 << 28) - 1, rng.randrange(1 << 28)])
        cases.append(dict(uid=uid, key_id=key_id, auth_id=auth_id, counter=counter,
                          flags=rng.randrange(32), auth_key=rng.randbytes(16),
                          new_key=rng.randbytes(16)))

    with tempfile.TemporaryDirectory() as tmp:
        auth_file = os.path.join(tmp, "auth.key")
        new_file = os.path.join(tmp, "new.key")
        for n, c in enumerate(cases):
            with open(auth_file, "w", encoding="ascii") as f:
                f.write(c["auth_key"].hex() + "\n")
            with open(new_file, "w", encoding="ascii") as f:
                f.write(c["new_key"].hex() + "\n")
            out = run(binary, ["she", "build", "--uid", c["uid"].hex(),
                               "--key-id", str(c["key_id"]), "--auth-id", str(c["auth_id"]),
                               "--counter", str(c["counter"]), "--flags", str(c["flags"]),
                               "--auth-key-file", auth_file, "--new-key-file", new_file])
            if out.returncode != 0:
                fail(f"case {n}: she build exited {out.returncode}: {out.stderr.strip()}")
            got = json.loads(out.stdout)
            want = she_messages(c["uid"], c["key_id"], c["auth_id"], c["counter"], c["flags"],
                                c["auth_key"], c["new_key"])
            for name in ("m1", "m2", "m3", "m4", "m5"):
                if got.get(name) != want[name].hex():
                    fail(f"case {n} {name}: fleetkey {got.get(name)} != python {want[name].hex()}")

            m4, m5 = want["m4"].hex(), want["m5"].hex()
            ok = run(binary, ["she", "verify", "--m4", m4, "--m5", m5, "--new-key-file", new_file])
            if ok.returncode != 0 or f"counter {c['counter']}," not in ok.stdout:
                fail(f"case {n}: she verify refused a good proof: {ok.stderr.strip()}")
            bad_m5 = (bytes.fromhex(m5)[:-1] + bytes([bytes.fromhex(m5)[-1] ^ 1])).hex()
            bad = run(binary, ["she", "verify", "--m4", m4, "--m5", bad_m5,
                               "--new-key-file", new_file])
            if bad.returncode != 1 or bad.stdout:
                fail(f"case {n}: she verify accepted a flipped M5 (exit {bad.returncode})")

    print(f"she: {len(cases)} vectors match ({len(vectors['cases'])} spec, "
          f"{RANDOM_CASES} random; build and verify)")


if __name__ == "__main__":
    main()
