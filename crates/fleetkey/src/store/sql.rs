//! The statements both stores run, written once: column lists, statement text over a
//! [`Dialect`] (what differs between SQLite and PostgreSQL SQL), and the `WHERE` clauses of the
//! device and audit filters with their parameters.

use crate::audit::AuditFilter;
use crate::model::{DeviceFilter, DeviceSerial};
use crate::store::codec::Value;
use crate::store::{AUDIT_INDEXED_SUBJECTS, DeviceUpdate, Scan};

/// What differs between the stores' SQL.
pub(crate) trait Dialect {
    /// The mark before a parameter's number: `?` (SQLite `?1`) or `$` (PostgreSQL `$1`).
    const PARAM: char;

    /// What ends an `INSERT` whose row may exist already (`target`: the conflict target, such as
    /// `(serial)`, or empty for any unique constraint). SQLite reports the unique violation;
    /// PostgreSQL, where a failed statement aborts the transaction, skips the row
    /// (` ON CONFLICT ... DO NOTHING`) and the caller reads the row count.
    fn if_absent(target: &str) -> String;

    /// The conditions that a device's `labels` hold every one of `labels` (at least one).
    fn labels_hold<'a>(params: &mut Params<'a>, labels: &'a [String]) -> Vec<String>;

    /// The condition that blob column `column` contains the bytes of the parameter `needle`.
    fn blob_contains(column: &str, needle: &str) -> String;

    /// `column` in a condition that must not pick an index on it (SQLite: `+column`).
    fn unindexed(column: &str) -> String;

    /// The condition that text column `column` starts with `{action}.` (bound here).
    fn below_action(params: &mut Params<'_>, column: &str, action: &str) -> String;
}

/// The parameters of a statement being written, numbered in order.
pub(crate) struct Params<'a> {
    mark: char,
    values: Vec<Value<'a>>,
}

impl<'a> Params<'a> {
    pub(crate) fn new<D: Dialect>() -> Self {
        Params {
            mark: D::PARAM,
            values: Vec::new(),
        }
    }

    /// Adds a parameter; returns its placeholder (`?3`, `$3`).
    pub(crate) fn bind(&mut self, value: Value<'a>) -> String {
        self.values.push(value);
        format!("{}{}", self.mark, self.values.len())
    }

    /// Replaces parameter `n` (from 1).
    pub(crate) fn set(&mut self, n: usize, value: Value<'a>) {
        if let Some(slot) = n.checked_sub(1).and_then(|i| self.values.get_mut(i)) {
            *slot = value;
        }
    }

    pub(crate) fn values(&self) -> &[Value<'a>] {
        &self.values
    }
}

/// Placeholders `{mark}from, ..., {mark}(from + n - 1)`, comma separated.
pub(crate) fn placeholders<D: Dialect>(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("{}{i}", D::PARAM))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The device columns, in the order of [`crate::store::codec::device_values`].
pub(crate) const DEVICE_COLUMNS: [&str; 11] = [
    "serial",
    "she_uid",
    "labels",
    "generation",
    "revision",
    "state",
    "changed_at",
    "changed_actor",
    "changed_reason",
    "wrapped_root",
    "created_at",
];

pub(crate) const GENERATION_COLUMNS: [&str; 6] = [
    "generation",
    "state",
    "changed_at",
    "changed_actor",
    "changed_reason",
    "created_at",
];

pub(crate) const TOKEN_COLUMNS: [&str; 10] = [
    "id",
    "hash",
    "principal",
    "role",
    "subject",
    "fleet",
    "created_at",
    "created_by",
    "expires_at",
    "revoked_at",
];

pub(crate) const IDEMPOTENCY_COLUMNS: [&str; 6] = [
    "principal",
    "key",
    "fingerprint",
    "created_at",
    "status",
    "response",
];

pub(crate) const AUDIT_INSERT_COLUMNS: [&str; 10] = [
    "seq",
    "at",
    "actor",
    "action",
    "generation",
    "details",
    "prev_hash",
    "hash",
    "subjects",
    "n_subjects",
];

