//! The fleet's lifecycle policy: cryptoperiods and lifetimes, kept in the store (`meta`
//! `lifecycle.policy`) and changed only by an audited transaction (`policy.set`).
//!
//! The defaults and limits follow NIST SP 800-57 Part 1 Rev. 5, section 5.3 (cryptoperiods):
//! a generation's master is a symmetric key-derivation key, whose suggested originator-usage
//! period is about one year; no symmetric key's originator-usage period should exceed two years.
//! The recipient-usage period (how long the previous generation is still accepted while devices
//! migrate) may not exceed the originator-usage period, so at most two generations are ever in
//! use at once. `docs/lifecycle.md` has the table.

use serde::{Deserialize, Serialize};

use super::Fleet;
use crate::error::Error;
use crate::model::UnixMillis;
use crate::store::{Tx, read_tx, transact};

/// The store meta key of the policy.
pub const META_POLICY: &str = "lifecycle.policy";
/// The audit action of a policy change.
pub const POLICY_ACTION: &str = "policy.set";

const SECOND: u64 = 1;
const MINUTE: u64 = 60;
const HOUR: u64 = 3_600;
const DAY: u64 = 86_400;
const WEEK: u64 = 7 * DAY;
/// A year of the policy: 365 days.
const YEAR: u64 = 365 * DAY;

/// A length of time in whole seconds, written `<n><unit>` with unit `s`, `m`, `h`, `d`, `w` or
/// `y` (365 days): `365d`, `12h`, `2y`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(u64);

impl Span {
    /// `n` seconds.
    pub const fn seconds(n: u64) -> Span {
        Span(n)
    }
    /// `n` days.
    pub const fn days(n: u64) -> Span {
        Span(n * DAY)
    }
    /// `n` hours.
    pub const fn hours(n: u64) -> Span {
        Span(n * HOUR)
    }
    /// In seconds.
    pub const fn as_secs(self) -> u64 {
        self.0
    }
    /// In milliseconds (saturating).
    pub fn as_ms(self) -> i64 {
        i64::try_from(self.0.saturating_mul(1000)).unwrap_or(i64::MAX)
    }
    /// As a `std` duration.
    pub const fn as_duration(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.0)
    }

    /// Parses `<n><unit>`; `field` names the input in the error. Zero, negative, fractional and
    /// unit-less values and unknown units are refused.
    pub fn parse(field: &str, text: &str) -> Result<Span, Error> {
        let text = text.trim();
        let bad = |problem: String| Error::invalid(field, problem);
        if text.starts_with('-') {
            return Err(bad("must not be negative".into()));
        }
        let digits = text.chars().take_while(char::is_ascii_digit).count();
        let (number, unit) = text.split_at(digits);
        if number.is_empty() {
            return Err(bad(
                "a whole number and a unit: s, m, h, d, w or y (e.g. 365d, 12h)".into(),
            ));
        }
        let per = match unit {
            "s" => SECOND,
            "m" => MINUTE,
            "h" => HOUR,
            "d" => DAY,
            "w" => WEEK,
            "y" => YEAR,
            "" => {
                return Err(bad(format!(
                    "{number} has no unit: add s, m, h, d, w or y (e.g. {number}d)"
                )));
            }
            other => {
                let shown: String = other.chars().take(8).collect();
                return Err(bad(format!(
                    "unknown unit {shown:?}: use s, m, h, d, w or y (e.g. 365d, 12h)"
                )));
            }
        };
        let n: u64 = number
            .parse()
            .map_err(|_| bad("the number is too large".into()))?;
        if n == 0 {
            return Err(bad("must be longer than zero".into()));
        }
        n.checked_mul(per)
            .map(Span)
            .ok_or_else(|| bad("too long".into()))
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (unit, per) in [
            ("y", YEAR),
            ("w", WEEK),
            ("d", DAY),
            ("h", HOUR),
            ("m", MINUTE),
        ] {
            if self.0 >= per && self.0.is_multiple_of(per) {
                return write!(f, "{}{unit}", self.0 / per);
            }
        }
        write!(f, "{}s", self.0)
    }
}

