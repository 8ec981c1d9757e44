//! Verify cost and stack under QEMU (`scripts/firmware-bench`): one strict Ed25519 verify
//! (RFC 8032 section 7.1 TEST 3) and one generation record (the first record of
//! tests/vectors/governance-v1.json, root pinned first), each timed with SysTick on the processor
//! clock, with its stack high-water mark taken by painting the free RAM below the stack pointer.
//! Under `qemu-system-arm -icount shift=0` an instruction takes 1 ns of virtual time, so SysTick
//! ticks count instructions (the script calibrates the ratio with `cortex_m::asm::delay`).
#![no_std]
#![no_main]

use core::hint::black_box;

use cortex_m::peripheral::{Peripherals, SYST, syst::SystClkSource};
use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};
use fleetkey_core::governance::{
    GovernanceState, RootKey, verify_ed25519, verify_generation_record,
};

const RFC_PUBLIC_KEY: [u8; 32] = [
    0xfc, 0x51, 0xcd, 0x8e, 0x62, 0x18, 0xa1, 0xa3, 0x8d, 0xa4, 0x7e, 0xd0, 0x02, 0x30, 0xf0, 0x58,
    0x08, 0x16, 0xed, 0x13, 0xba, 0x33, 0x03, 0xac, 0x5d, 0xeb, 0x91, 0x15, 0x48, 0x90, 0x80, 0x25,
];
const RFC_MESSAGE: [u8; 2] = [0xaf, 0x82];
const RFC_SIGNATURE: [u8; 64] = [
    0x62, 0x91, 0xd6, 0x57, 0xde, 0xec, 0x24, 0x02, 0x48, 0x27, 0xe6, 0x9c, 0x3a, 0xbe, 0x01, 0xa3,
    0x0c, 0xe5, 0x48, 0xa2, 0x84, 0x74, 0x3a, 0x44, 0x5e, 0x36, 0x80, 0xd7, 0xdb, 0x5a, 0xc3, 0xac,
    0x18, 0xff, 0x9b, 0x53, 0x8d, 0x16, 0xf2, 0x90, 0xae, 0x67, 0xf7, 0x60, 0x98, 0x4d, 0xc6, 0x59,
    0x4a, 0x7c, 0x15, 0xe9, 0x71, 0x6e, 0xd2, 0x8d, 0xc0, 0x27, 0xbe, 0xce, 0xea, 0x1e, 0xc4, 0x0a,
];
const ROOT_PUBLIC_KEY: [u8; 32] = [
    0x21, 0x52, 0xf8, 0xd1, 0x9b, 0x79, 0x1d, 0x24, 0x45, 0x32, 0x42, 0xe1, 0x5f, 0x2e, 0xab, 0x6c,
    0xb7, 0xcf, 0xfa, 0x7b, 0x6a, 0x5e, 0xd3, 0x00, 0x97, 0x96, 0x0e, 0x06, 0x98, 0x81, 0xdb, 0x12,
];
const ROOT_KID: [u8; 8] = [0x30, 0x97, 0xe2, 0xde, 0xe2, 0xcb, 0x4a, 0x34];
const RECORD: [u8; 119] = [
    0xd2, 0x84, 0x4d, 0xa2, 0x01, 0x27, 0x04, 0x48, 0x30, 0x97, 0xe2, 0xde, 0xe2, 0xcb, 0x4a, 0x34,
    0xa0, 0x58, 0x22, 0xa9, 0x01, 0x01, 0x02, 0x67, 0x66, 0x6c, 0x65, 0x65, 0x74, 0x2d, 0x61, 0x03,
    0x1a, 0x68, 0x4e, 0xd3, 0x70, 0x04, 0x1a, 0x68, 0x76, 0x6e, 0x80, 0x05, 0x01, 0x06, 0x01, 0x07,
    0x80, 0x08, 0x80, 0x09, 0x80, 0x58, 0x40, 0x71, 0x17, 0x7e, 0xb2, 0xcb, 0xad, 0x6b, 0x0b, 0xaf,
    0x5b, 0xd9, 0x48, 0x34, 0xe9, 0xfe, 0x4d, 0xd2, 0x90, 0xfd, 0x6e, 0x69, 0xaa, 0xba, 0xa9, 0x08,
    0xa7, 0x17, 0x0f, 0x2a, 0xe4, 0x61, 0xf5, 0x73, 0x27, 0x35, 0x5b, 0xd2, 0xe7, 0x45, 0x7f, 0x9d,
    0x84, 0x81, 0x4f, 0x45, 0xcb, 0x57, 0xcb, 0x88, 0x5f, 0xb6, 0x18, 0xa9, 0xdd, 0x41, 0xc1, 0x4a,
    0x3c, 0x85, 0x1a, 0xbb, 0xd5, 0x8b, 0x09,
];
const NOW: u64 = 1750000000;

