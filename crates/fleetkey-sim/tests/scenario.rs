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
use fleetkey_core::{Key128, RollSeed};
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
    // ECU 3 is a classic CAN node (profile p1), the others CAN FD (fd64).
    let mut spec = NetworkSpec::new("body", 4, TRANSPORT);
    spec.classic_ecus = 1;
    let mut net = Network::provision(&mut fleet, spec, START_MS + 10_000).unwrap();
    for i in 0..4 {
        let ecu = net.ecu(i).unwrap();
        assert_eq!(ecu.seed_version(), Some((1, 0)), "{}", ecu.serial());
        assert!(ecu.has_session_keys());
        assert_eq!(
            ecu.counters().she_accepted,
            4,
            "initial load: MEK, KEY_1..3"
        );
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
    assert!(net.ecu(3).unwrap().stats().accepted >= 3 * 29);
    let capture = net.capture();
    let classic = capture
        .iter()
        .filter(|r| r.frame.id() == u32::from(ecu_pdu(3)))
        .collect::<Vec<_>>();
    assert!(classic.len() >= 29);
    assert!(
        classic
            .iter()
            .all(|r| !r.frame.is_fd() && r.frame.data().len() == 8)
    );
    assert!(net.gateway.member_stats(ecu_pdu(3)).accepted >= 29);
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

#[test]
fn missed_epoch_roll_is_rejected_until_the_beacon_resynchronises() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = fleet(dir.path());
    let mut net = network(&mut fleet, 3, false);
    net.run_for(seconds(1)).unwrap();
    let now = net.now_ms();
    net.ecu_mut(2).unwrap().stall_clock(now);
    net.run_for(seconds(3)).unwrap();
    let stalled = net.gateway.member_stats(ecu_pdu(2));
    assert!(
        stalled.authentication > 0,
        "frames under a stale epoch key: {stalled:?}"
    );
    // ECU 2 cannot verify the others either.
    assert!(net.ecu(2).unwrap().stats().authentication > 0);
    net.set_beacons(true);
    net.run_for(seconds(2)).unwrap();
    assert_eq!(net.ecu(2).unwrap().counters().resyncs, 1);
    let before = net.gateway.member_stats(ecu_pdu(2));
    net.run_for(seconds(1)).unwrap();
    let after = net.gateway.member_stats(ecu_pdu(2));
    assert!(after.accepted >= before.accepted + 9, "{after:?}");
    assert_eq!(
        after.rejected(),
        before.rejected(),
        "no rejection after the resync"
    );
}

#[test]
fn power_cycle_keeps_counters_no_fv_reused_replays_still_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = fleet(dir.path());
    let mut net = network(&mut fleet, 2, true);
    net.run_for(seconds(2)).unwrap();
    let last = net.attacker.last(u32::from(ecu_pdu(0))).unwrap().clone();
    let writes = net.ecu(0).unwrap().counters().nvm_writes;
    // Power cut on both ends of the link: sender ECU 0 and receiver ECU 1.
    net.power_off(0);
    net.power_off(1);
    net.run_for(Duration::from_millis(500)).unwrap();
    net.power_on(0).unwrap();
    net.power_on(1).unwrap();
    assert!(
        net.ecu(0).unwrap().has_session_keys(),
        "keys come back from the SHE"
    );
    net.attack(|a, bus| a.replay(bus, &last)).unwrap();
    assert_eq!(
        net.ecu(1).unwrap().stats().replay,
        1,
        "the receiver's FV survived"
    );
    let before = net.gateway.member_stats(ecu_pdu(0));
    net.run_for(seconds(1)).unwrap();
    let after = net.gateway.member_stats(ecu_pdu(0));
    assert!(after.accepted >= before.accepted + 9, "{after:?}");
    assert_eq!(after.rejected(), before.rejected(), "{after:?}");
    assert!(net.ecu(0).unwrap().counters().nvm_writes > writes);
    assert_eq!(net.ecu(0).unwrap().counters().power_cycles, 1);
    // The FVs after the cycle jumped past the reservation: every one is above every FV sent
    // before the power cut.
    let fvs = |net: &Network| -> Vec<u64> {
        net.capture()
            .iter()
            .filter(|r| r.frame.id() == u32::from(ecu_pdu(0)))
            .map(|r| u64::from(u16::from_be_bytes([r.frame.data()[22], r.frame.data()[23]])))
            .collect()
    };
    let all = fvs(&net);
    let cut = all.iter().position(|&fv| fv == fv_of(&last)).unwrap();
    let (before_cut, after_cut) = all.split_at(cut + 1);
    // after_cut starts with the attacker's replay of `last`; then ECU 0's own frames.
    let max_before = before_cut.iter().max().copied().unwrap();
    assert!(after_cut[1..].iter().all(|&fv| fv > max_before), "{all:?}");
    assert!(
        after_cut[1] > max_before + 1,
        "the unused reservation is skipped: {all:?}"
    );
}

