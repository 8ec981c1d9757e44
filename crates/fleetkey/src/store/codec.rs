//! The row codec both stores share: how a record becomes statement parameters ([`Value`]) and
//! how a result row ([`Columns`]) becomes a record again, with every check a stored value must
//! pass. A store only says how to read one column of its rows and bind one [`Value`]; the
//! decoders here are the one place that turns columns into records, so the two stores cannot
//! read the same row differently.
//!
//! A value that cannot be read as its column's type is [`StoreError::Backend`] (naming the read);
//! a value that reads but does not make a valid record is [`StoreError::Corrupt`], naming what is
//! wrong.

use std::borrow::Cow;

use crate::access::{ApiToken, IdempotencyRecord, Role};
use crate::audit::{AuditDraft, AuditEvent};
use crate::error::StoreError;
use crate::lifecycle::State;
use crate::model::{
    Change, DeviceRecord, DeviceSerial, FleetInfo, GenerationRecord, Scheme, WrappedKey,
};
use crate::store::{PendingDelivery, decode_subjects};

/// Why a column could not be read.
#[derive(Debug)]
pub(crate) enum ColumnError {
    /// The driver could not read the column as the type asked for.
    Read(String),
    /// The column read, but its content is not what the schema promises (a list that does not
    /// parse).
    Invalid(String),
}

impl ColumnError {
    pub(crate) fn read(e: impl std::fmt::Display) -> Self {
        ColumnError::Read(e.to_string())
    }
}

/// One result row, as each store's driver reads it. Integers are read whatever their width in
/// the schema (PostgreSQL `integer` or `bigint`, SQLite `INTEGER`); a `NULL` where a value is
/// needed is a read error.
pub(crate) trait Columns {
    fn opt_int(&self, i: usize) -> Result<Option<i64>, ColumnError>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, ColumnError>;
    fn opt_blob(&self, i: usize) -> Result<Option<Vec<u8>>, ColumnError>;
    /// A list of text (PostgreSQL `text[]`; SQLite a JSON array of strings in a `TEXT` column).
    fn text_list(&self, i: usize) -> Result<Vec<String>, ColumnError>;

    fn int(&self, i: usize) -> Result<i64, ColumnError> {
        self.opt_int(i)?.ok_or_else(|| null(i))
    }
    fn text(&self, i: usize) -> Result<String, ColumnError> {
        self.opt_text(i)?.ok_or_else(|| null(i))
    }
    fn blob(&self, i: usize) -> Result<Vec<u8>, ColumnError> {
        self.opt_blob(i)?.ok_or_else(|| null(i))
    }
}

fn null(i: usize) -> ColumnError {
    ColumnError::Read(format!("column {i} is NULL"))
}

/// The [`Columns`] getters that read a column as its Rust type through the driver's typed getter
/// `$get` (rusqlite `get`, postgres `try_get`), inside an `impl Columns`.
macro_rules! typed_getters {
    ($get:ident) => {
        fn opt_text(&self, i: usize) -> Result<Option<String>, $crate::store::codec::ColumnError> {
            self.$get(i)
                .map_err($crate::store::codec::ColumnError::read)
        }
        fn opt_blob(&self, i: usize) -> Result<Option<Vec<u8>>, $crate::store::codec::ColumnError> {
            self.$get(i)
                .map_err($crate::store::codec::ColumnError::read)
        }
    };
}
pub(crate) use typed_getters;

