//! The receiver's key window across rolls: the current epoch's session key, up to
//! `accept_previous` earlier ones (SPsec's odd/even keys when 1), and optionally the next one.

use super::SecocError;
use super::mac::FrameKey;
use crate::keys::SessionKey;
use crate::roll::{Epoch, Roller};

/// The most earlier epochs a window can accept.
pub const MAX_PREVIOUS: u8 = 3;
/// Key slots in a window: current, up to [`MAX_PREVIOUS`] earlier, next.
pub const WINDOW_CAPACITY: usize = 1 + MAX_PREVIOUS as usize + 1;

/// Which epochs' keys a [`KeyWindow`] holds around its current epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowConfig {
    accept_previous: u8,
    accept_next: bool,
}

impl Default for WindowConfig {
    /// One previous epoch (odd/even keys) and the next epoch (clock skew).
    fn default() -> Self {
        Self {
            accept_previous: 1,
            accept_next: true,
        }
    }
}

impl WindowConfig {
    /// Accept `accept_previous` (0..=[`MAX_PREVIOUS`]) earlier epochs, and the next epoch when
    /// `accept_next`.
    pub const fn new(accept_previous: u8, accept_next: bool) -> Result<Self, SecocError> {
        if accept_previous > MAX_PREVIOUS {
            return Err(SecocError::WindowTooWide);
        }
        Ok(Self {
            accept_previous,
            accept_next,
        })
    }

    /// Earlier epochs accepted.
    pub const fn accept_previous(&self) -> u8 {
        self.accept_previous
    }

    /// Whether the next epoch is accepted.
    pub const fn accept_next(&self) -> bool {
        self.accept_next
    }

    /// The lowest and highest epoch of the window around `current`.
    fn bounds(&self, current: Epoch) -> (u64, u64) {
        let low = current.0.saturating_sub(u64::from(self.accept_previous));
        let high = if self.accept_next {
            current.0.saturating_add(1)
        } else {
            current.0
        };
        (low, high)
    }
}

struct EpochKey {
    epoch: Epoch,
    key: FrameKey,
}

/// The session keys a receiver accepts, each prepared once ([`FrameKey`]), in fixed slots.
///
/// One window serves every [`Receiver`](super::Receiver) on one channel (one roll seed and
/// channel number). Its owner moves it forward with its own clock ([`advance_to`]); keys that
/// fall out of the window are dropped and zeroized at once. Verification tries the current
/// epoch's key first, then the earlier ones (newest first), then the next one.
///
/// [`advance_to`]: KeyWindow::advance_to
pub struct KeyWindow {
    config: WindowConfig,
    current: Option<Epoch>,
    slots: [Option<EpochKey>; WINDOW_CAPACITY],
    /// Slot indices in the order keys are tried; the first `tries` are valid.
    order: [u8; WINDOW_CAPACITY],
    tries: u8,
}

impl core::fmt::Debug for KeyWindow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyWindow")
            .field("config", &self.config)
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

impl KeyWindow {
    /// An empty window (no key: every frame is rejected until [`advance_to`](Self::advance_to)).
    pub const fn new(config: WindowConfig) -> Self {
        Self {
            config,
            current: None,
            slots: [None, None, None, None, None],
            order: [0; WINDOW_CAPACITY],
            tries: 0,
        }
    }

    /// A window holding one fixed key for `epoch`, accepting no other epoch (no rolling).
    pub fn single(epoch: Epoch, key: &SessionKey) -> Self {
        let mut window = Self::new(WindowConfig {
            accept_previous: 0,
            accept_next: false,
        });
        window.current = Some(epoch);
        if let Some(slot) = window.slots.first_mut() {
            *slot = Some(EpochKey {
                epoch,
                key: FrameKey::new(key),
            });
        }
        window.update_order();
        window
    }

    /// The window's configuration.
    pub const fn config(&self) -> WindowConfig {
        self.config
    }