fn fv_of(frame: &fleetkey_sim::bus::CanFrame) -> u64 {
    u64::from(u16::from_be_bytes([frame.data()[22], frame.data()[23]]))
}

#[test]
fn missed_key_update_is_retried_and_the_ecu_resynchronises() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = fleet(dir.path());
    let mut net = network(&mut fleet, 3, true);
    net.run_for(seconds(1)).unwrap();
    net.power_off(2);
    // Re-key while ECU 2 is off: it misses the new group seed.
    let version = net.rekey(&mut fleet, "scheduled re-key").unwrap();
    assert_eq!(version, (1, 1));
    assert_eq!(net.ecu(0).unwrap().seed_version(), Some((1, 1)));
    assert_eq!(net.ecu(2).unwrap().seed_version(), Some((1, 0)));
    assert_eq!(net.gateway.pending("ECU-0002"), 1);
    // The first try's first frame waits 1 s for a flow control (ISO-TP N_Bs), then it is resent.
    net.run_for(seconds(3)).unwrap();
    assert!(net.gateway.counters().retries > 0, "the gateway retries");
    // Back on: the retried update arrives and it resynchronises.
    net.power_on(2).unwrap();
    assert_eq!(net.ecu(2).unwrap().seed_version(), Some((1, 1)));
    assert_eq!(net.gateway.member_seed("ECU-0002"), Some((1, 1)));
    assert_eq!(net.gateway.pending("ECU-0002"), 0);
    let before = net.gateway.member_stats(ecu_pdu(2));
    net.run_for(seconds(1)).unwrap();
    let after = net.gateway.member_stats(ecu_pdu(2));
    assert!(after.accepted >= before.accepted + 9, "{after:?}");
    assert_eq!(after.rejected(), before.rejected());
}

#[test]
fn missed_device_refresh_is_delivered_when_the_ecu_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = fleet(dir.path());
    let mut net = network(&mut fleet, 2, true);
    net.power_off(1);
    assert_eq!(net.refresh_ecu(&mut fleet, 1, "workshop").unwrap(), 4);
    assert_eq!(net.gateway.pending("ECU-0001"), 4);
    // The group seed is re-wrapped under ECU 1's new KEY_UPDATE key, queued behind the refresh.
    net.rekey(&mut fleet, "after refresh").unwrap();
    net.power_on(1).unwrap();
    assert_eq!(net.gateway.pending("ECU-0001"), 0);
    let ecu = net.ecu(1).unwrap();
    assert_eq!(ecu.counters().she_accepted, 4 + 4);
    assert_eq!(
        ecu.she().counter(SlotId::Key1).unwrap().get(),
        1,
        "revision 1"
    );
    assert_eq!(ecu.seed_version(), Some((1, 1)));
    let dev = fleet
        .device(&DeviceSerial::new("ECU-0001").unwrap())
        .unwrap();
    assert_eq!(dev.revision, 1);
}

