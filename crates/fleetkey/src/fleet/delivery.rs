//! Delivery of bulk output: every line a bulk command owes its caller arrives at least once.
//!
//! The rule, for every bulk command that hands key material or key updates to a caller (`device
//! import --provision-out`, `device provision --all`, `device refresh --all` and the migrations
//! done with it):
//!
//! 1. A batch's state changes commit in one transaction together with a *delivery journal* entry
//!    ([`crate::store::Tx::insert_delivery`]) that says which lines the batch owes: devices,
//!    generations, revisions and (stored scheme) the roots wrapped under the KEK, nothing secret
//!    in clear.
//! 2. Then the lines are written to the output. An entry is deleted only once the caller has
//!    *taken* its lines ([`Output::taken`]): a regular file, when they are written and synced to
//!    disk; a pipe or FIFO, when the reader has read them out of the pipe's buffer.
//! 3. Every run of a bulk command first re-sends the lines of the entries of its kind that are
//!    still in the journal (an earlier run crashed, was killed, or its reader stopped reading),
//!    rebuilt from the journal: a key update byte for byte the line first sent, a provisioning
//!    line with the device's current keys (the same line unless the device was refreshed since).
//!
//! So a caller may see a line twice, never zero times. A line names its device and the
//! generation and revision it brings; a station de-duplicates by keeping, per serial, the line
//! with the highest (generation, revision) and dropping exact repeats. Lines are never re-sent
//! for a device that is no longer active (revoked, suspended, decommissioned since): its keys are
//! not issued again.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::lines::LineMaker;
use super::{Fleet, bulk::Progress};
use crate::error::{Error, StoreError};
use crate::lifecycle::State;
use crate::model::{Change, DeviceRecord, DeviceSerial, SheUid, UnixMillis, WrappedKey};
use crate::store::{DeviceUpdate, Tx, read_tx, transact};

/// What kind of lines a journal entry owes. Bulk commands of one kind re-send each other's lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryKind {
    /// Key material for stations (JSON lines of serial, generation, revision, keys).
    Provisioning,
    /// SHE key updates (JSON lines of [`KeyUpdate`](super::KeyUpdate)).
    KeyUpdate,
}

impl DeliveryKind {
    /// Its name in the journal.
    pub fn name(self) -> &'static str {
        match self {
            DeliveryKind::Provisioning => "provisioning",
            DeliveryKind::KeyUpdate => "key-update",
        }
    }
}