/// A statement parameter, typed as its column is. `None` binds SQL `NULL`.
#[derive(Debug, Clone)]
pub(crate) enum Value<'a> {
    /// PostgreSQL `bigint`, SQLite `INTEGER`.
    Int(Option<i64>),
    /// PostgreSQL `integer`, SQLite `INTEGER`.
    Int32(Option<i32>),
    Text(Option<Cow<'a, str>>),
    Blob(Option<Cow<'a, [u8]>>),
    /// A list of text; see [`Columns::text_list`].
    TextList(&'a [String]),
}

impl<'a> Value<'a> {
    pub(crate) fn int(v: i64) -> Self {
        Value::Int(Some(v))
    }
    pub(crate) fn text(v: &'a str) -> Self {
        Value::Text(Some(Cow::Borrowed(v)))
    }
    pub(crate) fn owned_text(v: String) -> Self {
        Value::Text(Some(Cow::Owned(v)))
    }
    pub(crate) fn opt_text(v: Option<&'a str>) -> Self {
        Value::Text(v.map(Cow::Borrowed))
    }
    pub(crate) fn blob(v: &'a [u8]) -> Self {
        Value::Blob(Some(Cow::Borrowed(v)))
    }
    pub(crate) fn owned_blob(v: Vec<u8>) -> Self {
        Value::Blob(Some(Cow::Owned(v)))
    }
    pub(crate) fn opt_blob(v: Option<&'a [u8]>) -> Self {
        Value::Blob(v.map(Cow::Borrowed))
    }
}

/// The columns of a row with the read they belong to, which names a column error.
pub(crate) struct Fields<'r> {
    row: &'r dyn Columns,
    operation: &'static str,
}

impl<'r> Fields<'r> {
    pub(crate) fn new(row: &'r dyn Columns, operation: &'static str) -> Self {
        Fields { row, operation }
    }

    fn map<T>(&self, r: Result<T, ColumnError>, what: &str) -> Result<T, StoreError> {
        r.map_err(|e| match e {
            ColumnError::Read(detail) => StoreError::Backend {
                operation: self.operation,
                detail,
            },
            ColumnError::Invalid(detail) => StoreError::Corrupt(format!("{what}: {detail}")),
        })
    }

    pub(crate) fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.map(self.row.int(i), "")
    }
    pub(crate) fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        self.map(self.row.opt_int(i), "")
    }
    pub(crate) fn text(&self, i: usize) -> Result<String, StoreError> {
        self.map(self.row.text(i), "")
    }
    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        self.map(self.row.opt_text(i), "")
    }
    pub(crate) fn blob(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        self.map(self.row.blob(i), "")
    }
    pub(crate) fn opt_blob(&self, i: usize) -> Result<Option<Vec<u8>>, StoreError> {
        self.map(self.row.opt_blob(i), "")
    }
    /// A list of text; one that does not parse is corrupt `what`.
    pub(crate) fn text_list(&self, i: usize, what: &str) -> Result<Vec<String>, StoreError> {
        self.map(self.row.text_list(i), what)
    }
    /// A `u32` kept as an integer; out of range is corrupt `what`.
    pub(crate) fn u32(&self, i: usize, what: &str) -> Result<u32, StoreError> {
        to_u32(what, self.int(i)?)
    }
    pub(crate) fn opt_u32(&self, i: usize, what: &str) -> Result<Option<u32>, StoreError> {
        self.opt_int(i)?.map(|v| to_u32(what, v)).transpose()
    }
    /// A 32-byte hash; another length is corrupt `what`.
    pub(crate) fn hash32(&self, i: usize, what: &str) -> Result<[u8; 32], StoreError> {
        self.blob(i)?
            .try_into()
            .map_err(|_| StoreError::Corrupt(format!("{what} is not 32 bytes")))
    }
    /// A lifecycle state by name.
    pub(crate) fn state(&self, i: usize) -> Result<State, StoreError> {
        parse_state(&self.text(i)?)
    }
    /// A [`Change`] in three columns from `i`: at, actor, reason.
    pub(crate) fn change(&self, i: usize) -> Result<Change, StoreError> {
        Ok(Change {
            at: self.int(i)?,
            actor: self.text(i + 1)?,
            reason: self.text(i + 2)?,
        })
    }
}

pub(crate) fn parse_state(name: &str) -> Result<State, StoreError> {
    State::from_name(name).ok_or_else(|| StoreError::Corrupt(format!("unknown state {name:?}")))
}