pub(crate) fn list(columns: &[&str]) -> String {
    columns.join(", ")
}

/// `SELECT columns FROM table rest`.
pub(crate) fn select(columns: &[&str], table: &str, rest: &str) -> String {
    format!("SELECT {} FROM {table} {rest}", list(columns))
}

/// `INSERT INTO table (columns) VALUES (...)`, then [`Dialect::if_absent`] of `target` when the
/// row may exist already (`None`: a row that exists is an error).
pub(crate) fn insert<D: Dialect>(table: &str, columns: &[&str], target: Option<&str>) -> String {
    format!(
        "INSERT INTO {table} ({}) VALUES ({}){}",
        list(columns),
        placeholders::<D>(1, columns.len()),
        target.map(D::if_absent).unwrap_or_default()
    )
}

/// `INSERT INTO table (columns) VALUES (...), (...)` for `rows` rows, parameters in order.
pub(crate) fn insert_rows<D: Dialect>(table: &str, columns: &[&str], rows: usize) -> String {
    let values = (0..rows)
        .map(|r| {
            format!(
                "({})",
                placeholders::<D>(r * columns.len() + 1, columns.len())
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!("INSERT INTO {table} ({}) VALUES {values}", list(columns))
}

/// `UPDATE table SET` every column but the first `keys` ones `WHERE` the keys match; parameters
/// in column order.
pub(crate) fn update<D: Dialect>(table: &str, columns: &[&str], keys: usize) -> String {
    let at = |(i, c): (usize, &&str)| format!("{c} = {}{}", D::PARAM, i + 1);
    let set: Vec<String> = columns.iter().enumerate().skip(keys).map(at).collect();
    let key: Vec<String> = columns.iter().enumerate().take(keys).map(at).collect();
    format!(
        "UPDATE {table} SET {} WHERE {}",
        set.join(", "),
        key.join(" AND ")
    )
}

/// Sets a `meta` value: `key`, `value`.
pub(crate) fn upsert_meta<D: Dialect>() -> String {
    format!(
        "INSERT INTO meta (key, value) VALUES ({p}1, {p}2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        p = D::PARAM
    )
}

/// Replaces the one fleet row: the values of [`crate::store::codec::fleet_values`].
pub(crate) fn upsert_fleet<D: Dialect>() -> String {
    format!(
        "INSERT INTO fleet (id, fleet_id, scheme, current_generation, created_at) VALUES (1, {}) \
         ON CONFLICT (id) DO UPDATE SET fleet_id = excluded.fleet_id, scheme = excluded.scheme, \
         current_generation = excluded.current_generation, created_at = excluded.created_at",
        placeholders::<D>(1, 4)
    )
}

/// The `WHERE` clause (with a leading space, or empty) and its parameters for a device filter,
/// starting after `after`.
pub(crate) fn device_where<'a, D: Dialect>(
    filter: &'a DeviceFilter,
    after: Option<&'a DeviceSerial>,
    scan: Scan,
) -> (String, Params<'a>) {
    let mut p = Params::new::<D>();
    let mut conds: Vec<String> = Vec::new();
    if let Some(state) = filter.state {
        let column = match scan {
            Scan::Indexed => "state".to_owned(),
            // The state index is the only index a filter could pick besides the primary key.
            Scan::Sweep => D::unindexed("state"),
        };
        conds.push(format!("{column} = {}", p.bind(Value::text(state.name()))));
    }
    if let Some(generation) = filter.generation {
        let n = p.bind(Value::int(i64::from(generation)));
        conds.push(format!("generation = {n}"));
    }
    if !filter.labels.is_empty() {
        conds.extend(D::labels_hold(&mut p, &filter.labels));
    }
    // One lower bound (the tighter of the prefix and the keyset position) and one upper bound,
    // so that the database walks the primary key range.
    let prefix = filter.serial_prefix.as_deref().filter(|x| !x.is_empty());
    match (prefix, after) {
        (Some(x), Some(a)) if a.as_bytes() < x => {
            conds.push(format!("serial >= {}", p.bind(Value::blob(x))));
        }
        (Some(x), None) => conds.push(format!("serial >= {}", p.bind(Value::blob(x)))),
        (_, Some(a)) => conds.push(format!("serial > {}", p.bind(Value::blob(a.as_bytes())))),
        (None, None) => {}
    }
    // An all-0xff prefix has no upper bound, and needs none: every serial at or above it starts
    // with it.
    if let Some(end) = prefix.and_then(prefix_end) {
        conds.push(format!("serial < {}", p.bind(Value::owned_blob(end))));
    }
    let clause = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    (clause, p)
}

/// The conditional bulk update of [`crate::store::Tx::update_devices`]: one `UPDATE` of the
/// devices matching `filter` after `after` and up to `through`, and its parameters.
pub(crate) fn update_devices<'a, D: Dialect>(
    filter: &'a DeviceFilter,
    after: Option<&'a DeviceSerial>,
    through: &'a DeviceSerial,
    update: &'a DeviceUpdate,
    scan: Scan,
) -> (String, Params<'a>) {
    let (clause, mut p) = device_where::<D>(filter, after, scan);
    let upper = p.bind(Value::blob(through.as_bytes()));
    let mut set = Vec::new();
    if let Some(state) = update.state {
        set.push(format!("state = {}", p.bind(Value::text(state.name()))));
    }
    if update.bump_revision {
        set.push("revision = revision + 1".to_owned());
    }
    if let Some(generation) = update.generation {
        let n = p.bind(Value::int(i64::from(generation)));
        set.push(format!("generation = {n}"));
    }
    let c = &update.changed;
    set.push(format!("changed_at = {}", p.bind(Value::int(c.at))));
    set.push(format!("changed_actor = {}", p.bind(Value::text(&c.actor))));
    set.push(format!(
        "changed_reason = {}",
        p.bind(Value::text(&c.reason))
    ));
    let clause = if clause.is_empty() {
        format!(" WHERE serial <= {upper}")
    } else {
        format!("{clause} AND serial <= {upper}")
    };
    (format!("UPDATE devices SET {}{clause}", set.join(", ")), p)
}

/// The least byte string greater than every string starting with `prefix`; `None` when there is
/// none (the prefix is all `0xff`).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// One page of audit events matching `filter`: `seq > ?1` (parameter 1, set per page), at most
/// `page` rows, by `seq`. The device condition may match a bulk event whose subject list holds
/// the serial's bytes across two serials: the caller confirms it on the decoded list.
pub(crate) fn audit_page<'a, D: Dialect>(
    filter: &'a AuditFilter,
    page: i64,
) -> (String, Params<'a>) {
    let mut p = Params::new::<D>();
    let after = p.bind(Value::int(0));
    let mut sql = format!(
        "SELECT seq, at, actor, action, generation, details, prev_hash, hash, subjects \
         FROM audit WHERE seq > {after}"
    );
    if let Some(device) = &filter.device {
        // Indexed for point events; a scan of the few bulk events' lists.
        let encoded = crate::store::encode_subjects(std::slice::from_ref(device));
        let a = p.bind(Value::blob(device.as_bytes()));
        let b = p.bind(Value::owned_blob(encoded));
        sql.push_str(&format!(
            " AND (seq IN (SELECT seq FROM audit_subjects WHERE serial = {a}) \
             OR (n_subjects > {AUDIT_INDEXED_SUBJECTS} AND {}))",
            D::blob_contains("subjects", &b)
        ));
    }
    if let Some(action) = &filter.action {
        // The action itself, or `action.` followed by anything.
        let a = p.bind(Value::text(action));
        let below = D::below_action(&mut p, "action", action);
        sql.push_str(&format!(" AND (action = {a} OR {below})"));
    }
    if let Some(since) = filter.since {
        sql.push_str(&format!(" AND at >= {}", p.bind(Value::int(since))));
    }
    if let Some(until) = filter.until {
        sql.push_str(&format!(" AND at < {}", p.bind(Value::int(until))));
    }
    sql.push_str(&format!(" ORDER BY seq LIMIT {}", p.bind(Value::int(page))));
    (sql, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Numbered;
    impl Dialect for Numbered {
        const PARAM: char = '$';
        fn if_absent(target: &str) -> String {
            format!(" ON CONFLICT {target} DO NOTHING")
        }
        fn labels_hold<'a>(params: &mut Params<'a>, labels: &'a [String]) -> Vec<String> {
            vec![format!(
                "labels @> {}",
                params.bind(Value::TextList(labels))
            )]
        }
        fn unindexed(column: &str) -> String {
            format!("+{column}")
        }
        fn blob_contains(column: &str, needle: &str) -> String {
            format!("position({needle} IN {column}) > 0")
        }
        fn below_action(params: &mut Params<'_>, column: &str, action: &str) -> String {
            let b = params.bind(Value::owned_text(format!("{action}.")));
            format!("starts_with({column}, {b})")
        }
    }

    #[test]
    fn statements_number_their_parameters_in_column_order() {
        assert_eq!(
            insert::<Numbered>("t", &["a", "b"], Some("(a)")),
            "INSERT INTO t (a, b) VALUES ($1, $2) ON CONFLICT (a) DO NOTHING"
        );
        assert_eq!(
            update::<Numbered>("t", &["k1", "k2", "x", "y"], 2),
            "UPDATE t SET x = $3, y = $4 WHERE k1 = $1 AND k2 = $2"
        );
        assert_eq!(
            insert_rows::<Numbered>("t", &["a", "b"], 2),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)"
        );
    }

    #[test]
    fn a_device_filter_binds_what_it_names() {
        let filter = DeviceFilter {
            generation: Some(2),
            serial_prefix: Some(b"A".to_vec()),
            ..DeviceFilter::default()
        };
        let (clause, p) = device_where::<Numbered>(&filter, None, Scan::Indexed);
        assert_eq!(
            clause,
            " WHERE generation = $1 AND serial >= $2 AND serial < $3"
        );
        assert_eq!(p.values().len(), 3);
    }

    #[test]
    fn a_bulk_update_sets_what_it_names_within_the_filter_and_range() {
        let filter = DeviceFilter {
            state: Some(crate::lifecycle::State::Active),
            ..DeviceFilter::default()
        };
        let after = DeviceSerial::new(b"A".to_vec()).expect("serial");
        let through = DeviceSerial::new(b"M".to_vec()).expect("serial");
        let update = DeviceUpdate {
            state: None,
            bump_revision: true,
            generation: Some(3),
            changed: crate::model::Change {
                at: 1,
                actor: "a".into(),
                reason: "r".into(),
            },
        };
        let (sql, p) =
            update_devices::<Numbered>(&filter, Some(&after), &through, &update, Scan::Indexed);
        assert_eq!(
            sql,
            "UPDATE devices SET revision = revision + 1, generation = $4, changed_at = $5, \
             changed_actor = $6, changed_reason = $7 WHERE state = $1 AND serial > $2 AND serial <= $3"
        );
        assert_eq!(p.values().len(), 7);
        // A sweep keeps the planner off the state index (the dialect's unindexed column).
        let (sql, _) =
            update_devices::<Numbered>(&filter, Some(&after), &through, &update, Scan::Sweep);
        assert!(sql.contains(" WHERE +state = $1 AND serial > $2"), "{sql}");
        let (sql, _) = update_devices::<Numbered>(
            &DeviceFilter::default(),
            None,
            &through,
            &update,
            Scan::Indexed,
        );
        assert!(sql.ends_with(" WHERE serial <= $1"), "{sql}");
    }

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
}