/// Where a bulk command's lines go, and how far they have got.
pub trait Output {
    /// Writes whole lines and returns once the destination holds them (a file: written and synced).
    fn write_lines(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// How many of the bytes written so far the reader has taken: a file, every byte once synced;
    /// a pipe, those no longer in its buffer.
    fn taken(&mut self) -> io::Result<u64>;
    /// Bytes written so far.
    fn written(&self) -> u64;
    /// Where the lines go, for messages.
    fn describe(&self) -> String;
}

/// Lines kept in memory (tests, benchmarks): taken as soon as written.
impl Output for Vec<u8> {
    fn write_lines(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.extend_from_slice(bytes);
        Ok(())
    }
    fn taken(&mut self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
    fn written(&self) -> u64 {
        self.len() as u64
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

/// Lines thrown away (benchmarks): taken at once.
#[derive(Debug, Default)]
pub struct Discard(u64);

impl Output for Discard {
    fn write_lines(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0 += bytes.len() as u64;
        Ok(())
    }
    fn taken(&mut self) -> io::Result<u64> {
        Ok(self.0)
    }
    fn written(&self) -> u64 {
        self.0
    }
    fn describe(&self) -> String {
        "nowhere".into()
    }
}

/// The most bytes [`OutputFile`] hands the kernel in one write.
const WRITE_PIECE: usize = 256 * 1024;

/// A file, FIFO or pipe opened for appending.
#[derive(Debug)]
pub struct OutputFile {
    file: std::fs::File,
    path: PathBuf,
    written: u64,
    how: Taken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Taken {
    /// A regular file: synced after every batch.
    Synced,
    /// A pipe or FIFO: what is still in its buffer has not been read.
    Pipe,
    /// Anything else (a terminal, /dev/null): taken when written.
    Written,
}

impl OutputFile {
    /// Opens `path` for appending (created with mode 0600 when missing: the lines can hold keys).
    /// A FIFO blocks here until a reader opens it.
    pub fn append(path: &Path) -> io::Result<OutputFile> {
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(path)?;
        Self::new(file, path.to_owned())
    }

    /// Wraps an open file (standard output, a pipe from a parent).
    pub fn new(file: std::fs::File, path: PathBuf) -> io::Result<OutputFile> {
        let kind = file.metadata()?.file_type();
        #[cfg(unix)]
        let fifo = std::os::unix::fs::FileTypeExt::is_fifo(&kind);
        #[cfg(not(unix))]
        let fifo = false;
        let how = if kind.is_file() {
            Taken::Synced
        } else if fifo {
            Taken::Pipe
        } else {
            Taken::Written
        };
        Ok(OutputFile {
            file,
            path,
            written: 0,
            how,
        })
    }
}

impl Output for OutputFile {
    fn write_lines(&mut self, bytes: &[u8]) -> io::Result<()> {
        // In pieces of WRITE_PIECE: one write of a whole batch (a refresh's is 15 MiB) was
        // measured 3x slower into a new file's page cache, synced per batch, than the same bytes
        // in pieces (docs/manager.md).
        for piece in bytes.chunks(WRITE_PIECE) {
            self.file.write_all(piece)?;
        }
        self.written += bytes.len() as u64;
        if self.how == Taken::Synced {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn taken(&mut self) -> io::Result<u64> {
        match self.how {
            Taken::Synced | Taken::Written => Ok(self.written),
            #[cfg(unix)]
            Taken::Pipe => {
                let unread = rustix::io::ioctl_fionread(&self.file)?;
                Ok(self.written.saturating_sub(unread))
            }
            #[cfg(not(unix))]
            Taken::Pipe => Ok(self.written),
        }
    }

    fn written(&self) -> u64 {
        self.written
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// One device's line in a journal entry.
#[derive(Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Owed {
    /// Key material at the device's current generation and revision.
    Provision { serial: DeviceSerial },
    /// The update that brought the device to `device` from `from` (with `from_root`, the stored
    /// scheme's root before, wrapped). Written before batches of refreshes were journaled as
    /// [`Owed::Refreshed`]; still read.
    Update {
        device: DeviceRecord,
        from: (u32, u32),
        from_root: Option<WrappedKey>,
    },
    /// A device of a batch of refreshes, in short: its record before, less what the batch's
    /// update ([`Payload::refresh`]) sets in every device alike. The record after is that update
    /// applied to it, with `root` (the stored scheme's new root, wrapped).
    #[serde(rename = "r")]
    Refreshed {
        #[serde(rename = "s")]
        serial: DeviceSerial,
        #[serde(
            rename = "u",
            default,
            skip_serializing_if = "Option::is_none",
            with = "crate::model::option_hex15"
        )]
        she_uid: Option<SheUid>,
        #[serde(rename = "l", default, skip_serializing_if = "Vec::is_empty")]
        labels: Vec<String>,
        #[serde(rename = "st")]
        state: State,
        #[serde(rename = "c")]
        created_at: UnixMillis,
        #[serde(rename = "f")]
        from: (u32, u32),
        #[serde(rename = "fr", default, skip_serializing_if = "Option::is_none")]
        from_root: Option<WrappedKey>,
        #[serde(rename = "nr", default, skip_serializing_if = "Option::is_none")]
        root: Option<WrappedKey>,
    },
}

/// A journal entry's payload.
#[derive(Serialize, Deserialize)]
struct Payload {
    owed: Vec<Owed>,
    /// What a batch of refreshes changed in every device alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh: Option<BatchRefresh>,
}

/// The update a batch of refreshes applied to every device ([`DeviceUpdate`] with its revision
/// bumped).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct BatchRefresh {
    generation: Option<u32>,
    changed: Change,
}

impl BatchRefresh {
    fn update(&self) -> DeviceUpdate {
        DeviceUpdate {
            state: None,
            bump_revision: true,
            generation: self.generation,
            changed: self.changed.clone(),
        }
    }
}

/// A line a journal entry owes, as records.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// Key material of the device.
    Provision(DeviceSerial),
    /// The update from the first record to the second.
    Update(Box<(DeviceRecord, DeviceRecord)>),
}

impl Line {
    fn serial(&self) -> &DeviceSerial {
        match self {
            Line::Provision(serial) => serial,
            Line::Update(pair) => &pair.1.serial,
        }
    }
}

impl Payload {
    /// The lines owed, in order.
    fn lines(self) -> Result<Vec<Line>, Error> {
        let refresh = self.refresh.as_ref().map(BatchRefresh::update);
        self.owed
            .into_iter()
            .map(|owed| match owed {
                Owed::Provision { serial } => Ok(Line::Provision(serial)),
                Owed::Update {
                    device,
                    from,
                    from_root,
                } => {
                    let mut old = device.clone();
                    (old.generation, old.revision) = from;
                    if from_root.is_some() {
                        old.wrapped_root = from_root;
                    }
                    Ok(Line::Update(Box::new((old, device))))
                }
                Owed::Refreshed {
                    serial,
                    she_uid,
                    labels,
                    state,
                    created_at,
                    from,
                    from_root,
                    root,
                } => {
                    let update = refresh.as_ref().ok_or_else(|| {
                        StoreError::Corrupt(
                            "delivery journal: a refreshed device without its batch's update"
                                .into(),
                        )
                    })?;
                    let old = DeviceRecord {
                        serial,
                        she_uid,
                        labels,
                        generation: from.0,
                        revision: from.1,
                        state,
                        changed: update.changed.clone(),
                        wrapped_root: from_root,
                        created_at,
                    };
                    let mut new = update.apply(&old)?;
                    new.wrapped_root = root;
                    Ok(Line::Update(Box::new((old, new))))
                }
            })
            .collect()
    }
}

/// What a run of a bulk command did about delivery, for its report.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Lines of earlier, interrupted runs sent again before this run's own.
    pub resent: u64,
    /// Lines of earlier runs not sent again because their device is no longer active.
    pub dropped: u64,
    /// Batches whose lines the reader had not taken when the command ended (a pipe whose reader
    /// stopped reading): the next run of the same kind sends them again.
    pub unconfirmed_batches: u64,
}

/// How long a bulk command waits at its end for a pipe's reader that takes nothing more.
pub const DRAIN_PATIENCE: Duration = Duration::from_secs(30);

/// The lines of one bulk run on their way to one output.
pub(super) struct Delivery<'o> {
    kind: DeliveryKind,
    out: &'o mut dyn Output,
    /// Journal entries written but not yet taken: (id, end offset in the output).
    pending: VecDeque<(u64, u64)>,
    /// Journal entries whose lines were taken, not deleted yet: the next batch's transaction
    /// deletes them ([`Delivery::taken`]), or [`Delivery::finish`] does.
    taken: Vec<u64>,
    pub(super) report: DeliveryReport,
}

impl<'o> Delivery<'o> {
    pub(super) fn new(kind: DeliveryKind, out: &'o mut dyn Output) -> Self {
        Delivery {
            kind,
            out,
            pending: VecDeque::new(),
            taken: Vec::new(),
            report: DeliveryReport::default(),
        }
    }