pub(crate) fn parse_scheme(name: &str) -> Result<Scheme, StoreError> {
    [Scheme::Stored, Scheme::Derived, Scheme::Governed]
        .into_iter()
        .find(|s| s.name() == name)
        .ok_or_else(|| StoreError::Corrupt(format!("fleet scheme {name:?}")))
}

pub(crate) fn to_u32(what: &str, value: i64) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value} is out of range")))
}

/// A stored count or id as `u64`; a negative one is corrupt `what`.
pub(crate) fn to_count(what: &str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|e| corrupt(what, e))
}

/// A delivery id or count as `u64`.
pub(crate) fn to_delivery_id(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value)
        .map_err(|_| StoreError::Corrupt(format!("delivery id or count {value} is negative")))
}

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// A `usize` (a limit, a length) as a bound integer, saturating.
pub(crate) fn saturating_i64(v: impl TryInto<i64>) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

// --- fleet --------------------------------------------------------------------------------------

/// `fleet_id, scheme, current_generation, created_at`.
pub(crate) fn fleet_from_row(row: &dyn Columns) -> Result<FleetInfo, StoreError> {
    let f = Fields::new(row, "read fleet");
    Ok(FleetInfo {
        id: f.text(0)?,
        scheme: parse_scheme(&f.text(1)?)?,
        current_generation: f.opt_u32(2, "fleet current_generation")?,
        created_at: f.int(3)?,
    })
}

/// In the order of [`fleet_from_row`].
pub(crate) fn fleet_values(fleet: &FleetInfo) -> [Value<'_>; 4] {
    [
        Value::text(&fleet.id),
        Value::text(fleet.scheme.name()),
        Value::Int(fleet.current_generation.map(i64::from)),
        Value::int(fleet.created_at),
    ]
}

// --- generations --------------------------------------------------------------------------------

/// In the order of [`crate::store::sql::GENERATION_COLUMNS`].
pub(crate) fn generation_from_row(row: &dyn Columns) -> Result<GenerationRecord, StoreError> {
    let f = Fields::new(row, "read generation");
    Ok(GenerationRecord {
        generation: f.u32(0, "generation")?,
        state: f.state(1)?,
        changed: f.change(2)?,
        created_at: f.int(5)?,
    })
}

pub(crate) fn generation_values(r: &GenerationRecord) -> [Value<'_>; 6] {
    [
        Value::int(i64::from(r.generation)),
        Value::text(r.state.name()),
        Value::int(r.changed.at),
        Value::text(&r.changed.actor),
        Value::text(&r.changed.reason),
        Value::int(r.created_at),
    ]
}

// --- devices ------------------------------------------------------------------------------------

/// In the order of [`crate::store::sql::DEVICE_COLUMNS`].
pub(crate) fn device_from_row(row: &dyn Columns) -> Result<DeviceRecord, StoreError> {
    let f = Fields::new(row, "read device");
    let serial = DeviceSerial::new(f.blob(0)?).map_err(|e| corrupt("device serial", e))?;
    let she_uid = f.opt_blob(1)?;
    let labels = f.text_list(2, "device labels")?;
    Ok(DeviceRecord {
        she_uid: she_uid
            .map(|u| {
                u.try_into().map_err(|_| {
                    StoreError::Corrupt(format!("device {serial}: she_uid is not 15 bytes"))
                })
            })
            .transpose()?,
        labels,
        generation: f.u32(3, "device generation")?,
        revision: f.u32(4, "device revision")?,
        state: f.state(5)?,
        changed: f.change(6)?,
        wrapped_root: f.opt_blob(9)?.map(WrappedKey),
        created_at: f.int(10)?,
        serial,
    })
}