    /// The current epoch, `None` before the first advance.
    pub const fn current(&self) -> Option<Epoch> {
        self.current
    }

    /// Whether the window holds a key for `epoch`.
    pub fn contains(&self, epoch: Epoch) -> bool {
        self.key(epoch).is_some()
    }

    /// How many keys the window holds.
    pub const fn len(&self) -> usize {
        self.tries as usize
    }

    /// Whether the window holds no key.
    pub const fn is_empty(&self) -> bool {
        self.tries == 0
    }

    /// The prepared key of `epoch`, if the window holds it.
    pub fn key(&self, epoch: Epoch) -> Option<&FrameKey> {
        self.slots
            .iter()
            .flatten()
            .find(|k| k.epoch == epoch)
            .map(|k| &k.key)
    }

    /// Moves the window to `epoch` (the receiver's own clock): zeroizes keys outside it and
    /// derives the missing ones on `channel`. Going back to an earlier epoch is refused.
    pub fn advance_to(
        &mut self,
        epoch: Epoch,
        roller: &Roller,
        channel: u32,
    ) -> Result<(), SecocError> {
        self.advance_with(epoch, |e| roller.session_key(e, channel))
    }

    /// As [`advance_to`](Self::advance_to), with session keys from `key_of` (for example a
    /// hardware key store). `key_of` is called only for epochs the window lacks.
    pub fn advance_with(
        &mut self,
        epoch: Epoch,
        mut key_of: impl FnMut(Epoch) -> SessionKey,
    ) -> Result<(), SecocError> {
        if self.current.is_some_and(|current| epoch < current) {
            return Err(SecocError::EpochBackwards);
        }
        let (low, high) = self.config.bounds(epoch);
        for slot in &mut self.slots {
            if slot
                .as_ref()
                .is_some_and(|k| k.epoch.0 < low || k.epoch.0 > high)
            {
                // Drops the prepared key in place; `FrameKey` zeroizes on drop.
                *slot = None;
            }
        }
        self.current = Some(epoch);
        for e in low..=high {
            if self.contains(Epoch(e)) {
                continue;
            }
            // The window spans at most MAX_PREVIOUS + 2 epochs, exactly the slot count, so a
            // free slot exists for every missing epoch.
            if let Some(slot) = self.slots.iter_mut().find(|s| s.is_none()) {
                let session = key_of(Epoch(e));
                *slot = Some(EpochKey {
                    epoch: Epoch(e),
                    key: FrameKey::new(&session),
                });
            }
        }
        self.update_order();
        Ok(())
    }

    /// Records the try order (current, earlier newest first, next) as slot indices, once per
    /// advance, so that a verification does not search the slots.
    fn update_order(&mut self) {
        self.tries = 0;
        let Some(current) = self.current else {
            return;
        };
        let previous = u64::from(self.config.accept_previous);
        let next = current.0.checked_add(1).filter(|_| self.config.accept_next);
        let epochs = (0..=previous)
            .filter_map(|back| current.0.checked_sub(back))
            .chain(next);
        for epoch in epochs {
            let index = self
                .slots
                .iter()
                .position(|s| s.as_ref().is_some_and(|k| k.epoch.0 == epoch));
            let (Some(index), Some(entry)) = (index, self.order.get_mut(usize::from(self.tries)))
            else {
                continue;
            };
            // WINDOW_CAPACITY is 5: a slot index always fits a u8.
            *entry = index as u8;
            self.tries += 1;
        }
    }

    /// The keys in the order a receiver tries them: current, earlier (newest first), next.
    pub(crate) fn ordered(&self) -> impl Iterator<Item = (Epoch, &FrameKey)> {
        let order = self
            .order
            .get(..usize::from(self.tries))
            .unwrap_or_default();
        order
            .iter()
            .filter_map(|&i| self.slots.get(usize::from(i))?.as_ref())
            .map(|k| (k.epoch, &k.key))
    }
}