    /// Writes a committed batch's lines and notes the journal entries whose lines were taken
    /// (deleted with the next batch, [`Delivery::taken`], or by [`Delivery::finish`]).
    pub(super) fn send(&mut self, id: u64, lines: &[u8]) -> Result<(), Error> {
        self.out
            .write_lines(lines)
            .map_err(|source| self.io_error(source))?;
        self.pending.push_back((id, self.out.written()));
        self.confirm().map(drop)
    }

    /// The journal entries whose lines were taken and that are not deleted yet: a bulk command
    /// deletes them in its next batch's transaction ([`delete_taken`]) and then calls
    /// [`Delivery::deleted`], saving a commit per batch. Until then they stay owed: a run killed
    /// in between sends their lines again, which at-least-once allows.
    pub(super) fn taken(&self) -> Vec<u64> {
        self.taken.clone()
    }

    /// The first `n` entries of [`Delivery::taken`] were deleted by a committed transaction.
    pub(super) fn deleted(&mut self, n: usize) {
        self.taken.drain(..n.min(self.taken.len()));
    }

    /// Deletes the taken entries in a transaction of their own.
    pub(super) fn delete_taken_now(&mut self, fleet: &mut Fleet) -> Result<(), Error> {
        if self.taken.is_empty() {
            return Ok(());
        }
        let ids = self.taken();
        transact(fleet.store.as_mut(), |tx| delete_taken(tx, &ids))?;
        self.deleted(ids.len());
        Ok(())
    }