/// In the order of [`crate::store::sql::DEVICE_COLUMNS`]; borrows the record.
pub(crate) fn device_values(r: &DeviceRecord) -> [Value<'_>; 11] {
    [
        Value::blob(r.serial.as_bytes()),
        Value::opt_blob(r.she_uid.as_ref().map(|u| &u[..])),
        Value::TextList(&r.labels),
        Value::int(i64::from(r.generation)),
        Value::int(i64::from(r.revision)),
        Value::text(r.state.name()),
        Value::int(r.changed.at),
        Value::text(&r.changed.actor),
        Value::text(&r.changed.reason),
        Value::opt_blob(r.wrapped_root.as_ref().map(|w| &w.0[..])),
        Value::int(r.created_at),
    ]
}

// --- audit --------------------------------------------------------------------------------------

/// `seq, at, actor, action, generation, details, prev_hash, hash, subjects`: one event, or
/// [`StoreError::Corrupt`] naming the event.
pub(crate) fn audit_from_row(row: &dyn Columns) -> Result<AuditEvent, StoreError> {
    let f = Fields::new(row, "read audit");
    let seq = f.int(0)?;
    audit_fields(&f, seq).map_err(|e| crate::store::in_audit_event(seq, e))
}

fn audit_fields(f: &Fields<'_>, seq: i64) -> Result<AuditEvent, StoreError> {
    let details = f.text(5)?;
    Ok(AuditEvent {
        seq: to_count("audit sequence", seq)?,
        draft: AuditDraft {
            at: f.int(1)?,
            actor: f.text(2)?,
            action: f.text(3)?,
            generation: f.opt_u32(4, "audit generation")?,
            subjects: decode_subjects(&f.blob(8)?)?,
            details: serde_json::from_str(&details).map_err(|e| corrupt("audit details", e))?,
        },
        prev_hash: f.hash32(6, "audit hash")?,
        hash: f.hash32(7, "audit hash")?,
    })
}

/// The columns of [`crate::store::sql::AUDIT_INSERT_COLUMNS`] of a sealed event whose details
/// are `details` (the JSON text that was hashed).
pub(crate) fn audit_values<'a>(
    seq: i64,
    event: &'a AuditEvent,
    details: &'a str,
) -> [Value<'a>; 10] {
    [
        Value::int(seq),
        Value::int(event.draft.at),
        Value::text(&event.draft.actor),
        Value::text(&event.draft.action),
        Value::Int(event.draft.generation.map(i64::from)),
        Value::text(details),
        Value::blob(&event.prev_hash),
        Value::blob(&event.hash),
        Value::owned_blob(crate::store::encode_subjects(&event.draft.subjects)),
        Value::Int32(Some(
            i32::try_from(event.draft.subjects.len()).unwrap_or(i32::MAX),
        )),
    ]
}

/// The recorded head of the chain, kept as a sequence number and a hash.
pub(crate) fn audit_head(seq: i64, hash: Vec<u8>) -> Result<(u64, [u8; 32]), StoreError> {
    Ok((
        to_count("audit head", seq)?,
        hash.try_into()
            .map_err(|_| StoreError::Corrupt("audit head hash is not 32 bytes".into()))?,
    ))
}

// --- tokens -------------------------------------------------------------------------------------

/// In the order of [`crate::store::sql::TOKEN_COLUMNS`].
pub(crate) fn token_from_row(row: &dyn Columns) -> Result<ApiToken, StoreError> {
    let f = Fields::new(row, "read token");
    Ok(ApiToken {
        id: f.text(0)?,
        hash: f.hash32(1, "token hash")?,
        principal: f.text(2)?,
        role: Role::parse(&f.text(3)?).map_err(|e| corrupt("token role", e))?,
        subject: f.opt_text(4)?,
        fleet: f.text(5)?,
        created_at: f.int(6)?,
        created_by: f.text(7)?,
        expires_at: f.opt_int(8)?,
        revoked_at: f.opt_int(9)?,
    })
}