const PAINT: u32 = 0xa5a5_a5a5;

unsafe extern "C" {
    /// cortex-m-rt: the first free RAM word after .bss (the heap start; there is no heap).
    static mut __sheap: u32;
}

/// The free RAM words from the end of .bss up to `top`.
fn free_ram(top: usize) -> (*mut u32, usize) {
    let start = (&raw mut __sheap) as usize;
    (start as *mut u32, top.saturating_sub(start) / 4)
}

#[inline(never)]
fn paint(top: usize) {
    let (start, words) = free_ram(top);
    for i in 0..words {
        // SAFETY: the words between the end of .bss and `top`, which lies below the current stack
        // pointer, belong to no one (no heap, no interrupts).
        unsafe { start.add(i).write_volatile(PAINT) };
    }
}

/// Bytes of stack used below `sp` since `paint(top)`.
#[inline(never)]
fn high_water(sp: usize, top: usize) -> usize {
    let (start, words) = free_ram(top);
    // SAFETY: as in `paint`; reading only.
    let untouched = (0..words)
        .take_while(|&i| unsafe { start.add(i).read_volatile() } == PAINT)
        .count();
    sp - (start as usize + untouched * 4)
}

fn measure(name: &str, f: impl FnOnce() -> bool) {
    let sp = cortex_m::register::msp::read() as usize;
    let top = sp - 256;
    paint(top);
    let t0 = SYST::get_current();
    let ok = f();
    let t1 = SYST::get_current();
    let stack = high_water(sp, top);
    let ticks = t0.wrapping_sub(t1) & 0x00ff_ffff;
    hprintln!("{}: ok={} ticks={} stack={}", name, ok, ticks, stack);
}

#[entry]
fn main() -> ! {
    if let Some(mut p) = Peripherals::take() {
        p.SYST.set_clock_source(SystClkSource::Core);
        p.SYST.set_reload(0x00ff_ffff);
        p.SYST.clear_current();
        p.SYST.enable_counter();
        // Calibration: delay(n) runs n / 2 iterations of a two-instruction loop.
        measure("calibration delay(4000000)", || {
            cortex_m::asm::delay(black_box(4_000_000));
            true
        });
        measure("ed25519 verify (RFC 8032 TEST 3)", || {
            verify_ed25519(
                black_box(&RFC_PUBLIC_KEY),
                black_box(&RFC_MESSAGE),
                black_box(&RFC_SIGNATURE),
            )
            .is_ok()
        });
        measure("generation record (pin root + verify)", || {
            let Ok(root) = RootKey::new(black_box(ROOT_PUBLIC_KEY), &ROOT_KID) else {
                return false;
            };
            let Ok(mut state) = GovernanceState::new("fleet-a", root) else {
                return false;
            };
            verify_generation_record(&mut state, black_box(&RECORD), NOW).is_ok()
        });
    }
    debug::exit(debug::EXIT_SUCCESS);
    loop {
        core::hint::spin_loop();
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    debug::exit(debug::EXIT_FAILURE);
    loop {
        core::hint::spin_loop();
    }
}
