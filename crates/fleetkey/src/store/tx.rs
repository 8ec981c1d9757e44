//! The one implementation of [`Tx`]: every operation both stores run alike, written once over a
//! [`Backend`] (a store's transaction: how it runs a statement, and the few operations whose SQL
//! or order of steps really differ). The statements come from [`super::sql`], the rows are read
//! and written by [`super::codec`].

use std::ops::ControlFlow;

use crate::access::{ApiToken, IdempotencyRecord};
use crate::audit::{AuditDraft, AuditEvent, AuditFilter};
use crate::error::StoreError;
use crate::model::{
    Change, DeviceFilter, DeviceRecord, DeviceSerial, FleetInfo, GenerationRecord, UnixMillis,
};
use crate::store::codec::{self, Columns, Fields, Value, corrupt, saturating_i64};
use crate::store::sql::{self, DEVICE_COLUMNS, Dialect, GENERATION_COLUMNS, TOKEN_COLUMNS};
use crate::store::{AuditIndex, DeviceUpdate, PendingDelivery, Scan, Tx};

/// `Tx::meta` keys are stored under this prefix, apart from the store's own.
pub(crate) const APP_META_PREFIX: &str = "app.";

/// What one row handler tells [`Backend::each_row`]: go on, or stop reading.
pub(crate) type Next = ControlFlow<()>;

/// A statement to run: its text, its parameters, and the operation that names its errors.
pub(crate) struct Stmt<'s> {
    pub(crate) operation: &'static str,
    pub(crate) sql: &'s str,
    pub(crate) params: &'s [Value<'s>],
}

/// What [`Backend::rows`] hands each row to.
pub(crate) type OnRow<'f> = dyn FnMut(&dyn Columns) -> Result<Next, StoreError> + 'f;

/// A store's transaction, as [`Tx`] uses it.
pub(crate) trait Backend {
    /// Its SQL.
    type Dialect: Dialect;

