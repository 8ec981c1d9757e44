//! Every fault and attacker case of the simulator, on a governed fleet on the embedded defaults:
//! replay, forgery, old-generation injection, missed epoch roll, missed key update and
//! resynchronisation, power cycle counters, decommissioned node, clock skew within and beyond
//! the key window, refused grants, stale records.

use std::sync::Arc;
use std::time::Duration;

use fleetkey::fleet::{Access, Clock, Fleet, InitOptions, MasterBackup, SecretString};
use fleetkey::model::{DeviceSerial, Scheme};
use fleetkey::module::soft::WorkFactor;
use fleetkey_core::she::SlotId;
use fleetkey_core::{Epoch, Key128, RollSeed};
use fleetkey_sim::ecu::EcuState;
use fleetkey_sim::msg::code;
use fleetkey_sim::network::{GrantOutcome, Network, NetworkSpec, ecu_pdu, payload};

const START_MS: u64 = 1_767_225_600_000;
const TRANSPORT: [u8; 16] = *b"factory-transprt";

struct FixedClock;
impl Clock for FixedClock {
    fn now_ms(&self) -> i64 {
        START_MS as i64
    }
}

fn fleet(dir: &std::path::Path) -> Fleet {
    let access = Access {
        passphrase: SecretString::from("sim test passphrase".to_owned()),
        actor: "test".into(),
        clock: Arc::new(FixedClock),
    };
    Fleet::init(
        &dir.join("fleet"),
        InitOptions {
            fleet_id: "sim".into(),
            scheme: Scheme::Governed,
            she_transport_key: Some(Key128::from_bytes(TRANSPORT)),
            work_factor: WorkFactor::Log2(4),
            backup: MasterBackup::NoBackup,
        },
        access,
    )
    .unwrap()
}

fn network(fleet: &mut Fleet, ecus: u16, beacons: bool) -> Network {
    let mut spec = NetworkSpec::new("body", ecus, TRANSPORT);
    spec.beacons = beacons;
    Network::provision(fleet, spec, START_MS + 10_000).unwrap()
}

fn seconds(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn provisioned_network_accepts_every_frame_across_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = fleet(dir.path());
    let mut net = network(&mut fleet, 4, true);
    for i in 0..4 {
        let ecu = net.ecu(i).unwrap();
        assert_eq!(ecu.seed_version(), Some((1, 0)), "{}", ecu.serial());
        assert!(ecu.has_session_keys());
        assert_eq!(ecu.counters().she_accepted, 4, "initial load: MEK, KEY_1..3");
        assert!(!ecu.she().is_empty(SlotId::Key4));
    }
    net.run_for(seconds(3)).unwrap();
    let gw = net.gateway.stats();
    assert_eq!(gw.rejected(), 0, "{gw:?}");
    assert!(gw.accepted >= 4 * 29, "{gw:?}");
    let all = net.stats();
    assert_eq!(all.rejected(), 0, "{all:?}");
    // Each ECU verifies the three others.
    assert!(net.ecu(0).unwrap().stats().accepted >= 3 * 29);
}

#[test]
fn attacker_replay_forgery_and_tampering_are_rejected_by_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = fleet(dir.path());
    let mut net = network(&mut fleet, 3, true);
    net.run_for(seconds(2)).unwrap();
    let before = net.gateway.member_stats(ecu_pdu(0));
    let old = net.attacker.first(u32::from(ecu_pdu(0))).unwrap().clone();
    let last = net.attacker.last(u32::from(ecu_pdu(0))).unwrap().clone();
    net.attack(|a, bus| a.replay(bus, &last)).unwrap();
    net.attack(|a, bus| a.replay(bus, &old)).unwrap();
    net.attack(|a, bus| a.tamper(bus, &last)).unwrap();
    let profile = net.spec().profile;
    net.attack(|a, bus| a.forge(bus, profile, ecu_pdu(0), &payload(ecu_pdu(0), 9), 0x5A))
        .unwrap();
    let after = net.gateway.member_stats(ecu_pdu(0));
    assert_eq!(after.accepted, before.accepted);
    // The last frame replayed is a replay; the first one, two epochs old, no longer has its key
    // in the window and fails authentication, as do the tampered and the forged frames.
    assert_eq!(after.replay - before.replay, 1, "{after:?}");
    assert_eq!(after.authentication - before.authentication, 3, "{after:?}");
    // The other ECUs rejected them too.
    assert_eq!(net.ecu(1).unwrap().stats().replay, 1);
    assert_eq!(net.ecu(1).unwrap().stats().authentication, 3);
    // Traffic goes on.
    net.run_for(seconds(1)).unwrap();
    assert!(net.gateway.member_stats(ecu_pdu(0)).accepted > after.accepted);
}

#[test]
fn clock_skew_within_the_window_is_accepted_beyond_it_rejected_until_resync() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = fleet(dir.path());
    let mut net = network(&mut fleet, 3, false);
    // ECU 1 runs 700 ms ahead (within the next-epoch key), ECU 2 2.5 epochs behind.
    net.ecu_mut(1).unwrap().set_skew(700);
    net.ecu_mut(2).unwrap().set_skew(-2500);
    net.run_for(seconds(3)).unwrap();
    let ahead = net.gateway.member_stats(ecu_pdu(1));
    assert_eq!(ahead.rejected(), 0, "{ahead:?}");
    assert!(ahead.accepted > 20);
    let behind = net.gateway.member_stats(ecu_pdu(2));
    assert_eq!(behind.accepted, 0, "{behind:?}");
    assert!(behind.authentication > 20, "{behind:?}");
    // The gateway's beacon resynchronises it; then its frames are accepted again.
    net.set_beacons(true);
    net.run_for(seconds(2)).unwrap();
    assert_eq!(net.ecu(2).unwrap().counters().resyncs, 1);
    let resynced = net.gateway.member_stats(ecu_pdu(2));
    assert!(resynced.accepted >= 15, "{resynced:?}");
    // ECU 1, 700 ms ahead (more than a tenth of an epoch), is set right once too.
    assert_eq!(net.ecu(1).unwrap().counters().resyncs, 1);
}
