#!/usr/bin/env python3
"""Cross-check fleetkey's master backup shares (docs/backup.md) with an independent Shamir
implementation over GF(256) (polynomial x^8 + x^4 + x^3 + x^2 + 1, 0x11d) and Python's hmac.

1. tests/vectors/backup-shares-v1.json: a 3-of-5 split of a known master made here (coefficients
   from SHA-256 of a seed); every 3-subset must rebuild the master, and every KCV must match.
   `fleetkey master verify --json` must accept them and report the same whole-master KCV.
2. A ceremony run by fleetkey (`fleetkey init ... --threshold 3`): every 3-subset of its share
   files, rebuilt here, must match the whole-master KCV its files carry, every share KCV must
   match, and any 2 shares must not.

    python3 tests/crosscheck/check_backup.py              # check (CI)
    python3 tests/crosscheck/check_backup.py --generate   # rewrite the vector file

FLEETKEY_BIN overrides the binary (default target/debug/fleetkey).
"""
import hashlib
import hmac
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VECTOR = ROOT / "tests" / "vectors" / "backup-shares-v1.json"
BIN = os.environ.get("FLEETKEY_BIN", str(ROOT / "target" / "debug" / "fleetkey"))
MASTER_LABEL = b"FK1K master KCV v1"
SHARE_LABEL = b"FK1K share KCV v1"


def gf_mul(a: int, b: int) -> int:
    r = 0
    while b:
        if b & 1:
            r ^= a
        a <<= 1
        if a & 0x100:
            a ^= 0x11D
        b >>= 1
    return r


def gf_inv(a: int) -> int:
    r = 1
    for _ in range(254):  # a^254 = a^-1
        r = gf_mul(r, a)
    return r


def evaluate(coeffs: list[int], x: int) -> int:
    """coeffs[0] is the secret byte."""
    y = 0
    for c in reversed(coeffs):
        y = gf_mul(y, x) ^ c
    return y


def rebuild(points: list[tuple[int, bytes]]) -> bytes:
    out = bytearray(len(points[0][1]))
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = gf_mul(num, xj)
                den = gf_mul(den, xj ^ xi)
        li = gf_mul(num, gf_inv(den))
        for k in range(len(out)):
            out[k] ^= gf_mul(li, yi[k])
    return bytes(out)


def kcv(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).digest()[:3].hex()


def master_kcv(master: bytes) -> str:
    return kcv(master, MASTER_LABEL)


def share_kcv(doc: dict, value: bytes) -> str:
    fleet = doc["fleet"].encode()
    custodian = doc["custodian"].encode()
    msg = (
        SHARE_LABEL
        + bytes([len(fleet)]) + fleet
        + doc["generation"].to_bytes(4, "big")
        + bytes([doc["threshold"], doc["count"], doc["index"]])
        + bytes([len(custodian)]) + custodian
        + bytes.fromhex(doc["master_kcv"])
    )
    return kcv(value, msg)


def generate() -> dict:
    master = bytes(range(0x20))
    custodians = ["alice", "bob", "carol", "dave", "erin"]
    threshold, generation, fleet = 3, 1, "tractors"
    seed = hashlib.sha256(b"fleetkey backup vector v1").digest()
    coeffs = []
    for k, byte in enumerate(master):
        rand = hashlib.sha256(seed + bytes([k])).digest()
        coeffs.append([byte] + list(rand[: threshold - 1]))
    shares = []
    for index, custodian in enumerate(custodians, start=1):
        value = bytes(evaluate(c, index) for c in coeffs)
        doc = {
            "format": "fleetkey-master-share",
            "version": 1,
            "fleet": fleet,
            "generation": generation,
            "threshold": threshold,
            "count": len(custodians),
            "index": index,
            "custodian": custodian,
            "share": value.hex(),
            "share_kcv": "",
            "master_kcv": master_kcv(master),
            "created_at": 1767225600000,
        }
        doc["share_kcv"] = share_kcv(doc, value)
        shares.append(doc)
    return {
        "source": "tests/crosscheck/check_backup.py (Shamir over GF(256)/0x11d, coefficients from SHA-256)",
        "master": master.hex(),
        "master_kcv": master_kcv(master),
        "shares": shares,
    }


def check_split(shares: list[dict], master_hex: str | None, what: str) -> int:
    n = 0
    threshold = shares[0]["threshold"]
    for doc in shares:
        value = bytes.fromhex(doc["share"])
        if share_kcv(doc, value) != doc["share_kcv"]:
            sys.exit(f"{what}: share {doc['index']}: share KCV {doc['share_kcv']} != {share_kcv(doc, value)}")
        n += 1
    for subset in itertools.combinations(shares, threshold):
        master = rebuild([(d["index"], bytes.fromhex(d["share"])) for d in subset])
        if master_kcv(master) != subset[0]["master_kcv"]:
            sys.exit(f"{what}: shares {[d['index'] for d in subset]} rebuild a master of KCV {master_kcv(master)}")
        if master_hex is not None and master.hex() != master_hex:
            sys.exit(f"{what}: shares {[d['index'] for d in subset]} rebuild another master")
        n += 1
    for subset in itertools.combinations(shares, threshold - 1):
        if threshold > 1:
            master = rebuild([(d["index"], bytes.fromhex(d["share"])) for d in subset])
            if master_kcv(master) == subset[0]["master_kcv"]:
                sys.exit(f"{what}: {threshold - 1} shares rebuilt the master")
    return n


def fleetkey(*args: str, env: dict | None = None) -> str:
    out = subprocess.run([BIN, *args], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        sys.exit(f"fleetkey {' '.join(args)}: exit {out.returncode}: {out.stderr}")
    return out.stdout


def main() -> None:
    if "--generate" in sys.argv:
        VECTOR.write_text(json.dumps(generate(), indent=2) + "\n")
        print(f"wrote {VECTOR}")
        return
    vector = json.loads(VECTOR.read_text())
    if vector != generate():
        sys.exit(f"{VECTOR} differs from what this script generates")
    checks = check_split(vector["shares"], vector["master"], "vector")
    env = dict(os.environ, FLEETKEY_PASSPHRASE="crosscheck passphrase")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = []
        for doc in vector["shares"][1:4]:
            path = tmp / f"vector-{doc['index']}.json"
            path.write_text(json.dumps(doc))
            files.append(str(path))
        report = json.loads(fleetkey("master", "verify", "--json", "--shares", *files, env=env))
        if not report["master_checked"] or report["master_kcv"] != vector["master_kcv"]:
            sys.exit(f"fleetkey master verify disagrees on the vector: {report}")
        checks += 1
        custodians = []
        for c in ["alice", "bob", "carol", "dave", "erin"]:
            custodians += ["--custodian", c]
        fleetkey("--home", str(tmp / "home"), "init", "--fleet", "tractors", "--scheme", "derived",
                 "--kdf-log-n", "10", "--threshold", "3", "--shares-dir", str(tmp / "shares"),
                 *custodians, env=env)
        made = [json.loads(p.read_text()) for p in sorted((tmp / "shares").iterdir())]
        if len(made) != 5:
            sys.exit(f"fleetkey wrote {len(made)} share files, expected 5")
        checks += check_split(made, None, "fleetkey ceremony")
    print(f"backup: {checks} share and master checks match")


if __name__ == "__main__":
    main()