    fn io_error(&self, source: io::Error) -> Error {
        Error::Io {
            path: self.out.describe().into(),
            source,
        }
    }

    /// Moves the journal entries whose lines the reader has taken to [`Delivery::taken`];
    /// returns how many bytes it has.
    fn confirm(&mut self) -> Result<u64, Error> {
        let taken = self.out.taken().map_err(|source| self.io_error(source))?;
        while let Some(&(id, end)) = self.pending.front() {
            if end > taken {
                break;
            }
            self.taken.push(id);
            self.pending.pop_front();
        }
        Ok(taken)
    }

    /// Waits until the reader has taken every line (a pipe), giving up after
    /// [`DRAIN_PATIENCE`] without progress; what is left stays in the journal.
    pub(super) fn finish(mut self, fleet: &mut Fleet) -> Result<DeliveryReport, Error> {
        let mut last = None;
        let mut since = Instant::now();
        self.delete_taken_now(fleet)?;
        while !self.pending.is_empty() {
            let taken = self.confirm()?;
            self.delete_taken_now(fleet)?;
            if last != Some(taken) {
                last = Some(taken);
                since = Instant::now();
            } else if since.elapsed() > DRAIN_PATIENCE {
                break;
            }
            if !self.pending.is_empty() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.report.unconfirmed_batches = self.pending.len() as u64;
        Ok(self.report)
    }

    /// Sends again, first, what earlier runs of this kind owe (their journal entries).
    pub(super) fn resend_pending(
        &mut self,
        fleet: &mut Fleet,
        progress: &dyn Progress,
    ) -> Result<(), Error> {
        let kind = self.kind.name();
        let total = read_tx(fleet.store.as_mut(), |tx| Ok(tx.count_deliveries(kind)?))?;
        if total == 0 {
            return Ok(());
        }
        progress.start("re-sending an interrupted run's lines", total);
        let mut after = 0;
        loop {
            let entries = read_tx(
                fleet.store.as_mut(),
                |tx| Ok(tx.deliveries(kind, after, 1)?),
            )?;
            let Some(entry) = entries.into_iter().next() else {
                break;
            };
            after = entry.id;
            let payload: Payload = serde_json::from_slice(&entry.payload).map_err(|e| {
                StoreError::Corrupt(format!("delivery journal entry {}: {e}", entry.id))
            })?;
            let Rebuilt {
                lines,
                sent,
                dropped,
            } = fleet.rebuild_lines(self.kind, payload)?;
            let mut draft = fleet.draft(
                "delivery.resend",
                None,
                sent,
                serde_json::json!({"kind": kind, "entry": entry.id, "dropped": dropped}),
            );
            draft.details["count"] = serde_json::json!(draft.subjects.len());
            let count = draft.subjects.len() as u64;
            transact(fleet.store.as_mut(), |tx| {
                tx.append_audit(draft.clone())?;
                Ok(())
            })?;
            self.send(entry.id, &lines)?;
            self.delete_taken_now(fleet)?;
            self.report.resent += count;
            self.report.dropped += dropped;
            progress.advance(1);
        }
        progress.finish();
        Ok(())
    }
}

/// Deletes the journal entries `ids` (whose lines were taken) in a batch's transaction.
pub(super) fn delete_taken(tx: &mut dyn Tx, ids: &[u64]) -> Result<(), Error> {
    for id in ids {
        tx.delete_delivery(*id)?;
    }
    Ok(())
}

/// The journal payload of a provisioning batch.
pub(super) fn provisioning_payload(records: &[DeviceRecord]) -> Result<Vec<u8>, Error> {
    encode(Payload {
        owed: records
            .iter()
            .map(|r| Owed::Provision {
                serial: r.serial.clone(),
            })
            .collect(),
        refresh: None,
    })
}

/// The journal payload of a batch of refreshes: each device before (`old`), `update` (which
/// every device got; its revision bumped) and, in the stored scheme, each device's new root. The
/// records after are `update` applied to `old`, with their roots (as the batch computed them:
/// `new`); what the devices share is written once.
pub(super) fn refresh_payload(
    old: &[DeviceRecord],
    new: &[DeviceRecord],
    update: &DeviceUpdate,
) -> Result<Vec<u8>, Error> {
    encode(Payload {
        owed: old
            .iter()
            .zip(new)
            .map(|(old, new)| Owed::Refreshed {
                serial: old.serial.clone(),
                she_uid: old.she_uid,
                labels: old.labels.clone(),
                state: old.state,
                created_at: old.created_at,
                from: (old.generation, old.revision),
                from_root: old.wrapped_root.clone(),
                root: new.wrapped_root.clone(),
            })
            .collect(),
        refresh: Some(BatchRefresh {
            generation: update.generation,
            changed: update.changed.clone(),
        }),
    })
}

fn encode(payload: Payload) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(&payload).map_err(|e| Error::invalid("delivery journal", e))
}

impl Fleet {
    /// How many batches of `kind` the delivery journal still owes a caller (an interrupted run's).
    pub fn owed_lines(&mut self, kind: DeliveryKind) -> Result<u64, Error> {
        read_tx(self.store.as_mut(), |tx| {
            Ok(tx.count_deliveries(kind.name())?)
        })
    }

