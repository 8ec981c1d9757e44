//! Arbitrary text as custodian share files (docs/backup.md; a master's `fleetkey-master-share`
//! or the governance root's `fleetkey-root-share`): the parser refuses without a panic, and a
//! file it accepts writes back to a file that parses to the same share and KCV verdict; the
//! combiners refuse shares of the wrong kind or too few without a panic.
#![no_main]

use fleetkey::backup::{Share, combine, combine_root, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(share) = Share::parse(text, "fuzz.json") else {
        return;
    };
    let again = share.to_json();
    let back = Share::parse(std::str::from_utf8(&again).unwrap(), "again.json").unwrap();
    assert_eq!(back.info(), share.info());
    assert_eq!(back.check_kcv(), share.check_kcv());
    let pair = [share, back];
    let _ = combine(&pair);
    let _ = combine_root(&pair);
    let _ = verify(&pair);
});