impl Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Span::parse("span", &text).map_err(serde::de::Error::custom)
    }
}

/// The lifecycle policy of a fleet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Originator-usage period of a generation's master: how long a generation stays current
    /// before the next one must be activated.
    pub rotation_period: Span,
    /// Recipient-usage period: how long the previous generation is still accepted once the next
    /// one is current (the time devices have to migrate); then it is deactivated.
    pub acceptance_period: Span,
    /// The longest an active device may keep its keys without a refresh (none: no limit).
    pub device_max_age: Option<Span>,
    /// How long a deactivated generation is kept before its master is destroyed.
    pub destroy_after: Span,
    /// The validity of a grant issued without one.
    pub grant_lifetime: Span,
    /// The longest validity a grant may be issued with.
    pub grant_max_lifetime: Span,
    /// The lifetime of a service token issued without an expiry.
    pub token_lifetime: Span,
    /// The longest lifetime a service token may be issued with.
    pub token_max_lifetime: Span,
    /// How long the service keeps idempotency records (and the responses in them).
    pub idempotency_retention: Span,
}

/// The limits a policy is checked against, with the reason shown when a value is refused.
pub struct Limit {
    /// The field.
    pub field: &'static str,
    /// The shortest value allowed.
    pub min: Span,
    /// The longest value allowed.
    pub max: Span,
    /// Why (shown in errors and `policy show`).
    pub why: &'static str,
}

/// Every limit of a policy field (besides the relations checked by [`Policy::validate`]).
pub const LIMITS: &[Limit] = &[
    Limit {
        field: "rotation_period",
        min: Span::days(1),
        max: Span::days(730),
        why: "SP 800-57 Pt. 1 sec. 5.3: a symmetric key's originator-usage period is at most 2 years (about 1 year for a key-derivation key)",
    },
    Limit {
        field: "acceptance_period",
        min: Span::days(1),
        max: Span::days(730),
        why: "the recipient-usage period of the previous generation may not exceed the rotation period (at most two generations in use)",
    },
    Limit {
        field: "device_max_age",
        min: Span::days(1),
        max: Span::days(730),
        why: "SP 800-57 Pt. 1 sec. 5.3: a symmetric authentication key's originator-usage period is at most 2 years",
    },
    Limit {
        field: "destroy_after",
        min: Span::hours(1),
        max: Span::days(365),
        why: "a deactivated master is kept only to recover from a failed migration; keep it no longer than a year",
    },
    Limit {
        field: "grant_lifetime",
        min: Span::hours(1),
        max: Span::days(365),
        why: "at most the maximum grant lifetime",
    },
    Limit {
        field: "grant_max_lifetime",
        min: Span::hours(1),
        max: Span::days(365),
        why: "a grant is an authorization: SP 800-57 Pt. 1 sec. 5.3 keeps authorization keys under 2 years; grants are denied by record, so keep them short",
    },
    Limit {
        field: "token_lifetime",
        min: Span::hours(1),
        max: Span::days(730),
        why: "at most the maximum token lifetime",
    },
    Limit {
        field: "token_max_lifetime",
        min: Span::hours(1),
        max: Span::days(730),
        why: "a bearer token is an authorization secret: at most 2 years (SP 800-57 Pt. 1 sec. 5.3)",
    },
    Limit {
        field: "idempotency_retention",
        min: Span::hours(1),
        max: Span::days(365),
        why: "stored responses carry wrapped key material: keep them only as long as clients retry",
    },
];

impl Default for Policy {
    fn default() -> Self {
        Policy {
            rotation_period: Span::days(365),
            acceptance_period: Span::days(90),
            device_max_age: None,
            destroy_after: Span::days(30),
            grant_lifetime: Span::days(7),
            grant_max_lifetime: Span::days(90),
            token_lifetime: Span::days(90),
            token_max_lifetime: Span::days(365),
            idempotency_retention: Span::days(7),
        }
    }
}

