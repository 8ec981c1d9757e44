//! Bulk work: CSV import, provisioning and refresh of many devices, streamed in batches.
//!
//! Each batch is one transaction with one audit event naming every device of the batch, so a
//! process killed mid-way leaves whole batches behind and a rerun completes the rest: import skips
//! rows already registered with the same data, provisioning picks up the devices still
//! pre-active, migration the devices still on the old generation. Key material and key updates
//! for callers are journaled in the batch's transaction and written after it commits; a journal
//! entry is cleared only once its lines were taken, and the next run sends again what is left
//! ([`super::delivery`]): delivery is at-least-once, and a line repeated after a crash is
//! identical to the first.

use std::collections::HashSet;
use std::path::Path;

use serde::Serialize;

use super::delivery::{self, Delivery, DeliveryKind, DeliveryReport, Output};
use super::devices::{transition, validate_labels};
use super::lines::LineMaker;
use super::pipeline;
use super::{Fleet, fleet_info};
use crate::error::{Error, StoreError};
use crate::lifecycle::State;
use crate::model::{DeviceFilter, DeviceRecord, DeviceSerial, Scheme, SheUid};
use crate::store::{DeviceUpdate, Scan, read_tx, transact};

/// A 128-bit digest of a serial (truncated SHA-256): duplicates in a file are found by digest,
/// without keeping a million serials in memory. Distinct serials collide with probability about
/// n^2 / 2^129, about 2^-89 for a million rows.
fn serial_digest(serial: &DeviceSerial) -> u128 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(serial.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(digest.get(..16).unwrap_or(&[0; 16]));
    u128::from_le_bytes(first)
}

/// Hashes a digest by taking its low bits: it is uniformly distributed already.
#[derive(Default, Clone, Copy)]
struct DigestHasher(u64);

impl std::hash::BuildHasher for DigestHasher {
    type Hasher = DigestHasher;
    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
    }
}

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        // Truncation is the point: the low 64 bits of a uniform digest.
        self.0 = n as u64;
    }
}

/// Devices per transaction in bulk work.
pub const BATCH: usize = 10_000;

/// Reports the progress of a long operation (the CLI draws a bar).
pub trait Progress {
    /// Starts a phase of `total` items.
    fn start(&self, phase: &str, total: u64);
    /// `n` more items done.
    fn advance(&self, n: u64);
    /// The phase is done.
    fn finish(&self);
}

/// No progress display.
impl Progress for () {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

/// One parsed CSV row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportRow {
    /// Its line number in the file (1-based, the header is line 1).
    pub line: u64,
    /// The device.
    pub device: super::NewDevice,
}

/// The outcome of an import.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ImportReport {
    /// Rows in the file.
    pub rows: u64,
    /// Devices registered by this run.
    pub added: u64,
    /// Rows already registered with the same data (an earlier, interrupted run).
    pub already_present: u64,
    /// Devices whose key material was written for provisioning.
    pub provisioned: u64,
    /// Lines of interrupted runs sent again, and what is still owed.
    pub delivery: DeliveryReport,
}

/// The longest CSV line accepted, in bytes (a row holds a serial of at most 40 bytes, a SHE UID
/// and labels of at most 64 characters each).
pub const MAX_CSV_LINE: usize = 8192;

/// Fails a read once a line grows past [`MAX_CSV_LINE`] without a newline, so a file without line
/// breaks is refused after 8 KiB instead of being read whole into one record.
struct BoundedLines<R> {
    inner: R,
    /// Bytes since the last newline.
    run: usize,
    /// Newlines seen.
    lines: u64,
    /// The line that grew too long, once one did.
    overlong: std::rc::Rc<std::cell::Cell<Option<u64>>>,
}

impl<R: std::io::Read> std::io::Read for BoundedLines<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &b in buf.get(..n).unwrap_or(&[]) {
            if b == b'\n' {
                self.lines += 1;
                self.run = 0;
            } else {
                self.run += 1;
                if self.run > MAX_CSV_LINE {
                    self.overlong.set(Some(self.lines + 1));
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "line too long",
                    ));
                }
            }
        }
        Ok(n)
    }
}

/// A CSV header field for a message: quoted when it is short printable text, described otherwise
/// (bad input is named, not echoed).
fn describe_column(name: &[u8]) -> String {
    match std::str::from_utf8(name) {
        Ok(text) if text.len() <= 32 && !text.chars().any(char::is_control) => format!("{text:?}"),
        Ok(text) => format!("of {} characters", text.chars().count()),
        Err(_) => format!("of {} bytes that are not UTF-8", name.len()),
    }
}

