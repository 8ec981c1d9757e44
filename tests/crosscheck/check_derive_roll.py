#!/usr/bin/env python3
"""Cross-check fleetkey's derivation v1 and rolling v1 against Python's `cryptography`.

Recomputes every case of tests/vectors/derive-v1.json and tests/vectors/roll-v1.json with an
independent HKDF-Expand, and runs `fleetkey derive` / `fleetkey roll` on each case.

    python3 tests/crosscheck/check_derive_roll.py              # check (CI)
    python3 tests/crosscheck/check_derive_roll.py --generate   # rewrite the vector files

FLEETKEY_BIN overrides the binary (default target/debug/fleetkey).
"""
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors"
BIN = os.environ.get("FLEETKEY_BIN", str(ROOT / "target" / "debug" / "fleetkey"))
USAGES = {"auth": (1, 16), "key-update": (2, 16), "roll-seed": (3, 32)}


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=info).derive(prk)


def device_info(usage: str, generation: int, revision: int, serial: bytes) -> bytes:
    code, _ = USAGES[usage]
    assert 0 <= generation < 2**32 and 0 <= revision < 2**28 and 1 <= len(serial) <= 40
    return b"FK1D" + bytes([code]) + struct.pack(">II", generation, revision) + bytes([len(serial)]) + serial


def session_info(epoch: int, channel: int) -> bytes:
    return b"FK1S" + struct.pack(">QI", epoch, channel)


def derive_cases():
    masters = [bytes(range(32)), bytes.fromhex("ff" * 32), bytes.fromhex(
        "5b2a1c0e9f8d7c6b5a4938271605f4e3d2c1b0a99887766554433221100ffeed")]
    serials = [b"ECU-0001", b"A", b"X" * 40, "Traktor-Sitz-\u00fc-7".encode(), bytes([0, 1, 2, 0xff])]
    cases = []
    for mi, master in enumerate(masters):
        for si, serial in enumerate(serials):
            for usage in USAGES:
                generation = [1, 0, 2**32 - 1][mi]
                revision = [0, 1, 2**28 - 1, 7, 123456][si]
                info = device_info(usage, generation, revision, serial)
                case = {
                    "master": master.hex(), "usage": usage, "generation": generation,
                    "revision": revision, "info": info.hex(),
                    "key": hkdf_expand(master, info, USAGES[usage][1]).hex(),
                }
                try:
                    case["serial"] = serial.decode("utf-8")
                except UnicodeDecodeError:
                    case["serial_hex"] = serial.hex()
                cases.append(case)
    return cases


def roll_cases():
    seeds = [bytes(range(32)), bytes.fromhex(
        "0d1c2b3a49586776859493a2b1c0dfee0d1c2b3a49586776859493a2b1c0dfee")]
    cases = []
    for seed in seeds:
        for epoch in [0, 1, 29_000_000, 2**64 - 1]:
            for channel in [0, 7, 2**32 - 1]:
                info = session_info(epoch, channel)
                cases.append({"seed": seed.hex(), "epoch": epoch, "channel": channel,
                              "info": info.hex(), "key": hkdf_expand(seed, info, 16).hex()})
    return cases


def run(args, stdin: str) -> str:
    out = subprocess.run([BIN, *args], input=stdin, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{BIN} {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout.strip()


def main() -> None:
    if "--generate" in sys.argv:
        files = {"derive-v1.json": ("fleetkey device key derivation v1 (DESIGN.md contract); "
                                    "generated with Python cryptography HKDFExpand", derive_cases()),
                 "roll-v1.json": ("fleetkey rolling session keys v1 (DESIGN.md contract); "
                                  "generated with Python cryptography HKDFExpand", roll_cases())}
        for name, (source, cases) in files.items():
            (VECTORS / name).write_text(json.dumps({"source": source, "cases": cases}, indent=1) + "\n")
        print("wrote", ", ".join(files))
        return
    failures = 0
    derive = json.loads((VECTORS / "derive-v1.json").read_text())["cases"]
    for case in derive:
        serial = case["serial"].encode() if "serial" in case else bytes.fromhex(case["serial_hex"])
        info = device_info(case["usage"], case["generation"], case["revision"], serial)
        key = hkdf_expand(bytes.fromhex(case["master"]), info, USAGES[case["usage"]][1]).hex()
        serial_arg = ["--serial", case["serial"]] if "serial" in case else ["--serial-hex", case["serial_hex"]]
        cli = run(["derive", "--usage", case["usage"], "--generation", str(case["generation"]),
                   "--revision", str(case["revision"]), *serial_arg], case["master"] + "\n")
        for what, got in [("info", info.hex()), ("python key", key), ("fleetkey derive", cli)]:
            want = case["info"] if what == "info" else case["key"]
            if got != want:
                failures += 1
                print(f"derive mismatch ({what}): {case}: got {got}", file=sys.stderr)
    roll = json.loads((VECTORS / "roll-v1.json").read_text())["cases"]
    for case in roll:
        key = hkdf_expand(bytes.fromhex(case["seed"]), session_info(case["epoch"], case["channel"]), 16).hex()
        cli = run(["roll", "--epoch", str(case["epoch"]), "--channel", str(case["channel"])], case["seed"])
        for what, got in [("python key", key), ("fleetkey roll", cli)]:
            if got != case["key"]:
                failures += 1
                print(f"roll mismatch ({what}): {case}: got {got}", file=sys.stderr)
    if failures:
        sys.exit(f"derive/roll: {failures} mismatches")
    print(f"derive/roll: {len(derive)} derivation and {len(roll)} session key vectors match "
          f"(python cryptography and {Path(BIN).name})")


if __name__ == "__main__":
    main()