    /// The lines a journal entry owes, rebuilt; with the serials sent and how many were dropped
    /// (the device is no longer active).
    fn rebuild_lines(&mut self, kind: DeliveryKind, payload: Payload) -> Result<Rebuilt, Error> {
        let owed = payload.lines()?;
        let serials: Vec<DeviceSerial> = owed.iter().map(|l| l.serial().clone()).collect();
        let current = read_tx(self.store.as_mut(), |tx| {
            serials
                .iter()
                .map(|s| Ok(tx.device(s)?))
                .collect::<Result<Vec<_>, Error>>()
        })?;
        let mut lines = zeroize::Zeroizing::new(Vec::new());
        let mut sent = Vec::new();
        let mut dropped = 0;
        let mut provision = Vec::new();
        for (owed, now) in owed.into_iter().zip(current) {
            let Some(now) = now.filter(|d| d.state == State::Active) else {
                dropped += 1;
                continue;
            };
            match (kind, owed) {
                (DeliveryKind::Provisioning, Line::Provision(_)) => {
                    sent.push(now.serial.clone());
                    provision.push(now);
                }
                (DeliveryKind::KeyUpdate, Line::Update(pair)) => {
                    let (old, new) = *pair;
                    sent.push(new.serial.clone());
                    LineMaker::new(self.module.get()?).key_update_line(&old, &new, &mut lines)?;
                }
                _ => {
                    return Err(StoreError::Corrupt(format!(
                        "delivery journal: a {} entry holds another kind of line",
                        kind.name()
                    ))
                    .into());
                }
            }
        }
        if !provision.is_empty() {
            self.material_lines(&provision, &mut lines)?;
        }
        Ok(Rebuilt {
            lines,
            sent,
            dropped,
        })
    }
}

/// A journal entry's lines, rebuilt.
struct Rebuilt {
    /// The lines (they can hold key material: zeroized when dropped).
    lines: zeroize::Zeroizing<Vec<u8>>,
    /// The devices whose lines they are.
    sent: Vec<DeviceSerial>,
    /// Devices owed a line that is not sent again (no longer active).
    dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(serial: &str, root: Option<u8>) -> DeviceRecord {
        DeviceRecord {
            serial: DeviceSerial::parse(serial).expect("serial"),
            she_uid: serial.ends_with('1').then_some([7; 15]),
            labels: if serial.ends_with('2') {
                Vec::new()
            } else {
                vec!["line=1".into(), "model=T7".into()]
            },
            generation: 1,
            revision: 4,
            state: State::Active,
            changed: Change {
                at: 1_700_000_000_000,
                actor: "station".into(),
                reason: "provisioned".into(),
            },
            wrapped_root: root.map(|b| WrappedKey(vec![b; 40])),
            created_at: 1_690_000_000_000,
        }
    }