/// Parses a device CSV: a header naming `serial` and optionally `she_uid` (30 hex characters)
/// and `labels` (separated by `;`). Serials are text, or `hex:<hex>` for raw bytes. Lines are at
/// most [`MAX_CSV_LINE`] bytes of UTF-8. Each error names the line and never repeats the bad
/// input at length.
pub fn parse_csv<R: std::io::Read>(reader: R) -> impl Iterator<Item = Result<ImportRow, Error>> {
    let overlong = std::rc::Rc::new(std::cell::Cell::new(None));
    let bounded = BoundedLines {
        inner: reader,
        run: 0,
        lines: 0,
        overlong: overlong.clone(),
    };
    let mut csv = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(bounded);
    // A read error of the bounded reader: the line that grew too long.
    let too_long = move || -> Option<Error> {
        overlong.get().map(|line| {
            Error::invalid(
                format!("csv line {line}"),
                format_args!("longer than {MAX_CSV_LINE} bytes"),
            )
        })
    };
    let columns = match csv.byte_headers() {
        Err(e) => Err(too_long().unwrap_or_else(|| Error::invalid("csv line 1", csv_problem(&e)))),
        Ok(h) => {
            let mut columns = [None; 3];
            let mut problem = None;
            for (i, name) in h.iter().enumerate() {
                let slot = match name {
                    b"serial" => 0,
                    b"she_uid" => 1,
                    b"labels" => 2,
                    other if std::str::from_utf8(other).is_err() => {
                        problem = Some(Error::invalid("csv line 1", "the header is not UTF-8"));
                        break;
                    }
                    other => {
                        problem = Some(Error::invalid(
                            "csv line 1",
                            format_args!(
                                "unknown column {} (the header must name a `serial` column, and may name she_uid and labels)",
                                describe_column(other)
                            ),
                        ));
                        break;
                    }
                };
                columns[slot] = Some(i);
            }
            match (problem, columns) {
                (Some(e), _) => Err(e),
                (None, [Some(serial), she_uid, labels]) => Ok((serial, she_uid, labels)),
                (None, _) => Err(Error::invalid(
                    "csv line 1",
                    "the header must name a `serial` column (and optionally she_uid, labels)",
                )),
            }
        }
    };
    let (mut header_error, columns) = match columns {
        Ok(c) => (None, c),
        Err(e) => (Some(e), (0, None, None)),
    };
    let mut records = csv.into_byte_records();
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed {
            return None;
        }
        if let Some(e) = header_error.take() {
            failed = true;
            return Some(Err(e));
        }
        let record = records.next()?;
        let result = match record {
            Err(e) => Err(too_long().unwrap_or_else(|| {
                let line = e.position().map_or(0, csv::Position::line);
                Error::invalid(format!("csv line {line}"), csv_problem(&e))
            })),
            Ok(record) => parse_row(&record, columns),
        };
        failed = result.is_err();
        Some(result)
    })
}

fn parse_row(
    record: &csv::ByteRecord,
    (serial_at, uid_at, labels_at): (usize, Option<usize>, Option<usize>),
) -> Result<ImportRow, Error> {
    let line = record.position().map_or(0, csv::Position::line);
    let field = |name: &str| format!("csv line {line}: {name}");
    let text = |i: Option<usize>, name: &str| -> Result<&str, Error> {
        let bytes = i.and_then(|i| record.get(i)).unwrap_or(b"");
        std::str::from_utf8(bytes).map_err(|_| Error::invalid(field(name), "not UTF-8"))
    };
    let serial = DeviceSerial::parse(text(Some(serial_at), "serial")?)
        .map_err(|e| Error::invalid(field("serial"), e))?;
    let she_uid = match text(uid_at, "she_uid")? {
        "" => None,
        hex_text => {
            let mut uid: SheUid = [0; 15];
            if hex_text.len() != 30 {
                return Err(Error::invalid(
                    field("she_uid"),
                    format_args!(
                        "{} characters, must be 30 hex characters (15 bytes)",
                        hex_text.len()
                    ),
                ));
            }
            hex::decode_to_slice(hex_text, &mut uid)
                .map_err(|e| Error::invalid(field("she_uid"), format_args!("not hex ({e})")))?;
            Some(uid)
        }
    };
    let labels: Vec<String> = text(labels_at, "labels")?
        .split(';')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    validate_labels(&labels).map_err(|e| Error::invalid(field("labels"), e))?;
    Ok(ImportRow {
        line,
        device: super::NewDevice {
            serial,
            she_uid,
            labels,
        },
    })
}

