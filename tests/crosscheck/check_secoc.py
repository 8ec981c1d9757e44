#!/usr/bin/env python3
"""Cross-check fleetkey's SecOC frames (docs/secoc.md, secoc-v1) against Python's `cryptography`.

An independent implementation of the secured frame, the receiver's FV reconstruction and its
reason for a rejection, written from docs/secoc.md with Python integers and cryptography's CMAC.
It recomputes every case of tests/vectors/secoc-v1.json and exits non-zero on any difference;
then it runs `fleetkey can sign` (and `can verify`) on every frame case that fits a candump line.

    python3 tests/crosscheck/check_secoc.py              # check (CI)
    python3 tests/crosscheck/check_secoc.py --generate   # rewrite tests/vectors/secoc-v1.json

FLEETKEY_BIN overrides the binary (default target/debug/fleetkey).
"""
import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors" / "secoc-v1.json"
BIN = os.environ.get("FLEETKEY_BIN", str(ROOT / "target" / "debug" / "fleetkey"))
CANFD_LENGTHS = {0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64}

# name: (fv_len, mac_len, max_frame), all in bytes
PROFILES = {"p1": (1, 3, 8), "p2": (0, 3, 8), "fd64": (2, 8, 64), "fd128": (4, 16, 64)}
FV_MAX = 2**64 - 1


def cmac(key: bytes, message: bytes) -> bytes:
    c = CMAC(algorithms.AES(key))
    c.update(message)
    return c.finalize()


def mac_input(data_id: int, payload: bytes, fv: int) -> bytes:
    assert 0 <= data_id <= 0xFFFF and 1 <= fv <= FV_MAX
    return struct.pack(">H", data_id) + payload + struct.pack(">Q", fv)


def secure(profile: str, key: bytes, data_id: int, payload: bytes, fv: int) -> bytes:
    fv_len, mac_len, max_frame = PROFILES[profile]
    assert len(payload) + fv_len + mac_len <= max_frame, "payload too long"
    truncated_fv = (fv % 2 ** (8 * fv_len)).to_bytes(fv_len, "big")
    return payload + truncated_fv + cmac(key, mac_input(data_id, payload, fv))[:mac_len]


def reconstruct(latest: int, t: int, bits: int, attempt: int):
    modulus = 2**bits
    high, low = divmod(latest, modulus)
    base = high * modulus + t if t > low else (high + 1) * modulus + t
    fv = base + attempt * modulus
    return fv if fv <= FV_MAX else None


