use super::*;

#[test]
fn prefix_end_is_the_least_upper_bound() {
    assert_eq!(prefix_end(b"A"), Some(b"B".to_vec()));
    assert_eq!(prefix_end(&[0x41, 0xff]), Some(vec![0x42]));
    assert_eq!(prefix_end(&[0xff, 0xff]), None);
    assert_eq!(prefix_end(&[0x00]), Some(vec![0x01]));
}

proptest::proptest! {
    #[test]
    fn prefix_range_is_exactly_the_prefix(
        prefix in proptest::collection::vec(proptest::sample::select(vec![0u8, 1, 0x41, 0xfe, 0xff]), 1..4),
        other in proptest::collection::vec(proptest::sample::select(vec![0u8, 1, 0x41, 0xfe, 0xff]), 0..6),
    ) {
        let in_range = other.as_slice() >= prefix.as_slice()
            && prefix_end(&prefix).is_none_or(|end| other.as_slice() < end.as_slice());
        proptest::prop_assert_eq!(in_range, other.starts_with(&prefix));
    }
}