fn csv_problem(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            format!("{len} fields, the header has {expected_len}")
        }
        _ => e.to_string(),
    }
}

/// What a bulk provisioning or refresh did.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct BulkReport {
    /// Devices this run provisioned or refreshed.
    pub devices: u64,
    /// Lines of interrupted runs sent again, and what is still owed.
    pub delivery: DeliveryReport,
}

impl Fleet {
    /// Devices per transaction in bulk work from now on (1 to 100,000; [`BATCH`] unless set).
    pub fn set_batch_size(&mut self, devices: usize) {
        self.batch = devices.clamp(1, 100_000);
    }

    /// Imports devices from a CSV file. The whole file is checked first (syntax, duplicates in
    /// the file, conflicts with registered devices): a bad row refuses the import with its line
    /// number and nothing is written. Then it is registered in batches. With `provision_out`,
    /// devices are registered active and their key material goes to that output as JSON lines,
    /// delivered at least once ([`super::delivery`]): lines an interrupted run owes are sent
    /// first.
    pub fn import_csv(
        &mut self,
        path: &Path,
        provision_out: Option<&mut dyn Output>,
        progress: &dyn Progress,
    ) -> Result<ImportReport, Error> {
        let open = || {
            std::fs::File::open(path).map_err(|source| Error::Io {
                path: path.to_owned(),
                source,
            })
        };
        let registered = read_tx(self.store.as_mut(), |tx| {
            Ok(tx.count_devices(&DeviceFilter::default())?)
        })?;
        let batch_size = self.batch;
        // Pass 1: check everything before writing anything (parsed by a reader thread, the
        // duplicates found here).
        let mut rows = 0u64;
        progress.start("checking", 0);
        let file = open()?;
        std::thread::scope(|scope| {
            let parsed = read_ahead(scope, file, batch_size);
            let mut seen: HashSet<u128, DigestHasher> = HashSet::default();
            loop {
                let Ok(Parsed { rows: batch, error }) = parsed.recv() else {
                    return Err(Error::invalid("import", "its reader thread stopped"));
                };
                if batch.is_empty() && error.is_none() {
                    return Ok(());
                }
                for row in &batch {
                    if !seen.insert(serial_digest(&row.device.serial)) {
                        return Err(Error::invalid(
                            format!("csv line {}: serial", row.line),
                            format_args!("{} appears twice in the file", row.device.serial),
                        ));
                    }
                }
                rows += batch.len() as u64;
                progress.advance(batch.len() as u64);
                if let Some(e) = error {
                    return Err(e);
                }
            }
        })?;
        progress.finish();
        let mut delivery = provision_out.map(|out| Delivery::new(DeliveryKind::Provisioning, out));
        if let Some(d) = delivery.as_mut() {
            d.resend_pending(self, progress)?;
        }
        // Pass 2: register in batches.
        let report = ImportReport {
            rows,
            ..Default::default()
        };
        progress.start(
            if delivery.is_some() {
                "importing and provisioning"
            } else {
                "importing"
            },
            rows,
        );
        let file = open()?;
        let check_existing = registered > 0;
        let module = match delivery {
            Some(_) => Some(self.module.shared()?),
            None => None,
        };
        let mut run: ImportRun<'_, '_> = (self, delivery, report);
        // This thread: a batch registered (with its journal entry) in one transaction, from
        // the batches a reader thread parses (again) a batch ahead.
        let produce = |batches: &std::sync::mpsc::Receiver<Parsed>,
                       (fleet, delivery, report): &mut ImportRun<'_, '_>| {
            let Ok(Parsed { rows: batch, error }) = batches.recv() else {
                return Err(Error::invalid("import", "its reader thread stopped"));
            };
            if let Some(e) = error {
                return Err(e);
            }
            if batch.is_empty() {
                return Ok(None);
            }
            let (added, present, journaled) =
                fleet.import_batch(&batch, check_existing, delivery.as_mut())?;
            report.added += added;
            report.already_present += present;
            if delivery.is_some() {
                report.provisioned += added;
            }
            Ok(Some((batch.len() as u64, journaled)))
        };
        // The workers: the key material of the batch's devices.
        let work = |(n, journaled): (u64, Option<Journaled>)| {
            let (Some((id, records)), Some(module)) = (journaled, module.as_ref()) else {
                return Ok((n, None));
            };
            let mut lines = zeroize::Zeroizing::new(Vec::with_capacity(records.len() * 220));
            LineMaker::new(module.as_ref()).provisioning(&records, &mut lines)?;
            Ok((n, Some((id, lines))))
        };
        // This thread, in commit order: the lines delivered.
        let consume = |(_, delivery, _): &mut ImportRun<'_, '_>,
                       (n, lines): (u64, Option<Lines>)| {
            if let (Some(d), Some((id, lines))) = (delivery.as_mut(), lines) {
                d.send(id, &lines)?;
            }
            progress.advance(n);
            Ok(())
        };
        std::thread::scope(|scope| {
            // Dropped with the pipeline, the receiver stops a reader still parsing.
            let batches = read_ahead(scope, file, batch_size);
            let produce = move |run: &mut ImportRun<'_, '_>| produce(&batches, run);
            pipeline::in_order(&mut run, pipeline::workers(), 2, produce, work, consume)
        })?;
        let (fleet, delivery, mut report) = run;
        progress.finish();
        if let Some(d) = delivery {
            report.delivery = d.finish(fleet)?;
        }
        Ok(report)
    }