pub(crate) fn token_values(t: &ApiToken) -> [Value<'_>; 10] {
    [
        Value::text(&t.id),
        Value::blob(&t.hash),
        Value::text(&t.principal),
        Value::text(t.role.name()),
        Value::opt_text(t.subject.as_deref()),
        Value::text(&t.fleet),
        Value::int(t.created_at),
        Value::text(&t.created_by),
        Value::Int(t.expires_at),
        Value::Int(t.revoked_at),
    ]
}

// --- idempotency --------------------------------------------------------------------------------

/// `fingerprint, created_at, status, response` of the record of `principal`'s `key`.
pub(crate) fn idempotency_from_row(
    row: &dyn Columns,
    principal: &str,
    key: &str,
) -> Result<IdempotencyRecord, StoreError> {
    let f = Fields::new(row, "read idempotency key");
    let bad = |what: &str| StoreError::Corrupt(format!("idempotency record: {what}"));
    let fingerprint = f.blob(0)?;
    let created_at = f.int(1)?;
    let response = match (f.opt_int(2)?, f.opt_blob(3)?) {
        (Some(s), Some(body)) => Some((
            u16::try_from(s).map_err(|_| bad("status"))?,
            WrappedKey(body),
        )),
        (None, None) => None,
        _ => return Err(bad("status and response must be both set or both empty")),
    };
    Ok(IdempotencyRecord {
        principal: principal.to_owned(),
        key: key.to_owned(),
        fingerprint: fingerprint
            .try_into()
            .map_err(|_| bad("fingerprint is not 32 bytes"))?,
        created_at,
        response,
    })
}

/// In the order of [`crate::store::sql::IDEMPOTENCY_COLUMNS`].
pub(crate) fn idempotency_values(r: &IdempotencyRecord) -> [Value<'_>; 6] {
    [
        Value::text(&r.principal),
        Value::text(&r.key),
        Value::blob(&r.fingerprint),
        Value::int(r.created_at),
        Value::Int32(r.response.as_ref().map(|(s, _)| i32::from(*s))),
        Value::opt_blob(r.response.as_ref().map(|(_, b)| &b.0[..])),
    ]
}

// --- deliveries ---------------------------------------------------------------------------------

