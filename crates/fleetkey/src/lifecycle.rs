//! Key states and their transitions (NIST SP 800-57 Part 1 section 7, KMIP object states).
//!
//! ```text
//! pre-active -> active -> (suspended <-> active) -> deactivated -> destroyed
//! pre-active | active | suspended | deactivated -> compromised -> destroyed-compromised
//! pre-active -> destroyed (never used)
//! ```
//! The same machine serves devices and master generations. An illegal transition is an error
//! that changes nothing.

use serde::{Deserialize, Serialize};

/// The state of a device's keys or of a master generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Created, not yet in use (a device imported but not provisioned; a generation created but
    /// not current).
    PreActive,
    /// In use.
    Active,
    /// Temporarily out of use; may return to active.
    Suspended,
    /// No longer used to protect; may still be needed to process (a retired generation whose
    /// devices have migrated; a device taken out of service before destruction).
    Deactivated,
    /// Known or suspected to be compromised (revoked).
    Compromised,
    /// Key material destroyed (zeroized).
    Destroyed,
    /// Compromised, then destroyed.
    DestroyedCompromised,
}

impl State {
    /// Every state.
    pub const ALL: [State; 7] = [
        State::PreActive,
        State::Active,
        State::Suspended,
        State::Deactivated,
        State::Compromised,
        State::Destroyed,
        State::DestroyedCompromised,
    ];

    /// The name in files, the CLI and the API: `pre-active`, `active`, ...
    pub const fn name(self) -> &'static str {
        match self {
            State::PreActive => "pre-active",
            State::Active => "active",
            State::Suspended => "suspended",
            State::Deactivated => "deactivated",
            State::Compromised => "compromised",
            State::Destroyed => "destroyed",
            State::DestroyedCompromised => "destroyed-compromised",
        }
    }

    /// The state with this name.
    pub fn from_name(name: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether `self -> to` is a legal transition.
    pub const fn can_become(self, to: State) -> bool {
        use State::*;
        matches!(
            (self, to),
            (PreActive, Active)
                | (PreActive, Destroyed)
                | (Active, Suspended)
                | (Suspended, Active)
                | (Active | Suspended, Deactivated)
                | (Deactivated, Destroyed)
                | (PreActive | Active | Suspended | Deactivated, Compromised)
                | (Compromised, DestroyedCompromised)
        )
    }

    /// The states this one may become, in the order of [`State::ALL`].
    pub fn next_states(self) -> impl Iterator<Item = State> {
        State::ALL.into_iter().filter(move |s| self.can_become(*s))
    }

    /// Checks `self -> to`.
    pub fn transition(self, to: State) -> Result<State, IllegalTransition> {
        if self.can_become(to) {
            Ok(to)
        } else {
            Err(IllegalTransition { from: self, to })
        }
    }

    /// Whether key material may still exist in this state.
    pub const fn holds_key_material(self) -> bool {
        !matches!(self, State::Destroyed | State::DestroyedCompromised)
    }

    /// Whether keys in this state may be used to protect new data (derive, provision, refresh).
    pub const fn is_usable(self) -> bool {
        matches!(self, State::Active)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A transition the state machine does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot go from {from} to {to}")]
pub struct IllegalTransition {
    /// The current state.
    pub from: State,
    /// The refused target.
    pub to: State,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in State::ALL {
            assert_eq!(State::from_name(s.name()), Some(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.name())
            );
        }
    }

    #[test]
    fn destroyed_is_final() {
        for to in State::ALL {
            assert!(!State::Destroyed.can_become(to));
            assert!(!State::DestroyedCompromised.can_become(to));
        }
    }

    #[test]
    fn the_lifecycle_of_nist_sp_800_57() {
        let path = [
            State::PreActive,
            State::Active,
            State::Suspended,
            State::Active,
            State::Deactivated,
            State::Destroyed,
        ];
        for pair in path.windows(2) {
            assert_eq!(pair[0].transition(pair[1]), Ok(pair[1]));
        }
        assert!(State::Active.transition(State::PreActive).is_err());
        assert!(State::Compromised.transition(State::Active).is_err());
        assert!(State::Compromised.transition(State::Destroyed).is_err());
        assert!(State::Deactivated.transition(State::Active).is_err());
        for s in [
            State::PreActive,
            State::Active,
            State::Suspended,
            State::Deactivated,
        ] {
            assert!(s.can_become(State::Compromised));
        }
    }
}
