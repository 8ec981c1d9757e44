//! The attacker: a node on the bus that records every frame, replays captured ones, forges
//! MACs, and injects frames secured with keys it should not have (an old generation's group
//! seed, a decommissioned device's extracted seed). It gets no feedback: the receivers count
//! what they rejected, by reason ([`fleetkey_core::secoc::Stats`]).

use fleetkey_core::secoc::{FrameKey, FreshnessCounter, Profile, Sender};
use fleetkey_core::{Epoch, RollSeed, Roller};

use crate::bus::{Bus, CanFrame, Received};
use crate::ecu::{EcuError, pdu_frame};

/// What the attacker did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AttackCounters {
    /// Captured frames replayed.
    pub replayed: u64,
    /// Frames with a forged MAC or a flipped bit.
    pub forged: u64,
    /// Frames secured with keys the attacker should not have.
    pub injected: u64,
}

/// The attacker node.
#[derive(Debug, Default)]
pub struct Attacker {
    captured: Vec<Received>,
    counters: AttackCounters,
}

impl Attacker {
    /// An attacker that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records every frame waiting on its port.
    pub fn observe(&mut self, bus: &mut dyn Bus) -> Result<(), EcuError> {
        while let Some(r) = bus.try_recv()? {
            self.captured.push(r);
        }
        Ok(())
    }

    /// The last captured frame with this id.
    pub fn last(&self, id: u32) -> Option<&CanFrame> {
        self.captured
            .iter()
            .rev()
            .find(|r| r.frame.id() == id)
            .map(|r| &r.frame)
    }

    /// The first captured frame with this id.
    pub fn first(&self, id: u32) -> Option<&CanFrame> {
        self.captured
            .iter()
            .find(|r| r.frame.id() == id)
            .map(|r| &r.frame)
    }

    /// The frames with this id captured after the first `mark` frames.
    pub fn frames_since(&self, mark: usize, id: u32) -> Vec<CanFrame> {
        self.captured
            .iter()
            .skip(mark)
            .filter(|r| r.frame.id() == id)
            .map(|r| r.frame.clone())
            .collect()
    }

    /// Frames captured.
    pub fn captured(&self) -> usize {
        self.captured.len()
    }

    /// The counters.
    pub fn counters(&self) -> AttackCounters {
        self.counters
    }

    /// Sends a captured frame again, unchanged.
    pub fn replay(&mut self, bus: &mut dyn Bus, frame: &CanFrame) -> Result<(), EcuError> {
        bus.send(frame)?;
        self.counters.replayed += 1;
        Ok(())
    }

    /// Sends a captured frame with its payload changed (first byte flipped): the MAC no longer
    /// matches.
    pub fn tamper(&mut self, bus: &mut dyn Bus, frame: &CanFrame) -> Result<(), EcuError> {
        let mut data = frame.data().to_vec();
        if let Some(b) = data.first_mut() {
            *b ^= 0x01;
        }
        let tampered = if frame.is_fd() {
            CanFrame::fd(frame.id(), frame.is_extended(), &data)?
        } else {
            CanFrame::classic(frame.id(), frame.is_extended(), &data)?
        };
        bus.send(&tampered)?;
        self.counters.forged += 1;
        Ok(())
    }

    /// Sends a frame on `pdu` whose FV is far ahead and whose MAC is a guess.
    pub fn forge(
        &mut self,
        bus: &mut dyn Bus,
        profile: Profile,
        pdu: u16,
        payload: &[u8],
        guess: u8,
    ) -> Result<(), EcuError> {
        let mut data = payload.to_vec();
        let fv = (0x4000u64 + u64::from(guess)).to_be_bytes();
        data.extend_from_slice(fv.get(8 - profile.fv_len()..).unwrap_or_default());
        data.extend(std::iter::repeat_n(guess, profile.mac_len()));
        bus.send(&pdu_frame(&profile, pdu, &data)?)?;
        self.counters.forged += 1;
        Ok(())
    }

    /// Sends a frame on `pdu` secured with the session key of `epoch` from `seed` (a seed the
    /// attacker extracted or that belongs to an old generation), with a fresh-looking FV.
    #[allow(clippy::too_many_arguments)]
    pub fn inject(
        &mut self,
        bus: &mut dyn Bus,
        profile: Profile,
        seed: &RollSeed,
        epoch: Epoch,
        pdu: u16,
        fv: u64,
        payload: &[u8],
    ) -> Result<(), EcuError> {
        let key = FrameKey::new(&Roller::new(seed).session_key(epoch, u32::from(pdu)));
        let counter = FreshnessCounter::starting_at(fv.max(1)).map_err(EcuError::Secoc)?;
        let mut sender = Sender::with_freshness(profile, pdu, counter);
        let frame = sender
            .secure_frame(&key, payload)
            .map_err(EcuError::Secoc)?;
        bus.send(&CanFrame::fd(u32::from(pdu), false, frame.as_bytes())?)?;
        self.counters.injected += 1;
        Ok(())
    }
}
