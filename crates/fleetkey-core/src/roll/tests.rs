use super::*;

fn vectors() -> serde_json::Value {
    serde_json::from_str(include_str!("../../../../tests/vectors/roll-v1.json")).unwrap()
}

#[test]
fn contract_vectors() {
    let cases = vectors()["cases"].as_array().unwrap().clone();
    assert!(cases.len() >= 20);
    for case in cases {
        let seed =
            RollSeed::from_slice(&hex::decode(case["seed"].as_str().unwrap()).unwrap()).unwrap();
        let epoch = Epoch(case["epoch"].as_u64().unwrap());
        let channel = u32::try_from(case["channel"].as_u64().unwrap()).unwrap();
        assert_eq!(
            hex::encode(session_info(epoch, channel)),
            case["info"].as_str().unwrap()
        );
        let key = session_key(&seed, epoch, channel);
        assert_eq!(
            hex::encode(key.expose_secret()),
            case["key"].as_str().unwrap(),
            "{case}"
        );
    }
}

#[test]
fn epochs_follow_the_time_base() {
    let schedule = RollSchedule::new(1_000, 60_000).unwrap();
    assert_eq!(schedule.epoch_at(1_000), Ok(Epoch(0)));
    assert_eq!(schedule.epoch_at(60_999), Ok(Epoch(0)));
    assert_eq!(schedule.epoch_at(61_000), Ok(Epoch(1)));
    assert_eq!(schedule.epoch_at(999), Err(RollError::BeforeOrigin));
    assert_eq!(schedule.epoch_start(Epoch(2)), Some(121_000));
    assert_eq!(schedule.epoch_start(Epoch(u64::MAX)), None);
    assert_eq!(RollSchedule::new(0, 0), Err(RollError::ZeroPeriod));
    assert_eq!(
        RollSchedule::new(0, 1).unwrap().epoch_at(u64::MAX),
        Ok(Epoch(u64::MAX))
    );
}

#[test]
fn keys_differ_by_epoch_and_channel() {
    let roller = Roller::new(&RollSeed::from_bytes([9; 32]));
    let k = roller.session_key(Epoch(5), 1);
    assert_ne!(k, roller.session_key(Epoch(6), 1));
    assert_ne!(k, roller.session_key(Epoch(5), 2));
    assert_eq!(k, roller.session_key(Epoch(5), 1));
    assert_eq!(Epoch(0).previous(), None);
    assert_eq!(Epoch(u64::MAX).next(), None);
}

proptest::proptest! {
    #[test]
    fn epoch_start_is_inside_its_epoch(origin in 0u64..1 << 40, period in 1u64..1 << 24, t in 0u64..1 << 40) {
        let schedule = RollSchedule::new(origin, period).unwrap();
        let now = origin + t;
        let epoch = schedule.epoch_at(now).unwrap();
        let start = schedule.epoch_start(epoch).unwrap();
        proptest::prop_assert!(start <= now && now - start < period);
    }
}