impl Policy {
    fn values(&self) -> [(&'static str, Option<Span>); 9] {
        [
            ("rotation_period", Some(self.rotation_period)),
            ("acceptance_period", Some(self.acceptance_period)),
            ("device_max_age", self.device_max_age),
            ("destroy_after", Some(self.destroy_after)),
            ("grant_lifetime", Some(self.grant_lifetime)),
            ("grant_max_lifetime", Some(self.grant_max_lifetime)),
            ("token_lifetime", Some(self.token_lifetime)),
            ("token_max_lifetime", Some(self.token_max_lifetime)),
            ("idempotency_retention", Some(self.idempotency_retention)),
        ]
    }

    /// Checks every value against [`LIMITS`] and the relations between them; the error names the
    /// field (as the CLI flag `--rotation-period` etc.) and the limit.
    pub fn validate(&self) -> Result<(), Error> {
        for (field, value) in self.values() {
            let (Some(value), Some(limit)) = (value, LIMITS.iter().find(|l| l.field == field))
            else {
                continue;
            };
            if value < limit.min || value > limit.max {
                return Err(Error::invalid(
                    flag(field),
                    format_args!(
                        "{value} is outside {} ..= {} ({})",
                        limit.min, limit.max, limit.why
                    ),
                ));
            }
        }
        let relation = |field: &str, value: Span, other: &str, max: Span| {
            if value > max {
                Err(Error::invalid(
                    flag(field),
                    format_args!(
                        "{value} is longer than {} ({max}): {}",
                        flag(other),
                        match field {
                            "acceptance_period" =>
                                "the previous generation may be accepted at most as long as a generation is current",
                            _ => "a default may not exceed its maximum",
                        }
                    ),
                ))
            } else {
                Ok(())
            }
        };
        relation(
            "acceptance_period",
            self.acceptance_period,
            "rotation_period",
            self.rotation_period,
        )?;
        relation(
            "grant_lifetime",
            self.grant_lifetime,
            "grant_max_lifetime",
            self.grant_max_lifetime,
        )?;
        relation(
            "token_lifetime",
            self.token_lifetime,
            "token_max_lifetime",
            self.token_max_lifetime,
        )?;
        Ok(())
    }

    /// Sets one field from text (`none` unsets `device_max_age`); the result is not yet
    /// validated as a whole.
    pub fn set(&mut self, field: &str, text: &str) -> Result<(), Error> {
        let name = field.trim_start_matches("--").replace('-', "_");
        if name == "device_max_age" && matches!(text.trim(), "none" | "off") {
            self.device_max_age = None;
            return Ok(());
        }
        let span = Span::parse(&flag(&name), text)?;
        match name.as_str() {
            "rotation_period" => self.rotation_period = span,
            "acceptance_period" => self.acceptance_period = span,
            "device_max_age" => self.device_max_age = Some(span),
            "destroy_after" => self.destroy_after = span,
            "grant_lifetime" => self.grant_lifetime = span,
            "grant_max_lifetime" => self.grant_max_lifetime = span,
            "token_lifetime" => self.token_lifetime = span,
            "token_max_lifetime" => self.token_max_lifetime = span,
            "idempotency_retention" => self.idempotency_retention = span,
            _ => return Err(Error::invalid("policy", "no such policy field")),
        }
        Ok(())
    }
}

/// A policy field as its CLI flag: `rotation_period` -> `--rotation-period`.
fn flag(field: &str) -> String {
    format!("--{}", field.replace('_', "-"))
}

/// The policy in a transaction: the stored one, or the defaults.
pub(crate) fn policy_in(tx: &mut dyn Tx) -> Result<Policy, Error> {
    match tx.meta(META_POLICY)? {
        None => Ok(Policy::default()),
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| crate::error::StoreError::Corrupt(format!("{META_POLICY}: {e}")).into()),
    }
}

impl Fleet {
    /// The fleet's lifecycle policy (the defaults until one is set).
    pub fn policy(&mut self) -> Result<Policy, Error> {
        read_tx(self.store.as_mut(), policy_in)
    }

    /// Whether the policy was ever set (else [`Fleet::policy`] gives the defaults).
    pub fn policy_is_set(&mut self) -> Result<bool, Error> {
        read_tx(self.store.as_mut(), |tx| {
            Ok(tx.meta(META_POLICY)?.is_some())
        })
    }

