//! Offline verification of a simulator capture with the fleet's keys: the key manager's
//! [`fleetkey::fleet::network::capture`] over the simulator's frames.

use fleetkey::fleet::Fleet;
use fleetkey::fleet::network::capture::{self as fleet_capture, CapturedFrame};
use fleetkey_core::secoc::Stats;

pub use fleetkey::fleet::network::capture::{NetworkKeys, Reason, Verdict};

use crate::bus::CanFrame;
use crate::network::SimError;

/// The networks recorded in the fleet, with every group seed each may have used (an audited read
/// of the group seeds).
pub fn networks_from_fleet(fleet: &mut Fleet) -> Result<Vec<NetworkKeys>, SimError> {
    Ok(fleet.network_keys("verify a simulator capture")?)
}

/// Verifies frames in order (each with its capture time, Unix microseconds); see
/// [`fleet_capture::verify_frames`].
pub fn verify_frames(
    networks: &[NetworkKeys],
    frames: &[(u64, CanFrame)],
) -> (Vec<Verdict>, Stats) {
    let frames: Vec<CapturedFrame<'_>> = frames
        .iter()
        .map(|(at_us, f)| CapturedFrame {
            at_us: *at_us,
            id: f.id(),
            data: f.data(),
        })
        .collect();
    fleet_capture::verify_frames(networks, &frames)
}