    fn import_batch(
        &mut self,
        batch: &[ImportRow],
        check_existing: bool,
        delivery: Option<&mut Delivery<'_>>,
    ) -> Result<(u64, u64, Option<Journaled>), Error> {
        let provision = delivery.is_some();
        let (state, reason) = if provision {
            (State::Active, "imported and provisioned")
        } else {
            (State::PreActive, "imported")
        };
        let change = self.change(reason);
        let mut draft = self.draft(
            if provision {
                "device.import_provision"
            } else {
                "device.import"
            },
            None,
            vec![],
            serde_json::json!({}),
        );
        let current = read_tx(self.store.as_mut(), |tx| {
            Ok(fleet_info(tx)?.current_generation)
        })?;
        // Which rows are new (only a resumed import finds registered ones).
        let mut fresh: Vec<&ImportRow> = Vec::with_capacity(batch.len());
        let mut present = 0u64;
        if check_existing {
            read_tx(self.store.as_mut(), |tx| {
                fresh.clear();
                present = 0;
                for row in batch {
                    match tx.device(&row.device.serial)? {
                        None => fresh.push(row),
                        Some(d)
                            if d.she_uid == row.device.she_uid && d.labels == row.device.labels =>
                        {
                            present += 1
                        }
                        Some(_) => {
                            return Err(Error::invalid(
                                format!("csv line {}: serial", row.line),
                                format_args!(
                                    "{} is already registered with another SHE UID or labels",
                                    row.device.serial
                                ),
                            ));
                        }
                    }
                }
                Ok(())
            })?;
        } else {
            fresh.extend(batch.iter());
        }
        let mut records = Vec::with_capacity(fresh.len());
        for row in &fresh {
            let wrapped_root = self.new_device_root()?;
            records.push(DeviceRecord {
                serial: row.device.serial.clone(),
                she_uid: row.device.she_uid,
                labels: row.device.labels.clone(),
                generation: current.unwrap_or(0),
                revision: 0,
                state,
                changed: change.clone(),
                wrapped_root,
                created_at: change.at,
            });
        }
        let added = records.len() as u64;
        if records.is_empty() {
            return Ok((0, present, None));
        }
        draft.generation = current;
        draft.subjects = records.iter().map(|r| r.serial.clone()).collect();
        draft.details = serde_json::json!({"count": records.len(), "state": state, "first_line": fresh.first().map(|r| r.line)});
        let journal = if provision {
            Some(delivery::provisioning_payload(&records)?)
        } else {
            None
        };
        let taken = delivery.as_ref().map(|d| d.taken()).unwrap_or_default();
        let entry = transact(self.store.as_mut(), |tx| {
            delivery::delete_taken(tx, &taken)?;
            tx.insert_devices(&records).map_err(|e| match e {
                crate::error::StoreError::Duplicate(what) => Error::RegisteredDuringImport(what),
                other => other.into(),
            })?;
            tx.append_audit(draft.clone())?;
            journal
                .as_ref()
                .map(|payload| {
                    tx.insert_delivery(DeliveryKind::Provisioning.name(), payload, change.at)
                })
                .transpose()
                .map_err(Error::from)
        })?;
        if let Some(d) = delivery {
            d.deleted(taken.len());
        }
        Ok((added, present, entry.map(|id| (id, records))))
    }