    /// Runs a statement; the number of rows it changed.
    fn run(&mut self, s: &Stmt<'_>) -> Result<u64, StoreError>;

    /// Like [`Backend::run`]; `None` when the statement broke a unique constraint (SQLite;
    /// PostgreSQL statements are written with [`Dialect::if_absent`] and change no row instead).
    fn run_unique(&mut self, s: &Stmt<'_>) -> Result<Option<u64>, StoreError>;

    /// Runs a query and hands each row to `row`, in order, until it says to stop.
    fn rows(&mut self, s: &Stmt<'_>, row: &mut OnRow<'_>) -> Result<(), StoreError>;

    /// Refuses text the store cannot hold, before any statement is sent.
    fn check_text(_field: &str, _value: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// [`Tx::insert_devices`] for more than one record: the store's bulk path.
    fn insert_device_batch(&mut self, records: &[DeviceRecord]) -> Result<(), StoreError>;

    /// [`Tx::audit_head`].
    fn stored_audit_head(&mut self) -> Result<Option<(u64, [u8; 32])>, StoreError>;

    /// [`Tx::audit_head_table`].
    fn audit_head_location(&self) -> &'static str;

    /// Writes a sealed event (its row: [`insert_audit_row`]), its subject index rows (at most
    /// [`crate::store::AUDIT_INDEXED_SUBJECTS`] subjects) and moves the head to it.
    fn store_audit_event(&mut self, row: &SealedEvent<'_>) -> Result<(), StoreError>;

    /// Writes sealed events in order, as [`Backend::store_audit_event`] each; a store overrides
    /// it with set statements.
    fn store_audit_events(&mut self, rows: &[SealedEvent<'_>]) -> Result<(), StoreError> {
        rows.iter().try_for_each(|r| self.store_audit_event(r))
    }

    /// [`Tx::device_rows`] in one statement; `None`: the store reads them one by one.
    fn device_set(
        &mut self,
        _serials: &[DeviceSerial],
    ) -> Option<Result<Vec<DeviceRecord>, StoreError>> {
        None
    }

    /// [`Tx::update_device_rows`] as one set; `None`: the store writes them one by one.
    fn update_device_set(&mut self, _records: &[DeviceRecord]) -> Option<Result<(), StoreError>> {
        None
    }

    /// [`Tx::idempotency_rows`] in one statement; `None`: the store reads them one by one.
    fn idempotency_set(
        &mut self,
        _keys: &[(String, String)],
    ) -> Option<Result<Vec<IdempotencyRecord>, StoreError>> {
        None
    }

    /// [`Tx::insert_idempotency_rows`] as one set; `None`: the store writes them one by one.
    fn insert_idempotency_set(
        &mut self,
        _records: &[IdempotencyRecord],
    ) -> Option<Result<(), StoreError>> {
        None
    }

    /// The value of [`Tx::meta`] key `key` (stored under [`APP_META_PREFIX`]).
    fn app_meta(&mut self, key: &str) -> Result<Option<String>, StoreError>;

    /// Whether another token holds `t`'s hash, checked before an update where a unique
    /// violation would end the transaction.
    fn token_hash_taken(&mut self, _t: &ApiToken) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// Runs a savepoint step: its statements ([`Savepoint::sql`]), one by one.
    fn savepoint_step(&mut self, step: Savepoint) -> Result<(), StoreError> {
        for sql in step.sql() {
            let s = Stmt {
                operation: step.operation(),
                sql,
                params: &[],
            };
            self.run(&s)?;
        }
        Ok(())
    }
}

/// The steps of [`Tx`]'s one-level savepoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Savepoint {
    /// `SAVEPOINT`.
    Open,
    /// `RELEASE SAVEPOINT`.
    Release,
    /// `ROLLBACK TO SAVEPOINT`, then `RELEASE SAVEPOINT` (a rollback leaves it open).
    Rollback,
}

impl Savepoint {
    /// Its statements, the same in both stores.
    pub(crate) fn sql(self) -> &'static [&'static str] {
        match self {
            Savepoint::Open => &["SAVEPOINT fleetkey_op"],
            Savepoint::Release => &["RELEASE SAVEPOINT fleetkey_op"],
            Savepoint::Rollback => &[
                "ROLLBACK TO SAVEPOINT fleetkey_op",
                "RELEASE SAVEPOINT fleetkey_op",
            ],
        }
    }

    /// What its errors are named.
    pub(crate) fn operation(self) -> &'static str {
        match self {
            Savepoint::Open => "open savepoint",
            Savepoint::Release => "release savepoint",
            Savepoint::Rollback => "roll back to savepoint",
        }
    }
}

/// An event to store: sealed, with its sequence number as stored and its details as hashed.
pub(crate) struct SealedEvent<'e> {
    pub(crate) seq: i64,
    pub(crate) event: &'e AuditEvent,
    pub(crate) details: &'e str,
}

fn execute<B: Backend>(
    b: &mut B,
    operation: &'static str,
    sql: &str,
    params: &[Value<'_>],
) -> Result<u64, StoreError> {
    b.run(&Stmt {
        operation,
        sql,
        params,
    })
}

fn execute_unique<B: Backend>(
    b: &mut B,
    operation: &'static str,
    sql: &str,
    params: &[Value<'_>],
) -> Result<Option<u64>, StoreError> {
    b.run_unique(&Stmt {
        operation,
        sql,
        params,
    })
}

fn each_row<B: Backend>(
    b: &mut B,
    operation: &'static str,
    sql: &str,
    params: &[Value<'_>],
    row: &mut OnRow<'_>,
) -> Result<(), StoreError> {
    let s = Stmt {
        operation,
        sql,
        params,
    };
    b.rows(&s, row)
}

/// Every row of a query, decoded.
fn all<B: Backend, T>(
    b: &mut B,
    operation: &'static str,
    sql: &str,
    params: &[Value<'_>],
    decode: impl Fn(&dyn Columns) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    each_row(b, operation, sql, params, &mut |row| {
        out.push(decode(row)?);
        Ok(Next::Continue(()))
    })?;
    Ok(out)
}

/// The row of a query that has at most one; a second is [`StoreError::Corrupt`].
fn one<B: Backend, T>(
    b: &mut B,
    operation: &'static str,
    sql: &str,
    params: &[Value<'_>],
    decode: impl Fn(&dyn Columns) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let mut rows = all(b, operation, sql, params, decode)?;
    if rows.len() > 1 {
        return Err(StoreError::Corrupt(format!(
            "{operation}: more than one row"
        )));
    }
    Ok(rows.pop())
}

/// Column 0 of a row as an integer.
fn first_int(operation: &'static str) -> impl Fn(&dyn Columns) -> Result<i64, StoreError> {
    move |row| Fields::new(row, operation).int(0)
}

pub(crate) fn check_change<B: Backend>(change: &Change) -> Result<(), StoreError> {
    B::check_text("changed.actor", &change.actor)?;
    B::check_text("changed.reason", &change.reason)
}

pub(crate) fn check_device<B: Backend>(record: &DeviceRecord) -> Result<(), StoreError> {
    check_change::<B>(&record.changed)?;
    record
        .labels
        .iter()
        .try_for_each(|l| B::check_text("device label", l))
}

fn check_token<B: Backend>(t: &ApiToken) -> Result<(), StoreError> {
    for (field, value) in [
        ("token id", t.id.as_str()),
        ("token principal", &t.principal),
        ("token fleet", &t.fleet),
        ("token issuer", &t.created_by),
        ("token subject", t.subject.as_deref().unwrap_or("")),
    ] {
        B::check_text(field, value)?;
    }
    Ok(())
}

fn check_idempotency<B: Backend>(principal: &str, key: &str) -> Result<(), StoreError> {
    B::check_text("principal", principal)?;
    B::check_text("idempotency key", key)
}

/// The row of a sealed event in the events table.
pub(crate) fn insert_audit_row<B: Backend>(
    b: &mut B,
    e: &SealedEvent<'_>,
) -> Result<(), StoreError> {
    let sql = sql::insert::<B::Dialect>("audit", &sql::AUDIT_INSERT_COLUMNS, None);
    let params = codec::audit_values(e.seq, e.event, e.details);
    execute(b, "append audit", &sql, &params).map(drop)
}

/// Runs `f` (row-by-row writes of a set) in a savepoint of its own, so that a set write that
/// fails halfway changes nothing.
fn all_or_nothing<B: Backend>(
    b: &mut B,
    operation: &'static str,
    f: impl FnOnce(&mut B) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let step = |b: &mut B, sql: &str| {
        b.run(&Stmt {
            operation,
            sql,
            params: &[],
        })
        .map(drop)
    };
    step(b, "SAVEPOINT fleetkey_set")?;
    match f(b) {
        Ok(()) => step(b, "RELEASE SAVEPOINT fleetkey_set"),
        Err(e) => {
            step(b, "ROLLBACK TO SAVEPOINT fleetkey_set")?;
            step(b, "RELEASE SAVEPOINT fleetkey_set")?;
            Err(e)
        }
    }
}

/// `WHERE column = ?1` (PostgreSQL `$1`).
fn where_is<D: Dialect>(column: &str) -> String {
    format!("WHERE {column} = {}1", D::PARAM)
}

impl<B: Backend> Tx for B {
    fn fleet(&mut self) -> Result<Option<FleetInfo>, StoreError> {
        one(
            self,
            "read fleet",
            "SELECT fleet_id, scheme, current_generation, created_at FROM fleet WHERE id = 1",
            &[],
            codec::fleet_from_row,
        )
    }

    fn put_fleet(&mut self, fleet: &FleetInfo) -> Result<(), StoreError> {
        B::check_text("fleet id", &fleet.id)?;
        let sql = sql::upsert_fleet::<B::Dialect>();
        execute(self, "write fleet", &sql, &codec::fleet_values(fleet)).map(drop)
    }

    fn insert_generation(&mut self, record: &GenerationRecord) -> Result<(), StoreError> {
        check_change::<B>(&record.changed)?;
        let sql =
            sql::insert::<B::Dialect>("generations", &GENERATION_COLUMNS, Some("(generation)"));
        match execute_unique(
            self,
            "insert generation",
            &sql,
            &codec::generation_values(record),
        )? {
            Some(n) if n > 0 => Ok(()),
            _ => Err(StoreError::Duplicate(format!(
                "generation {}",
                record.generation
            ))),
        }
    }

    fn update_generation(&mut self, record: &GenerationRecord) -> Result<(), StoreError> {
        check_change::<B>(&record.changed)?;
        let sql = sql::update::<B::Dialect>("generations", &GENERATION_COLUMNS, 1);
        if execute(
            self,
            "update generation",
            &sql,
            &codec::generation_values(record),
        )? == 0
        {
            return Err(StoreError::NotFound(format!(
                "generation {}",
                record.generation
            )));
        }
        Ok(())
    }

    fn generation(&mut self, generation: u32) -> Result<Option<GenerationRecord>, StoreError> {
        let sql = sql::select(
            &GENERATION_COLUMNS,
            "generations",
            &where_is::<B::Dialect>("generation"),
        );
        let params = [Value::int(i64::from(generation))];
        one(
            self,
            "read generation",
            &sql,
            &params,
            codec::generation_from_row,
        )
    }

    fn generations(&mut self) -> Result<Vec<GenerationRecord>, StoreError> {
        let sql = sql::select(&GENERATION_COLUMNS, "generations", "ORDER BY generation");
        all(
            self,
            "read generations",
            &sql,
            &[],
            codec::generation_from_row,
        )
    }

    fn insert_device(&mut self, record: &DeviceRecord) -> Result<(), StoreError> {
        check_device::<B>(record)?;
        let sql = sql::insert::<B::Dialect>("devices", &DEVICE_COLUMNS, Some("(serial)"));
        match execute_unique(self, "insert device", &sql, &codec::device_values(record))? {
            Some(n) if n > 0 => Ok(()),
            _ => Err(StoreError::Duplicate(format!("device {}", record.serial))),
        }
    }

    fn insert_devices(&mut self, records: &[DeviceRecord]) -> Result<(), StoreError> {
        match records {
            [] => Ok(()),
            [one] => self.insert_device(one),
            _ => self.insert_device_batch(records),
        }
    }

    fn update_device(&mut self, record: &DeviceRecord) -> Result<(), StoreError> {
        check_device::<B>(record)?;
        let sql = sql::update::<B::Dialect>("devices", &DEVICE_COLUMNS, 1);
        if execute(self, "update device", &sql, &codec::device_values(record))? == 0 {
            return Err(StoreError::NotFound(format!("device {}", record.serial)));
        }
        Ok(())
    }

    fn update_devices(
        &mut self,
        filter: &DeviceFilter,
        after: Option<&DeviceSerial>,
        through: &DeviceSerial,
        update: &DeviceUpdate,
        scan: Scan,
    ) -> Result<u64, StoreError> {
        check_change::<B>(&update.changed)?;
        filter
            .labels
            .iter()
            .try_for_each(|l| B::check_text("device label", l))?;
        let (sql, params) = sql::update_devices::<B::Dialect>(filter, after, through, update, scan);
        execute(self, "update devices", &sql, params.values())
    }

    fn update_device_rows(&mut self, records: &[DeviceRecord]) -> Result<(), StoreError> {
        records.iter().try_for_each(check_device::<B>)?;
        match self.update_device_set(records) {
            Some(done) => done,
            None => all_or_nothing(self, "update devices", |b| {
                super::each::update_device_rows(b, records)
            }),
        }
    }

    fn device_rows(&mut self, serials: &[DeviceSerial]) -> Result<Vec<DeviceRecord>, StoreError> {
        match self.device_set(serials) {
            Some(rows) => rows,
            None => super::each::device_rows(self, serials),
        }
    }

    fn device(&mut self, serial: &DeviceSerial) -> Result<Option<DeviceRecord>, StoreError> {
        let sql = sql::select(
            &DEVICE_COLUMNS,
            "devices",
            &where_is::<B::Dialect>("serial"),
        );
        let params = [Value::blob(serial.as_bytes())];
        one(self, "read device", &sql, &params, codec::device_from_row)
    }

    fn devices(
        &mut self,
        filter: &DeviceFilter,
        after: Option<&DeviceSerial>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        self.devices_by(filter, after, limit, Scan::Indexed)
    }

    fn devices_by(
        &mut self,
        filter: &DeviceFilter,
        after: Option<&DeviceSerial>,
        limit: usize,
        scan: Scan,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (clause, mut params) = sql::device_where::<B::Dialect>(filter, after, scan);
        let n = params.bind(Value::int(saturating_i64(limit)));
        let sql = format!(
            "SELECT {} FROM devices{clause} ORDER BY serial LIMIT {n}",
            sql::list(&DEVICE_COLUMNS)
        );
        let mut out = Vec::with_capacity(limit.min(4096));
        each_row(self, "list devices", &sql, params.values(), &mut |row| {
            out.push(codec::device_from_row(row)?);
            Ok(Next::Continue(()))
        })?;
        Ok(out)
    }

    fn count_devices(&mut self, filter: &DeviceFilter) -> Result<u64, StoreError> {
        let (clause, params) = sql::device_where::<B::Dialect>(filter, None, Scan::Indexed);
        let sql = format!("SELECT count(*) FROM devices{clause}");
        let op = "count devices";
        let count = one(self, op, &sql, params.values(), first_int(op))?
            .ok_or_else(|| StoreError::Corrupt("count devices: no row".into()))?;
        codec::to_count("device count", count)
    }

    fn count_devices_by_state(
        &mut self,
    ) -> Result<Vec<(crate::lifecycle::State, u64)>, StoreError> {
        let op = "count devices by state";
        let rows = all(
            self,
            op,
            "SELECT state, count(*) FROM devices GROUP BY state",
            &[],
            |row| {
                let f = Fields::new(row, op);
                Ok((codec::parse_state(&f.text(0)?)?, f.int(1)?))
            },
        )?;
        let mut out = Vec::new();
        for state in crate::lifecycle::State::ALL {
            if let Some((_, n)) = rows.iter().find(|(s, _)| *s == state) {
                out.push((state, codec::to_count("device count", *n)?));
            }
        }
        Ok(out)
    }

    fn append_audit(&mut self, draft: AuditDraft) -> Result<AuditEvent, StoreError> {
        B::check_text("audit actor", &draft.actor)?;
        B::check_text("audit action", &draft.action)?;
        let details = super::audit_details_text(&draft)?;
        let head = self.stored_audit_head()?;
        let event = AuditEvent::seal(head, draft);
        let seq = i64::try_from(event.seq).map_err(|e| corrupt("audit sequence", e))?;
        self.store_audit_event(&SealedEvent {
            seq,
            event: &event,
            details: &details,
        })?;
        Ok(event)
    }

    fn append_audits(&mut self, drafts: Vec<AuditDraft>) -> Result<(), StoreError> {
        let mut head = self.stored_audit_head()?;
        let mut events = Vec::with_capacity(drafts.len());
        for draft in drafts {
            B::check_text("audit actor", &draft.actor)?;
            B::check_text("audit action", &draft.action)?;
            let details = super::audit_details_text(&draft)?;
            let event = AuditEvent::seal(head, draft);
            let seq = i64::try_from(event.seq).map_err(|e| corrupt("audit sequence", e))?;
            head = Some((event.seq, event.hash));
            events.push((seq, event, details));
        }
        let rows: Vec<SealedEvent<'_>> = events
            .iter()
            .map(|(seq, event, details)| SealedEvent {
                seq: *seq,
                event,
                details,
            })
            .collect();
        self.store_audit_events(&rows)
    }

    fn audit_events(
        &mut self,
        filter: &AuditFilter,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let Ok(after_seq) = i64::try_from(after_seq) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (sql, mut params) = sql::audit_page::<B::Dialect>(filter, saturating_i64(limit));
        let mut out = Vec::new();
        let mut after = after_seq;
        loop {
            params.set(1, Value::int(after));
            let mut read = 0usize;
            each_row(self, "read audit", &sql, params.values(), &mut |row| {
                read += 1;
                let event = codec::audit_from_row(row)?;
                after = saturating_i64(event.seq);
                if filter
                    .device
                    .as_ref()
                    .is_some_and(|d| !event.draft.subjects.contains(d))
                {
                    return Ok(Next::Continue(())); // a substring match across two serials
                }
                out.push(event);
                Ok(if out.len() == limit {
                    Next::Break(())
                } else {
                    Next::Continue(())
                })
            })?;
            if out.len() == limit || read < limit {
                return Ok(out);
            }
        }
    }

    fn audit_head(&mut self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        self.stored_audit_head()
    }

    fn audit_head_table(&self) -> &'static str {
        self.audit_head_location()
    }

    fn audit_index(&mut self, after_seq: u64, through_seq: u64) -> Result<AuditIndex, StoreError> {
        let (low, high) = super::audit_index_range(after_seq, through_seq);
        let op = "read audit index";
        let p = <B::Dialect as Dialect>::PARAM;
        let range = [Value::int(low), Value::int(high)];
        let mut index = AuditIndex::default();
        let sql = format!(
            "SELECT seq, n_subjects FROM audit WHERE seq >= {p}1 AND seq <= {p}2 ORDER BY seq"
        );
        each_row(self, op, &sql, &range, &mut |row| {
            let f = Fields::new(row, op);
            index.counts.push((f.int(0)?, f.int(1)?));
            Ok(Next::Continue(()))
        })?;
        let sql = format!(
            "SELECT seq, pos, serial FROM audit_subjects WHERE seq >= {p}1 AND seq <= {p}2 \
             ORDER BY seq, pos"
        );
        each_row(self, op, &sql, &range, &mut |row| {
            let f = Fields::new(row, op);
            index.subjects.push((f.int(0)?, f.int(1)?, f.blob(2)?));
            Ok(Next::Continue(()))
        })?;
        Ok(index)
    }

    fn meta(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        B::check_text("meta key", key)?;
        self.app_meta(key)
    }

    fn put_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        B::check_text("meta key", key)?;
        B::check_text("meta value", value)?;
        let params = [
            Value::owned_text(format!("{APP_META_PREFIX}{key}")),
            Value::text(value),
        ];
        let sql = sql::upsert_meta::<B::Dialect>();
        execute(self, "write meta", &sql, &params).map(drop)
    }

    fn insert_token(&mut self, token: &ApiToken) -> Result<(), StoreError> {
        check_token::<B>(token)?;
        let sql = sql::insert::<B::Dialect>("api_tokens", &TOKEN_COLUMNS, Some(""));
        match execute_unique(self, "insert token", &sql, &codec::token_values(token))? {
            Some(n) if n > 0 => Ok(()),
            _ => Err(StoreError::Duplicate(format!("token {}", token.id))),
        }
    }

    fn update_token(&mut self, token: &ApiToken) -> Result<(), StoreError> {
        check_token::<B>(token)?;
        let duplicate = || StoreError::Duplicate(format!("token {}", token.id));
        if self.token_hash_taken(token)? {
            return Err(duplicate());
        }
        let sql = sql::update::<B::Dialect>("api_tokens", &TOKEN_COLUMNS, 1);
        match execute_unique(self, "update token", &sql, &codec::token_values(token))? {
            None => Err(duplicate()),
            Some(0) => Err(StoreError::NotFound(format!("token {}", token.id))),
            Some(_) => Ok(()),
        }
    }

    fn token(&mut self, id: &str) -> Result<Option<ApiToken>, StoreError> {
        B::check_text("token id", id)?;
        let sql = sql::select(&TOKEN_COLUMNS, "api_tokens", &where_is::<B::Dialect>("id"));
        one(
            self,
            "read token",
            &sql,
            &[Value::text(id)],
            codec::token_from_row,
        )
    }

    fn token_by_hash(&mut self, hash: &[u8; 32]) -> Result<Option<ApiToken>, StoreError> {
        let sql = sql::select(
            &TOKEN_COLUMNS,
            "api_tokens",
            &where_is::<B::Dialect>("hash"),
        );
        let params = [Value::blob(hash)];
        one(self, "read token", &sql, &params, codec::token_from_row)
    }

    fn tokens(&mut self) -> Result<Vec<ApiToken>, StoreError> {
        let sql = sql::select(&TOKEN_COLUMNS, "api_tokens", "ORDER BY created_at, id");
        all(self, "read tokens", &sql, &[], codec::token_from_row)
    }

    fn idempotency(
        &mut self,
        principal: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        check_idempotency::<B>(principal, key)?;
        let sql = format!(
            "SELECT fingerprint, created_at, status, response FROM idempotency \
             WHERE principal = {p}1 AND key = {p}2",
            p = <B::Dialect as Dialect>::PARAM
        );
        let params = [Value::text(principal), Value::text(key)];
        one(self, "read idempotency key", &sql, &params, |row| {
            codec::idempotency_from_row(row, principal, key)
        })
    }

    fn idempotency_rows(
        &mut self,
        keys: &[(String, String)],
    ) -> Result<Vec<IdempotencyRecord>, StoreError> {
        for (principal, key) in keys {
            check_idempotency::<B>(principal, key)?;
        }
        match self.idempotency_set(keys) {
            Some(rows) => rows,
            None => super::each::idempotency_rows(self, keys),
        }
    }

    fn insert_idempotency_rows(&mut self, records: &[IdempotencyRecord]) -> Result<(), StoreError> {
        for r in records {
            check_idempotency::<B>(&r.principal, &r.key)?;
        }
        match self.insert_idempotency_set(records) {
            Some(done) => done,
            None => all_or_nothing(self, "insert idempotency keys", |b| {
                super::each::insert_idempotency_rows(b, records)
            }),
        }
    }

    fn insert_idempotency(&mut self, record: &IdempotencyRecord) -> Result<(), StoreError> {
        check_idempotency::<B>(&record.principal, &record.key)?;
        let sql = sql::insert::<B::Dialect>("idempotency", &sql::IDEMPOTENCY_COLUMNS, Some(""));
        let params = codec::idempotency_values(record);
        match execute_unique(self, "insert idempotency key", &sql, &params)? {
            Some(n) if n > 0 => Ok(()),
            _ => Err(StoreError::Duplicate(format!(
                "idempotency key {}",
                record.key
            ))),
        }
    }

    fn update_idempotency(&mut self, record: &IdempotencyRecord) -> Result<(), StoreError> {
        check_idempotency::<B>(&record.principal, &record.key)?;
        let sql = sql::update::<B::Dialect>("idempotency", &sql::IDEMPOTENCY_COLUMNS, 2);
        let params = codec::idempotency_values(record);
        if execute(self, "update idempotency key", &sql, &params)? == 0 {
            return Err(StoreError::NotFound(format!(
                "idempotency key {}",
                record.key
            )));
        }
        Ok(())
    }

    fn delete_idempotency(&mut self, principal: &str, key: &str) -> Result<(), StoreError> {
        check_idempotency::<B>(principal, key)?;
        let sql = format!(
            "DELETE FROM idempotency WHERE principal = {p}1 AND key = {p}2",
            p = <B::Dialect as Dialect>::PARAM
        );
        let params = [Value::text(principal), Value::text(key)];
        execute(self, "delete idempotency key", &sql, &params).map(drop)
    }

    fn purge_idempotency(&mut self, created_before: UnixMillis) -> Result<u64, StoreError> {
        let sql = format!(
            "DELETE FROM idempotency WHERE created_at < {p}1",
            p = <B::Dialect as Dialect>::PARAM
        );
        execute(
            self,
            "purge idempotency records",
            &sql,
            &[Value::int(created_before)],
        )
    }

    fn insert_delivery(
        &mut self,
        kind: &str,
        payload: &[u8],
        created_at: UnixMillis,
    ) -> Result<u64, StoreError> {
        B::check_text("delivery kind", kind)?;
        let sql = format!(
            "INSERT INTO deliveries (kind, payload, created_at) VALUES ({}) RETURNING id",
            sql::placeholders::<B::Dialect>(1, 3)
        );
        let params = [
            Value::text(kind),
            Value::blob(payload),
            Value::int(created_at),
        ];
        let op = "insert delivery";
        let id = one(self, op, &sql, &params, first_int(op))?
            .ok_or_else(|| StoreError::Corrupt("insert delivery returned no id".into()))?;
        codec::to_delivery_id(id)
    }

    fn deliveries(
        &mut self,
        kind: &str,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        B::check_text("delivery kind", kind)?;
        let sql = format!(
            "SELECT id, kind, payload, created_at FROM deliveries \
             WHERE kind = {p}1 AND id > {p}2 ORDER BY id LIMIT {p}3",
            p = <B::Dialect as Dialect>::PARAM
        );
        let params = [
            Value::text(kind),
            Value::int(saturating_i64(after_id)),
            Value::int(saturating_i64(limit)),
        ];
        all(
            self,
            "read deliveries",
            &sql,
            &params,
            codec::delivery_from_row,
        )
    }

    fn count_deliveries(&mut self, kind: &str) -> Result<u64, StoreError> {
        B::check_text("delivery kind", kind)?;
        let sql = format!(
            "SELECT count(*) FROM deliveries {}",
            where_is::<B::Dialect>("kind")
        );
        let op = "count deliveries";
        let count = one(self, op, &sql, &[Value::text(kind)], first_int(op))?
            .ok_or_else(|| StoreError::Corrupt("count deliveries returned no row".into()))?;
        codec::to_delivery_id(count)
    }

    fn delete_delivery(&mut self, id: u64) -> Result<bool, StoreError> {
        let sql = format!("DELETE FROM deliveries {}", where_is::<B::Dialect>("id"));
        let params = [Value::int(saturating_i64(id))];
        Ok(execute(self, "delete delivery", &sql, &params)? > 0)
    }

    fn savepoint(&mut self) -> Result<(), StoreError> {
        self.savepoint_step(Savepoint::Open)
    }

    fn release_savepoint(&mut self) -> Result<(), StoreError> {
        self.savepoint_step(Savepoint::Release)
    }

    fn rollback_to_savepoint(&mut self) -> Result<(), StoreError> {
        self.savepoint_step(Savepoint::Rollback)
    }
}