def replay_candidate(latest: int, t: int, bits: int):
    modulus = 2**bits
    fv = (latest // modulus) * modulus + t
    if fv > latest:
        fv -= modulus
    return fv if fv > 0 else None


def receive(profile: str, key: bytes, data_id: int, latest: int, attempts: int, frame: bytes):
    """("ok", fv) or ("rejected", reason), with a single key in the window."""
    fv_len, mac_len, max_frame = PROFILES[profile]
    if len(frame) > max_frame or len(frame) < fv_len + mac_len:
        return "rejected", "malformed"
    payload_len = len(frame) - fv_len - mac_len
    payload, t = frame[:payload_len], int.from_bytes(frame[payload_len:payload_len + fv_len], "big")
    tag = frame[payload_len + fv_len:]
    for attempt in range(attempts + 1):
        fv = reconstruct(latest, t, 8 * fv_len, attempt)
        if fv is None:
            break
        if cmac(key, mac_input(data_id, payload, fv))[:mac_len] == tag:
            return "ok", fv
    fv = replay_candidate(latest, t, 8 * fv_len)
    if fv is not None and cmac(key, mac_input(data_id, payload, fv))[:mac_len] == tag:
        return "rejected", "replay"
    return "rejected", "authentication"


KEYS = [bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c"), bytes(range(16)),
        bytes.fromhex("c3dc9f7871507a7b113586e7fb8f0c63")]
OTHER_KEY = bytes.fromhex("ffeeddccbbaa99887766554433221100")


def pattern(n: int, seed: int) -> bytes:
    return bytes((seed + 37 * i) & 0xFF for i in range(n))


def frame_cases():
    # (payload length, data id, fv, latest, attempts) per profile; `latest` and `attempts` give a
    # receiver that rebuilds exactly `fv` (sequential, carry, lost frames, extra attempts).
    plans = {
        "p1": [(4, 0x0123, 1, 0, 0), (0, 0x0000, 0xFF, 0xFE, 0), (4, 0xFFFF, 0x100, 0xFF, 0),
               (2, 0x07DF, 0x1234567, 0x1234500, 0), (3, 0x0123, 0x305, 0x1F0, 1),
               (4, 0x0042, FV_MAX, FV_MAX - 1, 0)],
        "p2": [(5, 0x0123, 1, 0, 0), (0, 0x0001, 2, 1, 0), (5, 0xFFFF, 0x1000, 0xFFD, 2),
               (3, 0x0200, 0xFFFFFFFF, 0xFFFFFFFE, 0), (1, 0x0042, FV_MAX, FV_MAX - 1, 0)],
        "fd64": [(54, 0x0123, 1, 0, 0), (0, 0x0000, 0xFFFF, 0xFFF0, 0), (2, 0x0345, 0x10000, 0xFFFF, 0),
                 (14, 0xFFFF, 0xABCDEF0123, 0xABCDEF0000, 0), (38, 0x0777, 0x30001, 0x1FFFF, 1),
                 (22, 0x0042, FV_MAX, FV_MAX - 3, 0)],
        "fd128": [(44, 0x0123, 1, 0, 0), (0, 0x0000, 0xFFFFFFFF, 0xFFFFFFFE, 0),
                  (4, 0x0345, 0x100000000, 0xFFFFFFFF, 0), (12, 0xFFFF, 0x123456789ABCDEF0, 0x123456789ABCDE00, 0),
                  (28, 0x0042, FV_MAX, FV_MAX - 1, 0)],
    }
    cases = []
    for profile, plan in plans.items():
        for i, (n, data_id, fv, latest, attempts) in enumerate(plan):
            key = KEYS[i % len(KEYS)]
            payload = pattern(n, 11 * i + len(profile))
            secured = secure(profile, key, data_id, payload, fv)
            assert receive(profile, key, data_id, latest, attempts, secured) == ("ok", fv), (profile, i)
            if attempts:
                assert receive(profile, key, data_id, latest, attempts - 1, secured)[0] == "rejected"
            cases.append({
                "profile": profile, "key": key.hex(), "data_id": data_id, "payload": payload.hex(),
                "fv": fv, "mac_input": mac_input(data_id, payload, fv).hex(),
                "cmac": cmac(key, mac_input(data_id, payload, fv)).hex(), "secured": secured.hex(),
                "latest": latest, "attempts": attempts,
            })
    return cases


def rejection_cases():
    cases = []

    def add(what, profile, key, data_id, latest, attempts, frame, receiver_key=None):
        result, reason = receive(profile, receiver_key or key, data_id, latest, attempts, frame)
        assert result == "rejected", what
        cases.append({"what": what, "profile": profile, "key": (receiver_key or key).hex(),
                      "data_id": data_id, "latest": latest, "attempts": attempts,
                      "secured": frame.hex(), "reason": reason})

    key = KEYS[0]
    for profile, (fv_len, mac_len, max_frame) in PROFILES.items():
        payload = pattern(min(4, max_frame - fv_len - mac_len), 5)
        frame = secure(profile, key, 0x0123, payload, 0x203)
        add("replay of the latest frame", profile, key, 0x0123, 0x203, 3, frame)
        add("replay of an older frame", profile, key, 0x0123, 0x210, 3, frame)
        tampered = bytearray(frame)
        tampered[0] ^= 0x01
        add("payload bit flipped", profile, key, 0x0123, 0x202, 3, bytes(tampered))
        tampered = bytearray(frame)
        tampered[-1] ^= 0x80
        add("MAC bit flipped", profile, key, 0x0123, 0x202, 3, bytes(tampered))
        add("other DataId", profile, key, 0x0124, 0x202, 3, frame)
        add("other key", profile, key, 0x0123, 0x202, 3, frame, receiver_key=OTHER_KEY)
        add("too short", profile, key, 0x0123, 0x202, 3, frame[: fv_len + mac_len - 1])
        add("too long", profile, key, 0x0123, 0x202, 3, pattern(max_frame + 1, 9))
    # Lost frames beyond the attempts: the sender is ahead by more than (attempts + 1) * 2^bits.
    frame = secure("p2", key, 0x0123, b"\x01\x02", 0x210)
    add("p2: more frames lost than attempts", "p2", key, 0x0123, 0x20A, 3, frame)
    frame = secure("p1", key, 0x0123, b"\x01\x02", 0x505)
    add("p1: sender ahead beyond the attempts", "p1", key, 0x0123, 0x101, 1, frame)
    return cases


def cli_cases(frames) -> tuple[int, int]:
    """Runs `fleetkey can sign` on each frame case a candump line can carry; (cases, failures)."""
    if not Path(BIN).exists():
        sys.exit(f"secoc: {BIN} not found: build it first (cargo build -p fleetkey-cli) or set FLEETKEY_BIN")
    count = failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for case in frames:
            payload, secured = bytes.fromhex(case["payload"]), bytes.fromhex(case["secured"])
            fd = PROFILES[case["profile"]][2] > 8
            if fd and (len(payload) not in CANFD_LENGTHS or len(secured) not in CANFD_LENGTHS):
                continue
            key_file = Path(tmp) / "session.key"
            key_file.write_text(case["key"] + "\n")
            sep = "##0" if fd else "#"
            line = f"(1700000000.000000) can0 123{sep}{payload.hex().upper()}\n"
            common = ["--profile", case["profile"], "--key-file", str(key_file), "--data-id", str(case["data_id"])]
            out = subprocess.run([BIN, "can", "sign", *common, "--fv-start", str(case["fv"])],
                                 input=line, capture_output=True, text=True)
            want = f"(1700000000.000000) can0 123{sep}{secured.hex().upper()}\n"
            count += 1
            if out.returncode != 0 or out.stdout != want:
                failures += 1
                print(f"secoc mismatch in fleetkey can sign {case}:\n  want: {want}  got:  {out.stdout}{out.stderr}",
                      file=sys.stderr)
                continue
            if case["fv"] == 1:
                check = subprocess.run([BIN, "can", "verify", *common], input=out.stdout, capture_output=True, text=True)
                if check.returncode != 0 or "line 1: 123 ok fv=1\n" not in check.stdout:
                    failures += 1
                    print(f"secoc: fleetkey can verify rejected {case}: {check.stdout}{check.stderr}", file=sys.stderr)
    return count, failures


def compare(name: str, want, got) -> int:
    if want != got:
        print(f"secoc mismatch in {name}:\n  file:   {want}\n  python: {got}", file=sys.stderr)
        return 1
    return 0


def main() -> None:
    if "--generate" in sys.argv:
        doc = {
            "version": "secoc-v1",
            "source": "fleetkey SecOC frames (docs/secoc.md); generated by tests/crosscheck/check_secoc.py "
                      "with Python cryptography's AES-CMAC, independently of the Rust code",
            "profiles": [{"name": n, "fv_len": f, "mac_len": m, "max_frame": x} for n, (f, m, x) in PROFILES.items()],
            "frames": frame_cases(),
            "rejections": rejection_cases(),
        }
        VECTORS.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {VECTORS.relative_to(ROOT)}: {len(doc['frames'])} frames, {len(doc['rejections'])} rejections")
        return
    doc = json.loads(VECTORS.read_text())
    failures = 0
    for p in doc["profiles"]:
        failures += compare(f"profile {p['name']}", PROFILES.get(p["name"]), (p["fv_len"], p["mac_len"], p["max_frame"]))
    for case in doc["frames"]:
        key, payload = bytes.fromhex(case["key"]), bytes.fromhex(case["payload"])
        message = mac_input(case["data_id"], payload, case["fv"])
        secured = secure(case["profile"], key, case["data_id"], payload, case["fv"])
        failures += compare(f"mac_input {case}", case["mac_input"], message.hex())
        failures += compare(f"cmac {case}", case["cmac"], cmac(key, message).hex())
        failures += compare(f"secured {case}", case["secured"], secured.hex())
        got = receive(case["profile"], key, case["data_id"], case["latest"], case["attempts"], secured)
        failures += compare(f"receiver {case}", ["ok", case["fv"]], list(got))
    for case in doc["rejections"]:
        got = receive(case["profile"], bytes.fromhex(case["key"]), case["data_id"], case["latest"],
                      case["attempts"], bytes.fromhex(case["secured"]))
        failures += compare(f"rejection {case}", ["rejected", case["reason"]], list(got))
    cli_count, cli_failures = cli_cases(doc["frames"])
    failures += cli_failures
    if failures:
        sys.exit(f"secoc: {failures} mismatches")
    print(f"secoc: {len(doc['frames']) + len(doc['rejections'])} vectors match "
          f"({len(doc['frames'])} frames, {len(doc['rejections'])} rejections; python cryptography; "
          f"{cli_count} frames through {Path(BIN).name} can sign)")


if __name__ == "__main__":
    main()