    /// Replaces the policy after checking it ([`Policy::validate`]); audit `policy.set` with the
    /// old and the new values. An invalid policy changes nothing.
    pub fn set_policy(&mut self, policy: &Policy, reason: &str) -> Result<Policy, Error> {
        policy.validate()?;
        let text = serde_json::to_string(policy).map_err(|e| Error::invalid("policy", e))?;
        let mut draft = self.draft(POLICY_ACTION, None, vec![], serde_json::json!({}));
        transact(self.store.as_mut(), |tx| {
            let old = policy_in(tx)?;
            draft.details = serde_json::json!({"from": old, "to": policy, "reason": reason});
            tx.put_meta(META_POLICY, &text)?;
            tx.append_audit(draft.clone())?;
            Ok(())
        })?;
        Ok(*policy)
    }

    /// A token's expiry under the policy: the default lifetime when none is asked; refused past
    /// the maximum.
    pub(crate) fn token_expiry(
        &mut self,
        asked: Option<UnixMillis>,
        now: UnixMillis,
    ) -> Result<UnixMillis, Error> {
        let policy = self.policy()?;
        let max = now.saturating_add(policy.token_max_lifetime.as_ms());
        match asked {
            None => Ok(now.saturating_add(policy.token_lifetime.as_ms())),
            Some(at) if at > max => Err(Error::invalid(
                "expires",
                format_args!(
                    "longer than the policy's token_max_lifetime ({}); `fleetkey policy show`",
                    policy.token_max_lifetime
                ),
            )),
            Some(at) => Ok(at),
        }
    }

    /// A grant's validity under the policy: the default when none is asked; refused past the
    /// maximum.
    pub fn grant_validity(
        &mut self,
        asked: Option<std::time::Duration>,
    ) -> Result<std::time::Duration, Error> {
        let policy = self.policy()?;
        match asked {
            None => Ok(policy.grant_lifetime.as_duration()),
            Some(d) if d > policy.grant_max_lifetime.as_duration() => Err(Error::invalid(
                "validity",
                format_args!(
                    "longer than the policy's grant_max_lifetime ({}); `fleetkey policy show`",
                    policy.grant_max_lifetime
                ),
            )),
            Some(d) => Ok(d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_parse_and_print() {
        assert_eq!(Span::parse("x", "365d").unwrap(), Span::days(365));
        assert_eq!(Span::parse("x", "2y").unwrap(), Span::days(730));
        assert_eq!(Span::parse("x", "12h").unwrap().to_string(), "12h");
        assert_eq!(Span::days(14).to_string(), "2w");
        assert_eq!(Span::days(365).to_string(), "1y");
        assert_eq!(Span::seconds(61).to_string(), "61s");
        for bad in [
            "0d",
            "-5d",
            "5",
            "5x",
            "d",
            "",
            "1.5d",
            "99999999999999999999d",
        ] {
            assert!(Span::parse("--x", bad).is_err(), "{bad}");
        }
        let e = Span::parse("--rotation-period", "3 fortnights").unwrap_err();
        assert!(e.to_string().starts_with("--rotation-period"), "{e}");
    }

    #[test]
    fn defaults_are_valid_and_limits_hold() {
        Policy::default().validate().unwrap();
        let mut p = Policy::default();
        p.set("acceptance-period", "400d").unwrap();
        let e = p.validate().unwrap_err();
        assert!(e.to_string().contains("--acceptance-period"), "{e}");
        let mut p = Policy::default();
        p.set("rotation_period", "3y").unwrap();
        assert!(p.validate().is_err());
        let mut p = Policy::default();
        p.set("device-max-age", "180d").unwrap();
        p.validate().unwrap();
        p.set("device-max-age", "none").unwrap();
        assert_eq!(p.device_max_age, None);
        assert!(p.set("colour", "1d").is_err());
        let text = serde_json::to_string(&Policy::default()).unwrap();
        assert_eq!(
            serde_json::from_str::<Policy>(&text).unwrap(),
            Policy::default()
        );
    }
}
