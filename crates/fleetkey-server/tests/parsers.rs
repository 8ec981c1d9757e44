//! The API's body parsers never panic, whatever JSON (or bytes) they get, and refuse what is not
//! exactly their type with a 400 or a 422 naming a field.

use fleetkey_server::api::{BODY_KINDS, parse_named};
use fleetkey_server::problem::ApiError;
use proptest::prelude::*;
use serde_json::Value;

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-z_]{0,12}".prop_map(Value::String),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        let keys = prop_oneof![
            Just("serial".to_owned()),
            Just("labels".to_owned()),
            Just("devices".to_owned()),
            Just("reason".to_owned()),
            Just("backup".to_owned()),
            Just("role".to_owned()),
            Just("scope".to_owned()),
            "[a-z_]{1,10}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(keys, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn check(kind: &str, bytes: &[u8]) {
    match parse_named(kind, bytes) {
        Ok(()) => {}
        Err(ApiError::Malformed(_)) => {}
        Err(ApiError::Invalid { field, problem }) => {
            assert!(!field.is_empty() && !problem.is_empty());
        }
        Err(other) => panic!("{kind}: unexpected {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_json_never_panics(value in json(), kind in prop::sample::select(BODY_KINDS.to_vec())) {
        check(kind, value.to_string().as_bytes());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256), kind in prop::sample::select(BODY_KINDS.to_vec())) {
        check(kind, &bytes);
    }

    #[test]
    fn a_valid_device_with_one_extra_field_is_refused(serial in "[A-Z0-9-]{1,40}", extra in "[a-z]{1,8}") {
        prop_assume!(!["serial", "she_uid", "labels"].contains(&extra.as_str()));
        let body = serde_json::json!({"serial": serial, extra.clone(): 1}).to_string();
        match parse_named("new_device", body.as_bytes()) {
            Err(ApiError::Invalid { field, .. }) => prop_assert_eq!(field, extra),
            other => prop_assert!(false, "{:?}", other),
        }
    }
}