/// `id, kind, payload, created_at`.
pub(crate) fn delivery_from_row(row: &dyn Columns) -> Result<PendingDelivery, StoreError> {
    let f = Fields::new(row, "read delivery");
    Ok(PendingDelivery {
        id: to_delivery_id(f.int(0)?)?,
        kind: f.text(1)?,
        payload: f.blob(2)?,
        created_at: f.int(3)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row of fixed columns, for the decoders' checks.
    struct Fake(Vec<Option<FakeCol>>);

    #[derive(Clone)]
    enum FakeCol {
        Int(i64),
        Text(String),
        Blob(Vec<u8>),
        List(Vec<String>),
    }

    impl Fake {
        fn col(&self, i: usize) -> Result<Option<FakeCol>, ColumnError> {
            self.0
                .get(i)
                .cloned()
                .ok_or_else(|| ColumnError::read(format!("no column {i}")))
        }
    }

    impl Columns for Fake {
        fn opt_int(&self, i: usize) -> Result<Option<i64>, ColumnError> {
            match self.col(i)? {
                None => Ok(None),
                Some(FakeCol::Int(v)) => Ok(Some(v)),
                Some(_) => Err(ColumnError::read("not an integer")),
            }
        }
        fn opt_text(&self, i: usize) -> Result<Option<String>, ColumnError> {
            match self.col(i)? {
                None => Ok(None),
                Some(FakeCol::Text(v)) => Ok(Some(v)),
                Some(_) => Err(ColumnError::read("not text")),
            }
        }
        fn opt_blob(&self, i: usize) -> Result<Option<Vec<u8>>, ColumnError> {
            match self.col(i)? {
                None => Ok(None),
                Some(FakeCol::Blob(v)) => Ok(Some(v)),
                Some(_) => Err(ColumnError::read("not a blob")),
            }
        }
        fn text_list(&self, i: usize) -> Result<Vec<String>, ColumnError> {
            match self.col(i)? {
                Some(FakeCol::List(v)) => Ok(v),
                _ => Err(ColumnError::Invalid("not a list".into())),
            }
        }
    }

    fn generation_row(generation: i64, state: &str) -> Fake {
        Fake(vec![
            Some(FakeCol::Int(generation)),
            Some(FakeCol::Text(state.into())),
            Some(FakeCol::Int(1)),
            Some(FakeCol::Text("a".into())),
            Some(FakeCol::Text("r".into())),
            Some(FakeCol::Int(2)),
        ])
    }

    #[test]
    fn a_generation_reads_back() {
        let g = generation_from_row(&generation_row(7, "active")).unwrap();
        assert_eq!((g.generation, g.state, g.created_at), (7, State::Active, 2));
    }

    #[test]
    fn bad_values_are_corrupt_and_named() {
        match generation_from_row(&generation_row(-1, "active")) {
            Err(StoreError::Corrupt(what)) => assert_eq!(what, "generation -1 is out of range"),
            other => panic!("{other:?}"),
        }
        match generation_from_row(&generation_row(1, "molten")) {
            Err(StoreError::Corrupt(what)) => assert_eq!(what, "unknown state \"molten\""),
            other => panic!("{other:?}"),
        }
        match parse_scheme("nope") {
            Err(StoreError::Corrupt(what)) => assert_eq!(what, "fleet scheme \"nope\""),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unreadable_columns_name_the_read() {
        let mut row = generation_row(1, "active");
        row.0[2] = Some(FakeCol::Text("soon".into()));
        match generation_from_row(&row) {
            Err(StoreError::Backend { operation, .. }) => assert_eq!(operation, "read generation"),
            other => panic!("{other:?}"),
        }
        row.0.truncate(3);
        assert!(generation_from_row(&row).is_err());
    }

    #[test]
    fn a_device_round_trips_through_its_values() {
        let record = DeviceRecord {
            serial: DeviceSerial::new(b"ECU-1".to_vec()).unwrap(),
            she_uid: Some([7; 15]),
            labels: vec!["a".into(), "b".into()],
            generation: 3,
            revision: 4,
            state: State::Active,
            changed: Change {
                at: 5,
                actor: "x".into(),
                reason: "y".into(),
            },
            wrapped_root: None,
            created_at: 6,
        };
        let row = Fake(
            device_values(&record)
                .into_iter()
                .map(|v| match v {
                    Value::Int(v) => v.map(FakeCol::Int),
                    Value::Int32(v) => v.map(|v| FakeCol::Int(i64::from(v))),
                    Value::Text(v) => v.map(|v| FakeCol::Text(v.into_owned())),
                    Value::Blob(v) => v.map(|v| FakeCol::Blob(v.into_owned())),
                    Value::TextList(v) => Some(FakeCol::List(v.to_vec())),
                })
                .collect(),
        );
        let back = device_from_row(&row).unwrap();
        assert_eq!(back, record);

        let mut short_uid = row;
        short_uid.0[1] = Some(FakeCol::Blob(vec![1; 3]));
        match device_from_row(&short_uid) {
            Err(StoreError::Corrupt(what)) => {
                assert_eq!(what, "device ECU-1: she_uid is not 15 bytes")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_idempotency_record_needs_status_and_response_together() {
        let row = Fake(vec![
            Some(FakeCol::Blob(vec![0; 32])),
            Some(FakeCol::Int(1)),
            Some(FakeCol::Int(200)),
            None,
        ]);
        match idempotency_from_row(&row, "p", "k") {
            Err(StoreError::Corrupt(what)) => assert!(what.contains("both set"), "{what}"),
            other => panic!("{other:?}"),
        }
    }
}