    /// Appends the provisioning lines of devices (their keys at their generation and revision).
    pub(super) fn material_lines(
        &self,
        records: &[DeviceRecord],
        buf: &mut Vec<u8>,
    ) -> Result<(), Error> {
        LineMaker::new(self.module()?).provisioning(records, buf)
    }

    /// Provisions every device matching `filter` that is still pre-active: marks a batch active
    /// and journals its key material in one transaction, then writes the material to `out`
    /// (at least once, [`super::delivery`]; lines an interrupted run owes are sent first).
    pub fn provision_all(
        &mut self,
        filter: &DeviceFilter,
        out: &mut dyn Output,
        progress: &dyn Progress,
    ) -> Result<BulkReport, Error> {
        let module = self.module.shared()?;
        let mut run = Run::start(
            self,
            (DeliveryKind::Provisioning, out),
            (filter, State::PreActive),
            "provisioning",
            progress,
        )?;
        // This thread: one pass per batch, the page read and activated in the same transaction
        // by one conditional update (only devices still pre-active change), with its journal
        // entry.
        let produce = |run: &mut Run<'_, '_>| {
            let batch = run.fleet.batch;
            let change = run.fleet.change("provisioned");
            let mut draft =
                run.fleet
                    .draft("device.provision", None, vec![], serde_json::json!({}));
            let update = DeviceUpdate {
                state: Some(State::Active),
                bump_revision: false,
                generation: None,
                changed: change.clone(),
            };
            let taken = run.delivery.taken();
            let (filter, after, scan) = (&run.filter, run.after.as_ref(), run.scan);
            let step = transact(run.fleet.store.as_mut(), |tx| {
                delivery::delete_taken(tx, &taken)?;
                let mut page = tx.devices_by(filter, after, batch, scan)?;
                let Some(last) = page.last().map(|d| d.serial.clone()) else {
                    return Ok(None);
                };
                for d in &mut page {
                    transition(d, State::Active)?;
                    update.apply_to(d)?;
                }
                let changed = tx.update_devices(filter, after, &last, &update, scan)?;
                same_rows(changed, page.len())?;
                draft.subjects = page.iter().map(|d| d.serial.clone()).collect();
                draft.details = serde_json::json!({"count": page.len(), "state": "active"});
                draft.generation = page.first().map(|d| d.generation);
                tx.append_audit(draft.clone())?;
                let journal = delivery::provisioning_payload(&page)?;
                let id =
                    tx.insert_delivery(DeliveryKind::Provisioning.name(), &journal, change.at)?;
                Ok(Some((page, id)))
            })?;
            run.delivery.deleted(taken.len());
            if let Some((page, _)) = &step {
                run.after = page.last().map(|d| d.serial.clone());
            }
            Ok(step)
        };
        // The workers: the key material of the batch's devices.
        let work = |(page, id): (Vec<DeviceRecord>, u64)| {
            let mut lines = zeroize::Zeroizing::new(Vec::with_capacity(page.len() * 220));
            LineMaker::new(module.as_ref()).provisioning(&page, &mut lines)?;
            Ok((id, page.len() as u64, lines))
        };
        // This thread, in commit order: the lines delivered.
        let consume =
            |run: &mut Run<'_, '_>, (id, n, lines): (u64, u64, zeroize::Zeroizing<Vec<u8>>)| {
                run.delivery.send(id, &lines)?;
                run.done += n;
                progress.advance(n);
                Ok(())
            };
        pipeline::in_order(&mut run, pipeline::workers(), 2, produce, work, consume)?;
        progress.finish();
        Ok(BulkReport {
            devices: run.done,
            delivery: run.delivery.finish(run.fleet)?,
        })
    }

    /// Refreshes every active device matching `filter` (rotation's migration: filter by the old
    /// generation), in batches: each batch's refreshes and its journal entry commit together,
    /// then its SHE updates go to `out` as JSON lines, at least once ([`super::delivery`]; lines
    /// an interrupted run owes are sent first).
    pub fn refresh_all(
        &mut self,
        filter: &DeviceFilter,
        reason: &str,
        out: &mut dyn Output,
        progress: &dyn Progress,
    ) -> Result<BulkReport, Error> {
        self.refresh_all_with(filter, reason, out, progress, &mut |_, _| Ok(()))
    }