/// Rotation to generation 2 (record pushed, every device refreshed, network re-keyed), then
/// generation 1 revoked: frames under the generation-1 group seed and a replayed generation-1
/// seed update are refused.
#[test]
fn rotation_then_old_generation_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = fleet(dir.path());
    let mut net = network(&mut fleet, 3, true);
    net.run_for(seconds(1)).unwrap();
    // The attacker keeps the generation-1 seed (as if that generation's master leaked) and the
    // ISO-TP frames of ECU 0's generation-1 seed update.
    let old_seed = {
        let gw = fleet
            .device(&DeviceSerial::new("GW-body").unwrap())
            .unwrap();
        let keys =
            fleetkey::fleet::material::DeviceKeys::derive(fleet.module().unwrap(), &gw, 1, 0)
                .unwrap();
        RollSeed::from_bytes(*keys.roll_seed.expose_secret())
    };
    let mark = net.attacker.captured();
    net.rekey(&mut fleet, "gen-1 re-key").unwrap();
    let seed_update = net.attacker.frames_since(mark, 0x600);
    assert!(seed_update.len() >= 3, "first frame and consecutive frames");

    fleet.rotate("yearly", &MasterBackup::NoBackup).unwrap();
    net.push_latest_record(&mut fleet).unwrap();
    for i in 0..3 {
        net.refresh_ecu(&mut fleet, i, "migrate to generation 2")
            .unwrap();
    }
    assert_eq!(net.rekey(&mut fleet, "generation 2").unwrap(), (2, 2));
    fleet.compromise_generation(1, "leaked").unwrap();
    let seq = net.push_latest_record(&mut fleet).unwrap();
    for i in 0..3 {
        let ecu = net.ecu(i).unwrap();
        assert_eq!(ecu.seed_version(), Some((2, 2)));
        let gov = ecu.governance().unwrap();
        assert_eq!(gov.sequence(), Some(seq));
        assert_eq!(gov.revoked_generations(), &[1]);
    }
    net.run_for(seconds(1)).unwrap();
    let before = net.gateway.member_stats(ecu_pdu(1));
    let epoch = net.schedule().epoch_at(net.now_ms()).unwrap();
    let profile = net.spec().profile;
    net.attack(|a, bus| {
        a.inject(
            bus,
            profile,
            &old_seed,
            epoch,
            ecu_pdu(1),
            5000,
            &payload(ecu_pdu(1), 1),
        )
    })
    .unwrap();
    let after = net.gateway.member_stats(ecu_pdu(1));
    assert_eq!(after.accepted, before.accepted);
    assert_eq!(after.authentication, before.authentication + 1);
    // The replayed generation-1 seed update: refused by governance before the SHE sees it.
    let refused = net.ecu(0).unwrap().counters().seeds_refused;
    for f in &seed_update {
        net.attack(|a, bus| a.replay(bus, f)).unwrap();
    }
    let ecu = net.ecu_mut(0).unwrap();
    assert_eq!(ecu.counters().seeds_refused, refused + 1);
    assert!(
        ecu.take_events()
            .iter()
            .any(|e| e.contains("generation 1") && e.contains("revoked")),
        "refused as a revoked generation"
    );
    assert_eq!(ecu.seed_version(), Some((2, 2)));
    net.run_for(seconds(1)).unwrap();
    assert_eq!(net.gateway.stats().rejected(), after.rejected());
}

#[test]
fn stale_record_replay_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = fleet(dir.path());
    let mut net = network(&mut fleet, 2, true);
    let old = fleet.latest_generation_record().unwrap().unwrap();
    fleet.rotate("rotate", &MasterBackup::NoBackup).unwrap();
    net.push_latest_record(&mut fleet).unwrap();
    let seq = net.ecu(0).unwrap().governance().unwrap().sequence();
    net.gateway.push_record(&old.bytes);
    net.pump().unwrap();
    let ecu = net.ecu(0).unwrap();
    assert_eq!(ecu.governance().unwrap().sequence(), seq, "anti-rollback");
    assert_eq!(ecu.counters().records_refused, 1);
    assert!(net.gateway.counters().refused >= 2, "both ECUs refused it");
}

#[test]
fn technician_grant_accepted_then_denied() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = fleet(dir.path());
    let mut net = network(&mut fleet, 2, true);
    let (id, grant) = net.issue_grant(&mut fleet, "tech-anna").unwrap();
    assert_eq!(
        net.present_grant(0, &grant).unwrap(),
        GrantOutcome::Accepted
    );
    fleet.deny_grant(id, "lost laptop").unwrap();
    net.push_latest_record(&mut fleet).unwrap();
    assert_eq!(
        net.present_grant(0, &grant).unwrap(),
        GrantOutcome::Refused(code::GRANT_DENIED)
    );
    assert_eq!(
        net.present_grant(1, &grant).unwrap(),
        GrantOutcome::Refused(code::GRANT_DENIED)
    );
    assert_eq!(net.ecu(0).unwrap().counters().grants_accepted, 1);
}