    fn update() -> DeviceUpdate {
        DeviceUpdate {
            state: None,
            bump_revision: true,
            generation: Some(2),
            changed: Change {
                at: 1_800_000_000_000,
                actor: "scheduler".into(),
                reason: "rotation to generation 2".into(),
            },
        }
    }

    fn read(payload: &[u8]) -> Vec<Line> {
        let payload: Payload = serde_json::from_slice(payload).expect("decode");
        payload.lines().expect("lines")
    }

    #[test]
    fn a_batch_of_refreshes_reads_back_as_the_records_it_computed() {
        // The derived schemes (no roots) and the stored scheme (a new root per device).
        for stored in [false, true] {
            let old: Vec<DeviceRecord> = ["A0", "A1", "A2"]
                .iter()
                .map(|s| device(s, stored.then_some(1)))
                .collect();
            let new: Vec<DeviceRecord> = old
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let mut n = update().apply(d).expect("apply");
                    n.wrapped_root = stored.then(|| WrappedKey(vec![10 + i as u8; 40]));
                    n
                })
                .collect();
            let payload = refresh_payload(&old, &new, &update()).expect("encode");
            // The record before comes back without its last change (a line names only the
            // generation and revision it came from).
            let want: Vec<Line> = old
                .into_iter()
                .zip(new)
                .map(|(mut old, new)| {
                    old.changed = new.changed.clone();
                    Line::Update(Box::new((old, new)))
                })
                .collect();
            assert_eq!(read(&payload), want, "stored: {stored}");
        }
    }

    #[test]
    fn the_short_form_is_less_than_half_the_full_records() {
        let old: Vec<DeviceRecord> = (0..100)
            .map(|i| device(&format!("VIN{i:014}-ECU03"), None))
            .collect();
        let new: Vec<DeviceRecord> = old
            .iter()
            .map(|d| update().apply(d).expect("apply"))
            .collect();
        let short = refresh_payload(&old, &new, &update())
            .expect("encode")
            .len();
        let full = encode(Payload {
            owed: old
                .iter()
                .zip(&new)
                .map(|(old, new)| Owed::Update {
                    device: new.clone(),
                    from: (old.generation, old.revision),
                    from_root: old.wrapped_root.clone(),
                })
                .collect(),
            refresh: None,
        })
        .expect("encode")
        .len();
        assert!(short * 2 < full, "{short} bytes, the full records {full}");
    }

    #[test]
    fn an_entry_of_full_records_still_reads() {
        // As journaled before the short form: each device after, whole.
        let old = device("B1", Some(1));
        let mut new = update().apply(&old).expect("apply");
        new.wrapped_root = Some(WrappedKey(vec![9; 40]));
        let full = serde_json::json!({"owed": [{
            "t": "update",
            "device": serde_json::to_value(&new).expect("record"),
            "from": [old.generation, old.revision],
            "from_root": serde_json::to_value(&old.wrapped_root).expect("root"),
        }]});
        let lines = read(full.to_string().as_bytes());
        let mut before = old;
        before.changed = new.changed.clone();
        assert_eq!(lines, vec![Line::Update(Box::new((before, new)))]);
        // A refreshed device needs its batch's update.
        let orphan = serde_json::json!({"owed": [{"t": "r", "s": "B1", "st": "active", "c": 1, "f": [1, 0]}]});
        let payload: Payload = serde_json::from_str(&orphan.to_string()).expect("decode");
        assert!(payload.lines().is_err());
    }
}