    /// [`Fleet::refresh_all`], calling `between` after each batch with the devices refreshed so
    /// far (the lifecycle scheduler renews its lease and keeps its rate there; an error stops the
    /// refresh after that batch, whose lines were delivered).
    pub(crate) fn refresh_all_with(
        &mut self,
        filter: &DeviceFilter,
        reason: &str,
        out: &mut dyn Output,
        progress: &dyn Progress,
        between: &mut dyn FnMut(&mut Fleet, u64) -> Result<(), Error>,
    ) -> Result<BulkReport, Error> {
        let stored = self.config.scheme == Scheme::Stored;
        let module = self.module.shared()?;
        let mut run = Run::start(
            self,
            (DeliveryKind::KeyUpdate, out),
            (filter, State::Active),
            "refreshing",
            progress,
        )?;
        // Stage 1, this thread: a batch's refreshes and its journal entry commit together.
        let produce = |run: &mut Run<'_, '_>| {
            let batch = run.fleet.batch;
            let change = run.fleet.change(reason);
            let mut draft = run
                .fleet
                .draft("device.refresh", None, vec![], serde_json::json!({}));
            // One pass per batch: the page is read and refreshed in the same transaction; in the
            // derived schemes by one conditional update (only devices still active change), in
            // the stored scheme row by row (each device gets a new root).
            let taken = run.delivery.taken();
            let (filter, after, scan) = (&run.filter, run.after.as_ref(), run.scan);
            let step = transact(run.fleet.store.as_mut(), |tx| {
                delivery::delete_taken(tx, &taken)?;
                let fleet = fleet_info(tx)?;
                let page = tx.devices_by(filter, after, batch, scan)?;
                let Some(last) = page.last() else {
                    return Ok(None);
                };
                let update = DeviceUpdate {
                    state: None,
                    bump_revision: true,
                    generation: fleet.current_generation,
                    changed: change.clone(),
                };
                let mut refreshed = Vec::with_capacity(page.len());
                for old in &page {
                    fleetkey_core::Revision::new(old.revision)
                        .and_then(|r| r.next())
                        .map_err(|_| Error::LastRevision(old.serial.clone()))?;
                    let mut new = update.apply(old)?;
                    if stored {
                        new.wrapped_root = Some(module.new_wrapped_root()?);
                        tx.update_device(&new)?;
                    }
                    refreshed.push(new);
                }
                if !stored {
                    let changed = tx.update_devices(filter, after, &last.serial, &update, scan)?;
                    same_rows(changed, page.len())?;
                }
                draft.subjects = refreshed.iter().map(|d| d.serial.clone()).collect();
                draft.generation = fleet.current_generation;
                draft.details = serde_json::json!({"count": refreshed.len(), "reason": reason});
                tx.append_audit(draft.clone())?;
                let journal = delivery::refresh_payload(&page, &refreshed, &update)?;
                let id = tx.insert_delivery(DeliveryKind::KeyUpdate.name(), &journal, change.at)?;
                Ok(Some((page, refreshed, id)))
            })?;
            run.delivery.deleted(taken.len());
            if let Some((page, _, _)) = &step {
                run.after = page.last().map(|d| d.serial.clone());
            }
            Ok(step)
        };
        // Stage 2, the workers: the SHE updates, from the same records as the journal entry (a
        // re-send rebuilds them byte for byte), outside the store's write lock.
        let work = |(page, refreshed, id): (Vec<DeviceRecord>, Vec<DeviceRecord>, u64)| {
            let mut lines = Vec::with_capacity(refreshed.len() * 1_600);
            LineMaker::new(module.as_ref()).key_updates(&page, &refreshed, &mut lines)?;
            Ok((id, page.len() as u64, lines))
        };
        // Stage 3, this thread, in commit order: the lines delivered.
        // An error of `between` stops the run after that batch: no batch is read after it, and
        // those committed by then are still delivered.
        let consume = |run: &mut Run<'_, '_>, (id, n, lines): (u64, u64, Vec<u8>)| {
            run.delivery.send(id, &lines)?;
            run.done += n;
            progress.advance(n);
            if run.stop.is_none()
                && let Err(e) = between(run.fleet, run.done)
            {
                run.stop = Some(e);
            }
            Ok(())
        };
        let produce = move |run: &mut Run<'_, '_>| match run.stop {
            Some(_) => Ok(None),
            None => produce(run),
        };
        pipeline::in_order(&mut run, pipeline::workers(), 2, produce, work, consume)?;
        let Run {
            fleet,
            delivery,
            done,
            stop,
            ..
        } = run;
        if let Some(stop) = stop {
            // The batches delivered so far are not owed again.
            let mut delivery = delivery;
            delivery.delete_taken_now(fleet)?;
            return Err(stop);
        }
        progress.finish();
        Ok(BulkReport {
            devices: done,
            delivery: delivery.finish(fleet)?,
        })
    }
}

