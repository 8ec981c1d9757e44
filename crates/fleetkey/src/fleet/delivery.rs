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

use super::lines::{LineMaker, push_update_line};
use super::{Fleet, bulk::Progress};
use crate::error::{Error, StoreError};
use crate::lifecycle::State;
use crate::model::{DeviceRecord, DeviceSerial, WrappedKey};
use crate::store::{Tx, read_tx, transact};

/// What kind of lines a journal entry owes. Bulk commands of one kind re-send each other's lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryKind {
    /// Key material for stations (JSON lines of serial, generation, revision, keys).
    Provisioning,
    /// SHE key updates (JSON lines of [`KeyUpdate`]).
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
        // In pieces of WRITE_PIECE: one write of a whole batch (megabytes) was measured several
        // times slower into a new file's page cache on the machines here than the same bytes in
        // pieces (docs/manager.md).
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
    /// scheme's root before, wrapped).
    Update {
        device: DeviceRecord,
        from: (u32, u32),
        from_root: Option<WrappedKey>,
    },
}

/// A journal entry's payload.
#[derive(Serialize, Deserialize)]
struct Payload {
    owed: Vec<Owed>,
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
    })
}

/// The journal payload of a batch of refreshes: each device after (`new`), and where it came
/// from (`old`: its generation and revision, and the stored scheme's root, wrapped).
pub(super) fn refresh_payload(
    old: &[DeviceRecord],
    new: &[DeviceRecord],
) -> Result<Vec<u8>, Error> {
    encode(Payload {
        owed: old
            .iter()
            .zip(new)
            .map(|(old, new)| Owed::Update {
                device: new.clone(),
                from: (old.generation, old.revision),
                from_root: old.wrapped_root.clone(),
            })
            .collect(),
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
        let serials: Vec<DeviceSerial> = payload
            .owed
            .iter()
            .map(|o| match o {
                Owed::Provision { serial } => serial.clone(),
                Owed::Update { device, .. } => device.serial.clone(),
            })
            .collect();
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
        for (owed, now) in payload.owed.into_iter().zip(current) {
            let Some(now) = now.filter(|d| d.state == State::Active) else {
                dropped += 1;
                continue;
            };
            match (kind, owed) {
                (DeliveryKind::Provisioning, Owed::Provision { .. }) => {
                    sent.push(now.serial.clone());
                    provision.push(now);
                }
                (
                    DeliveryKind::KeyUpdate,
                    Owed::Update {
                        device,
                        from,
                        from_root,
                    },
                ) => {
                    let mut old = device.clone();
                    (old.generation, old.revision) = from;
                    if from_root.is_some() {
                        old.wrapped_root = from_root;
                    }
                    sent.push(device.serial.clone());
                    let update = LineMaker::new(self.module.get()?).key_update(&old, device)?;
                    push_update_line(&mut lines, &update)?;
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