#[test]
fn decommissioned_device_is_erased_and_its_stolen_seed_no_longer_works() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = fleet(dir.path());
    let mut net = network(&mut fleet, 3, true);
    net.run_for(seconds(1)).unwrap();
    // The attacker extracts ECU 1's group seed before it is scrapped.
    let stolen = net
        .ecu(1)
        .unwrap()
        .she()
        .roll_seed_software_only(SlotId::Key4, SlotId::Key5)
        .unwrap();
    let version = net.decommission(&mut fleet, 1, "scrapped").unwrap();
    assert_eq!(version, (1, 1));
    let ecu = net.ecu(1).unwrap();
    assert_eq!(ecu.state(), EcuState::Decommissioned);
    for slot in SlotId::ALL {
        assert!(ecu.she().is_empty(slot), "{slot} erased");
    }
    assert!(ecu.governance().is_none());
    assert!(!net.send_from(1).unwrap(), "it cannot send");
    let dev = fleet
        .device(&DeviceSerial::new("ECU-0001").unwrap())
        .unwrap();
    // Revoked (stolen), then decommissioned: its key material is destroyed.
    assert_eq!(dev.state.name(), "destroyed-compromised");
    // Frames made with its extracted seed are refused by the gateway and the others.
    let before = net.gateway.member_stats(ecu_pdu(1));
    let epoch = net.schedule().epoch_at(net.now_ms()).unwrap();
    let profile = net.spec().profile;
    net.attack(|a, bus| {
        a.inject(
            bus,
            profile,
            &stolen,
            epoch,
            ecu_pdu(1),
            900,
            &payload(ecu_pdu(1), 3),
        )
    })
    .unwrap();
    let after = net.gateway.member_stats(ecu_pdu(1));
    assert_eq!(after.accepted, before.accepted);
    assert_eq!(after.authentication, before.authentication + 1);
    net.run_for(seconds(1)).unwrap();
    assert_eq!(
        net.gateway.stats().rejected(),
        after.rejected(),
        "the others carry on"
    );
}

#[test]
fn capture_verifies_offline_with_the_fleets_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = fleet(dir.path());
    let mut net = network(&mut fleet, 3, true);
    net.run_for(seconds(2)).unwrap();
    net.rekey(&mut fleet, "re-key").unwrap();
    net.run_for(seconds(2)).unwrap();
    let last = net.attacker.last(u32::from(ecu_pdu(0))).unwrap().clone();
    net.attack(|a, bus| a.replay(bus, &last)).unwrap();
    let path = dir.path().join("capture.log");
    let lines = net.write_capture(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let frames: Vec<_> = fleetkey::canlog::read_log(text.as_bytes())
        .map(|l| fleetkey_sim::bus::CanFrame::from_log_line(&l.unwrap()).unwrap())
        .collect();
    assert_eq!(frames.len(), lines);
    let networks = fleetkey_sim::capture::networks_from_fleet(&mut fleet).unwrap();
    assert_eq!(networks.len(), 1);
    let (verdicts, stats) = fleetkey_sim::capture::verify_frames(&networks, &frames);
    let online = net.gateway.stats();
    assert_eq!(stats.replay, 1);
    assert_eq!(stats.rejected(), online.rejected());
    // Every PDU the gateway accepted verifies offline, plus the beacons.
    assert_eq!(
        stats.accepted,
        online.accepted + net.gateway.counters().beacons
    );
    assert!(
        verdicts
            .iter()
            .any(|v| matches!(v, fleetkey_sim::capture::Verdict::Skipped))
    );
    assert!(
        verdicts
            .iter()
            .any(|v| matches!(v, fleetkey_sim::capture::Verdict::Ok { revision: 1, .. }))
    );
}

#[test]
fn replayed_key_updates_are_refused_by_the_she() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = fleet(dir.path());
    let mut net = network(&mut fleet, 2, true);
    // Everything the gateway sent ECU 0 over ISO-TP since the start: the initial SHE load, the
    // record, the group seed.
    let frames = net.attacker.frames_since(0, 0x600);
    assert!(frames.len() >= 8);
    let before = net.ecu(0).unwrap().counters();
    for f in &frames {
        net.attack(|a, bus| a.replay(bus, f)).unwrap();
    }
    let after = net.ecu(0).unwrap().counters();
    assert_eq!(
        after.she_refused - before.she_refused,
        4,
        "counters did not increase"
    );
    assert_eq!(after.seeds_refused - before.seeds_refused, 1);
    assert_eq!(after.she_accepted, before.she_accepted);
    assert_eq!(net.ecu(0).unwrap().seed_version(), Some((1, 0)));
    net.run_for(seconds(1)).unwrap();
    assert_eq!(net.gateway.stats().rejected(), 0);
    assert!(net.gateway.member_stats(ecu_pdu(0)).accepted >= 9);
}
