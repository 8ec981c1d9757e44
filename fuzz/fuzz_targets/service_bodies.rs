//! Arbitrary bytes as every request body of the HTTP service: never a panic; a refusal is a
//! 400 (not JSON) or a 422 naming a field. The first byte picks the body type.
#![no_main]

use fleetkey_server::api::{BODY_KINDS, parse_named};
use fleetkey_server::problem::ApiError;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let kind = BODY_KINDS[usize::from(pick) % BODY_KINDS.len()];
    match parse_named(kind, body) {
        Ok(()) | Err(ApiError::Malformed(_)) => {}
        Err(ApiError::Invalid { field, problem }) => {
            assert!(!field.is_empty() && !problem.is_empty());
        }
        Err(other) => panic!("{kind}: unexpected {other:?}"),
    }
});