/// A batch's journal entry and the records its lines are made from.
type Journaled = (u64, Vec<DeviceRecord>);

/// A journal entry and the lines it owes (key material: zeroized when dropped).
type Lines = (u64, zeroize::Zeroizing<Vec<u8>>);

/// A batch of rows parsed by [`read_ahead`], and the error that ended it: a batch with neither
/// ends the file.
struct Parsed {
    rows: Vec<ImportRow>,
    error: Option<Error>,
}

/// Parses a device CSV in a thread of `scope`, `batch` rows at a time and one batch ahead of
/// the receiver. A batch stops at the first bad row, whose error it carries; the reader stops
/// there, at the end of the file, or when the receiver is dropped.
fn read_ahead<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    file: std::fs::File,
    batch: usize,
) -> std::sync::mpsc::Receiver<Parsed> {
    let (parsed, batches) = std::sync::mpsc::sync_channel(1);
    scope.spawn(move || {
        let mut rows = parse_csv(std::io::BufReader::with_capacity(1 << 20, file));
        loop {
            let mut next = Parsed {
                rows: Vec::with_capacity(batch),
                error: None,
            };
            for row in rows.by_ref().take(batch) {
                match row {
                    Ok(row) => next.rows.push(row),
                    Err(e) => {
                        next.error = Some(e);
                        break;
                    }
                }
            }
            let last = next.rows.is_empty() || next.error.is_some();
            if parsed.send(next).is_err() || last {
                return;
            }
        }
    });
    batches
}

/// What an import's registration pass shares between its stages on the calling thread.
type ImportRun<'f, 'o> = (&'f mut Fleet, Option<Delivery<'o>>, ImportReport);

/// The state a pipelined bulk run's two stages on the calling thread share.
struct Run<'f, 'o> {
    fleet: &'f mut Fleet,
    delivery: Delivery<'o>,
    filter: DeviceFilter,
    after: Option<DeviceSerial>,
    /// How the pages are looked up.
    scan: Scan,
    done: u64,
    /// What stopped the run between two batches.
    stop: Option<Error>,
}

impl<'f, 'o> Run<'f, 'o> {
    /// A bulk run over the devices of `filter` in `state`, its lines of `kind` to `out`: the
    /// lines interrupted runs of its kind owe are sent first, then the devices are counted (the
    /// progress `phase` starts) and how to look up their pages is chosen.
    fn start(
        fleet: &'f mut Fleet,
        (kind, out): (DeliveryKind, &'o mut dyn Output),
        (filter, state): (&DeviceFilter, State),
        phase: &str,
        progress: &dyn Progress,
    ) -> Result<Self, Error> {
        let mut delivery = Delivery::new(kind, out);
        delivery.resend_pending(fleet, progress)?;
        let mut filter = filter.clone();
        filter.state = Some(state);
        let (total, scan) = read_tx(fleet.store.as_mut(), |tx| {
            let matching = tx.count_devices(&filter)?;
            let all = tx.count_devices(&DeviceFilter::default())?;
            Ok((matching, Scan::for_share(matching, all)))
        })?;
        progress.start(phase, total);
        Ok(Run {
            fleet,
            delivery,
            filter,
            after: None,
            scan,
            done: 0,
            stop: None,
        })
    }
}

/// Checks that a conditional bulk update changed exactly the page read before it in the same
/// transaction (it cannot differ under the stores' isolation; a store that let it would be
/// broken, and the transaction is rolled back).
fn same_rows(changed: u64, read: usize) -> Result<(), Error> {
    if changed == read as u64 {
        return Ok(());
    }
    Err(StoreError::Backend {
        operation: "update devices",
        detail: format!("changed {changed} of the {read} devices read in the same transaction"),
    }
    .into())
}
