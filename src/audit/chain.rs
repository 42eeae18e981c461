//! The hash chain behind the audit log.
//!
//! Each instance writes its own chain to `audit-<instance>-<YYYY-MM-DD>.jsonl` (a new file each
//! UTC day; the chain continues across files). A line is one JSON object:
//!
//! ```text
//! {"seq":7,"v":2,"time":"2026-11-20T23:58:00.123Z","instance":"gw1","prev":"<link digest of line 6>",<event fields>,"mac":"<hmac>"}
//! ```
//!
//! `prev` names the previous line's link digest (64 zeros for the first record) and `mac` is
//! an HMAC-SHA256 under the audit key; [`super::line`] defines both for the two format
//! versions (v2, written now: one SHA-256 pass over the line up to `,"mac"`, the MAC over that
//! digest; v1, read only: the MAC over the line, `prev` the SHA-256 of the whole previous line)
//! and argues why they are equally strong. So an edited record fails its MAC, a removed,
//! inserted or reordered one breaks the sequence or the link, and without the key nobody can
//! write a new valid chain. A chain may switch from v1 to v2 anywhere (an older writer's chain
//! resumed by this one); verification, resuming, retention and the head and anchor files read
//! both.
//!
//! Three small MACed files sit beside the chain: `audit-<instance>.head` pins the last record
//! written (a cut tail, or a deleted newest file, no longer matches it);
//! `audit-<instance>.anchor` is written by retention before it deletes old files and names the
//! last record deleted, so the oldest file kept may start mid-chain while a file removed from the
//! middle is still detected; `audit-<instance>.lock` is held (an OS file lock) by the one
//! process writing that chain. [`verify`] checks all of this and names the first bad record.
//!
//! A writer resumes from the head. Records written after the last head update (a crash between
//! writing a batch and moving the head) are adopted if they link and verify; a torn last line (a
//! crash in the middle of a write, never a complete record) is cut off.
//!
//! **How old the head may be.** The writer moves it at most every 5 s (with an fsync, so it
//! pins only durable records), after 1 MiB written, before each new day's file, and at start and
//! shutdown; not with every fsync (its move, a file created, synced and renamed, cost as much as
//! the fsync). Its two jobs hold at that age: resuming reads the newest file from 8 MiB before
//! its end, which the 1 MiB bound keeps the head's record inside, and adopts the verified records
//! after it; and a cut tail is never silent: with the writer live, records past the head are its
//! unflushed tail; with it gone, a chain that does not end in `audit_stopped` is an abrupt stop
//! (a gap, `verify` exits non-zero) and one ending before the head is tampering. A head a few
//! seconds old only moves the line between those two verdicts for the last seconds of records
//! of a writer that crashed; the head moves at start, so a cut back to the previous process's
//! `audit_stopped` is still tampering.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ring::hmac;
use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

use crate::crypto;

pub use super::line::GENESIS;
use super::line::{self, Link};

/// How much of the newest file a resuming writer reads to find records newer than the head.
const RECOVERY_WINDOW: u64 = 8 * 1024 * 1024;

/// The most bytes written since the last successful fsync that a writer keeps to write again
/// after a failed one (see [`ChainWriter::sync_records`]); records beyond are reported as a gap
/// if a sync fails before one succeeds.
const KEEP_UNSYNCED: usize = 8 * 1024 * 1024;

/// Why the chain could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// File system trouble.
    #[error("audit file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// An instance name may only hold `[A-Za-z0-9_-]`.
    #[error("instance name must be 1-64 characters of [A-Za-z0-9_-]")]
    BadInstance,
    /// The head file is unreadable or forged: the chain cannot be resumed safely.
    #[error("audit head {0} is corrupt or was not written with this key")]
    BadHead(String),
    /// Chain files exist but no head does: resuming would fork the chain.
    #[error("audit chain {0} has files but no head file; run `spgate audit verify` and move the files away to start a new chain")]
    MissingHead(String),
    /// Another process holds the instance's lock.
    #[error("audit instance {0} is being written by another process: give each process its own [audit] instance name")]
    InUse(String),
    /// A record did not serialize to a JSON object.
    #[error("an audit record must be a JSON object")]
    NotAnObject,
}

/// One chain file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainFile {
    /// The UTC day it holds.
    pub day: Date,
    /// Its full path.
    pub path: PathBuf,
    /// Its file name.
    pub name: String,
}

/// What one retention pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expired {
    /// Files deleted.
    pub files: usize,
    /// The last record deleted (its sequence number), if any.
    pub through_seq: Option<u64>,
}

/// The last record of a chain, as remembered in the head file; or, in the anchor file, the last
/// record retention deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Pin {
    /// Anchor only: files of days before this one are expired and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    day: Option<String>,
    seq: u64,
    hash: String,
    mac: String,
}

/// Appends records to one instance's chain.
pub struct ChainWriter {
    dir: PathBuf,
    instance: String,
    key: hmac::Key,
    seq: u64,
    prev: String,
    day: Option<Date>,
    last_at: OffsetDateTime,
    out: Option<File>,
    path: PathBuf,
    /// The last record time's second, formatted.
    time_text: TimeText,
    /// Records appended since the last write-through, as the bytes of one write.
    pending: Vec<u8>,
    /// The state after the last successful write-through: (seq, prev, file length).
    committed: (u64, String, u64),
    /// The last head written: (seq).
    head_seq: u64,
    rolled_back: u64,
    /// Records the last day rollovers wrote through to the previous day's file (see
    /// [`ChainWriter::take_rollover_written`]).
    rollover_written: u64,
    /// The last failed rollover failed at its fsync of the previous day's file.
    rollover_sync_failed: bool,
    recovered: u64,
    /// The time of the last record of a previous process that did not stop cleanly.
    abrupt: Option<String>,
    /// The bytes written through since the last successful fsync of the file (at most
    /// `keep_max`), and where they begin in it: written again after a failed fsync.
    kept: Vec<u8>,
    kept_from: u64,
    keep_max: usize,
    /// At the last successful fsync: the file's length, the last record's seq and time.
    synced: (u64, u64, OffsetDateTime),
    /// Records written since the last successful fsync whose bytes are no longer kept (over
    /// `keep_max`): first and last seq, the last one's time.
    unkept: Option<(u64, u64, OffsetDateTime)>,
    /// Of those, the last one written before a failed fsync (seq and time): the ones after it
    /// are made durable by the next successful fsync.
    suspect: Option<(u64, OffsetDateTime)>,
    /// An fsync failed and none succeeded since.
    sync_failed: bool,
    /// Records a successful fsync after a failed one could not vouch for (see
    /// [`ChainWriter::take_unrepaired`]).
    unrepaired: Option<Unrepaired>,
    _lock: File,
}

/// Records written before a failed fsync that could not be written again (their bytes were no
/// longer kept): they may be missing from the disk although the file looked whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unrepaired {
    /// How many.
    pub count: u64,
    /// The time of the last record known durable before them.
    pub from: OffsetDateTime,
    /// The time of the last of them.
    pub to: OffsetDateTime,
}

impl std::fmt::Debug for ChainWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainWriter")
            .field("dir", &self.dir)
            .field("instance", &self.instance)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// The first record that does not verify.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BadRecord {
    /// File name.
    pub file: String,
    /// 1-based line in that file (0: the problem is not one line, e.g. a missing tail).
    pub line: usize,
    /// The record's sequence number when it could be read.
    pub seq: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

/// One instance's verification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceReport {
    /// The instance.
    pub instance: String,
    /// Records verified.
    pub records: u64,
    /// Files read.
    pub files: usize,
    /// Sequence number of the first record verified (after the retention anchor).
    pub first_seq: Option<u64>,
    /// Sequence number of the last record verified.
    pub last_seq: Option<u64>,
    /// Time of the first record verified.
    pub first_time: Option<String>,
    /// Time of the last record verified.
    pub last_time: Option<String>,
    /// Days before this one were deleted by retention (from the anchor).
    pub expired_before: Option<String>,
    /// The first bad record, if any.
    pub first_bad: Option<BadRecord>,
    /// `gap` records: spans where records were lost (the writer could not write them, or a
    /// previous process stopped abruptly with records queued).
    pub gaps: Vec<Gap>,
    /// Verified records after the head file's record (a live writer moves its head lazily).
    pub beyond_head: u64,
    /// Bytes of an incomplete last line (a write in progress, or cut by a crash): not a record
    /// yet, not tampering.
    pub unflushed_tail: u64,
    /// Whether a live process holds the instance's lock (its writer is running): records past
    /// the head and an unfinished last line are then its unflushed tail.
    pub writer_live: bool,
    /// No live writer, and the chain does not end with its writer's `audit_stopped` record: the
    /// writer stopped abruptly (or the records after its last one were cut). What it had not
    /// written, or what was cut, is unknown: a gap that the next start would report too.
    pub abrupt_stop: Option<AbruptStop>,
}

/// How a chain whose writer is gone ends without its `audit_stopped` record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AbruptStop {
    /// The last record (sequence number) that verified.
    pub after_seq: u64,
    /// Its time.
    pub after_time: String,
    /// Verified records after the head file's record.
    pub beyond_head: u64,
    /// Bytes of an unfinished last line.
    pub unflushed_tail: u64,
}

/// A `gap` record as `verify` reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gap {
    /// Its sequence number.
    pub seq: u64,
    /// Records lost, when known.
    pub count: Option<u64>,
    /// The span: first and last lost record (or the last record before an abrupt stop, and
    /// the restart).
    pub from: Option<String>,
    /// See `from`.
    pub to: Option<String>,
    /// Why.
    pub reason: Option<String>,
}

// === helpers ===

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ChainError + '_ {
    move |source| ChainError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn mac_hex(key: &hmac::Key, data: &[u8]) -> String {
    crypto::hex(hmac::sign(key, data).as_ref())
}

fn head_path(dir: &Path, instance: &str) -> PathBuf {
    dir.join(format!("audit-{instance}.head"))
}

fn anchor_path(dir: &Path, instance: &str) -> PathBuf {
    dir.join(format!("audit-{instance}.anchor"))
}

fn lock_path(dir: &Path, instance: &str) -> PathBuf {
    dir.join(format!("audit-{instance}.lock"))
}

/// Whether a live process holds an instance's lock (its writer is running). Takes the lock
/// shared for a moment when it is free (a writer opening the chain meanwhile retries).
fn writer_live(dir: &Path, instance: &str) -> Result<bool, ChainError> {
    let path = lock_path(dir, instance);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io(&path)(e)),
    };
    match file.try_lock_shared() {
        Ok(()) => {
            file.unlock().map_err(io(&path))?;
            Ok(false)
        }
        Err(fs::TryLockError::WouldBlock) => Ok(true),
        Err(fs::TryLockError::Error(e)) => Err(io(&path)(e)),
    }
}

/// How long a writer opening a chain retries a lock held for a moment by `verify`.
const LOCK_RETRIES: u32 = 20;

fn file_name(instance: &str, day: Date) -> String {
    format!("audit-{instance}-{day}.jsonl")
}

fn pin_mac(key: &hmac::Key, what: &str, instance: &str, pin: &Pin) -> String {
    let day = pin.day.as_deref().unwrap_or("");
    mac_hex(
        key,
        format!("{what}\0{instance}\0{day}\0{}\0{}", pin.seq, pin.hash).as_bytes(),
    )
}

/// Opens a file for writing with owner-only permissions (0600) when it is created.
pub fn private_file() -> OpenOptions {
    let mut o = OpenOptions::new();
    #[cfg(unix)]
    o.mode(0o600);
    o
}

/// Creates a directory (and its parents) owner-only (0700) when it is created, and makes an
/// existing one owner-only too (a directory created by an earlier version).
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    b.mode(0o700);
    b.create(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Makes an opened file owner-only (0600) whatever it was created with (files created by an
/// earlier version).
fn make_private(file: &File) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

fn write_pin(
    key: &hmac::Key,
    path: &Path,
    what: &str,
    instance: &str,
    mut pin: Pin,
    sync: bool,
) -> Result<(), ChainError> {
    pin.mac = pin_mac(key, what, instance, &pin);
    let tmp = path.with_extension(format!("{what}.tmp"));
    let mut f = private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(&serde_json::to_vec(&pin).unwrap_or_default())
        .map_err(io(&tmp))?;
    if sync {
        f.sync_data().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io(path))
}

/// Reads a head or anchor file: `Ok(None)` when absent, `Err(())` when corrupt or forged.
fn read_pin(
    key: &hmac::Key,
    path: &Path,
    what: &str,
    instance: &str,
) -> Result<Option<Pin>, Result<(), ChainError>> {
    match fs::read_to_string(path) {
        Ok(text) => match serde_json::from_str::<Pin>(&text) {
            Ok(pin) if pin.mac == pin_mac(key, what, instance, &pin) => Ok(Some(pin)),
            _ => Err(Ok(())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Err(io(path)(e))),
    }
}

fn check_instance(instance: &str) -> Result<(), ChainError> {
    valid_instance(instance)
        .then_some(())
        .ok_or(ChainError::BadInstance)
}

/// Whether `instance` is a valid instance name: 1-64 characters of `[A-Za-z0-9_-]`.
pub fn valid_instance(instance: &str) -> bool {
    !instance.is_empty()
        && instance.len() <= 64
        && instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Splits `audit-<instance>-<YYYY-MM-DD>.jsonl` into instance and day.
fn parse_file_name(name: &str) -> Option<(String, Date)> {
    let rest = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    if rest.len() < 12 || rest.as_bytes()[rest.len() - 11] != b'-' {
        return None;
    }
    let (instance, day) = (&rest[..rest.len() - 11], &rest[rest.len() - 10..]);
    let day = Date::parse(
        day,
        &time::macros::format_description!("[year]-[month]-[day]"),
    )
    .ok()?;
    valid_instance(instance).then(|| (instance.to_string(), day))
}

/// The chain files in `dir`, by instance, oldest first. Instances that only have a head or an
/// anchor file are listed with no files.
pub fn list_chains(dir: &Path) -> Result<BTreeMap<String, Vec<ChainFile>>, ChainError> {
    let mut out: BTreeMap<String, Vec<ChainFile>> = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((instance, day)) = parse_file_name(&name) {
            out.entry(instance).or_default().push(ChainFile {
                day,
                path: entry.path(),
                name,
            });
        } else if let Some(instance) = name
            .strip_prefix("audit-")
            .and_then(|n| {
                n.strip_suffix(".head")
                    .or_else(|| n.strip_suffix(".anchor"))
            })
            .filter(|i| valid_instance(i))
        {
            out.entry(instance.to_string()).or_default();
        }
    }
    for files in out.values_mut() {
        files.sort_by_key(|f| f.day);
    }
    Ok(out)
}

/// A record's time text, `2026-11-20T23:58:00.123Z`: formatted once per second (records of a
/// batch share it), the milliseconds written per record.
#[derive(Debug, Default)]
struct TimeText {
    /// The Unix second formatted, and its text up to the `.` (none yet: empty).
    second: i64,
    text: String,
}

impl TimeText {
    fn push(&mut self, out: &mut Vec<u8>, at: OffsetDateTime) {
        let at = at.to_offset(time::UtcOffset::UTC);
        let second = at.unix_timestamp();
        if self.second != second || self.text.is_empty() {
            self.second = second;
            self.text = at
                .format(&time::macros::format_description!(
                    "[year]-[month]-[day]T[hour]:[minute]:[second]."
                ))
                .unwrap_or_default();
        }
        out.extend_from_slice(self.text.as_bytes());
        let ms = at.millisecond();
        out.extend_from_slice(&[
            b'0' + (ms / 100) as u8,
            b'0' + (ms / 10 % 10) as u8,
            b'0' + (ms % 10) as u8,
            b'Z',
        ]);
    }
}

// === impl ChainWriter ===

impl ChainWriter {
    /// Opens (or resumes, from its head file) an instance's chain in `dir`, taking the
    /// instance's lock: a second writer of the same instance gets [`ChainError::InUse`].
    pub fn open(dir: &Path, instance: &str, key_bytes: &[u8]) -> Result<ChainWriter, ChainError> {
        ChainWriter::open_with(dir, instance, key_bytes, false)
    }

    /// Like [`ChainWriter::open`], but waits for the instance's lock while another process
    /// holds it.
    pub fn open_waiting(
        dir: &Path,
        instance: &str,
        key_bytes: &[u8],
    ) -> Result<ChainWriter, ChainError> {
        ChainWriter::open_with(dir, instance, key_bytes, true)
    }

    fn open_with(
        dir: &Path,
        instance: &str,
        key_bytes: &[u8],
        wait: bool,
    ) -> Result<ChainWriter, ChainError> {
        check_instance(instance)?;
        private_dir(dir).map_err(io(dir))?;
        let lock_file = lock_path(dir, instance);
        let lock = private_file()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_file)
            .map_err(io(&lock_file))?;
        make_private(&lock).map_err(io(&lock_file))?;
        if wait {
            lock.lock().map_err(io(&lock_file))?;
        }
        let mut tries = 0;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                // `verify` holds it shared for a moment; a writer holds it for good.
                Err(fs::TryLockError::WouldBlock) if tries < LOCK_RETRIES => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(ChainError::InUse(instance.to_string()))
                }
                Err(fs::TryLockError::Error(e)) => return Err(io(&lock_file)(e)),
            }
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, key_bytes);
        let head_file = head_path(dir, instance);
        let files = list_chains(dir)?.remove(instance).unwrap_or_default();
        let (seq, prev) = match read_pin(&key, &head_file, "head", instance) {
            Ok(Some(head)) => (head.seq, head.hash),
            Ok(None) if files.is_empty() => (0, GENESIS.to_string()),
            Ok(None) => return Err(ChainError::MissingHead(instance.to_string())),
            Err(Ok(())) => return Err(ChainError::BadHead(head_file.display().to_string())),
            Err(Err(e)) => return Err(e),
        };
        let mut w = ChainWriter {
            dir: dir.to_path_buf(),
            instance: instance.to_string(),
            key,
            seq,
            prev,
            day: files.last().map(|f| f.day),
            last_at: OffsetDateTime::UNIX_EPOCH,
            out: None,
            path: PathBuf::new(),
            time_text: TimeText::default(),
            pending: Vec::with_capacity(64 * 1024),
            committed: (seq, String::new(), 0),
            head_seq: seq,
            rolled_back: 0,
            rollover_written: 0,
            rollover_sync_failed: false,
            recovered: 0,
            abrupt: None,
            kept: Vec::new(),
            kept_from: 0,
            keep_max: KEEP_UNSYNCED,
            synced: (0, seq, OffsetDateTime::UNIX_EPOCH),
            unkept: None,
            suspect: None,
            sync_failed: false,
            unrepaired: None,
            _lock: lock,
        };
        #[cfg(test)]
        if let Some(max) = fault::keep_max(dir) {
            w.keep_max = max;
        }
        if let Some(newest) = files.last() {
            w.recover(&newest.path)?;
        }
        w.committed = (w.seq, w.prev.clone(), 0);
        Ok(w)
    }

    /// Adopts valid records written after the head, and cuts a torn last line.
    fn recover(&mut self, path: &Path) -> Result<(), ChainError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io(path))?;
        let len = file.metadata().map_err(io(path))?.len();
        let start = len.saturating_sub(RECOVERY_WINDOW);
        file.seek(SeekFrom::Start(start)).map_err(io(path))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail).map_err(io(path))?;
        let complete = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if complete < tail.len() && (start == 0 || complete > 0) {
            tracing::warn!(
                instance = %self.instance,
                bytes = tail.len() - complete,
                "Cutting a torn last line from the audit chain (a write interrupted by a crash)."
            );
            file.set_len(start + complete as u64).map_err(io(path))?;
        }
        let mut lines: Vec<&[u8]> = tail[..complete]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        if start > 0 && !lines.is_empty() {
            lines.remove(0); // Possibly a partial line at the window's start.
        }
        // Records after the head start either at the head's own line, or (the head being in an
        // older file, or the chain new) at the file's first line.
        let links_from_head = |line: &[u8]| {
            serde_json::from_slice::<Link<'_>>(line)
                .is_ok_and(|l| l.seq == self.seq + 1 && l.prev == self.prev)
        };
        let begin = if start == 0 && lines.first().is_some_and(|l| links_from_head(l)) {
            Some(0)
        } else {
            lines
                .iter()
                .position(|l| {
                    line::link_of(l).is_some_and(|(s, h)| s == self.seq && h.as_str() == self.prev)
                })
                .map(|i| i + 1)
        };
        for l in lines.iter().skip(begin.unwrap_or(usize::MAX)) {
            let link: Link<'_> = match serde_json::from_slice(l) {
                Ok(l) => l,
                Err(_) => break,
            };
            if link.seq != self.seq + 1 || link.prev != self.prev || link.instance != self.instance
            {
                break;
            }
            let Some((true, next)) = link.format().and_then(|f| line::check(&self.key, l, f))
            else {
                break;
            };
            self.seq = link.seq;
            self.prev.clear();
            self.prev.push_str(next.as_str());
            self.recovered += 1;
        }
        if let Some(last) = lines.last() {
            #[derive(Deserialize)]
            struct Last<'a> {
                #[serde(borrow)]
                kind: std::borrow::Cow<'a, str>,
                #[serde(borrow)]
                time: std::borrow::Cow<'a, str>,
            }
            if let Ok(l) = serde_json::from_slice::<Last<'_>>(last) {
                if l.kind != "audit_stopped" {
                    self.abrupt = Some(l.time.into_owned());
                }
            }
        }
        if self.recovered > 0 {
            tracing::warn!(
                instance = %self.instance,
                records = self.recovered,
                "Adopted audit records written after the last head update (the previous process stopped abruptly)."
            );
            self.write_head(true)?;
        }
        Ok(())
    }

    /// The instance this writer writes.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The sequence number of the last record appended.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// How many records written after the head were adopted when the chain was resumed.
    pub fn recovered(&self) -> u64 {
        self.recovered
    }

    /// When the chain was resumed after a process that did not stop cleanly (its last record
    /// is not `audit_stopped`): the time of that last record. Records it had queued but not
    /// written are unknown: the writer reports the span as a gap.
    pub fn abrupt_stop(&self) -> Option<&str> {
        self.abrupt.as_deref()
    }

    /// Records appended but not yet written through.
    pub fn unwritten(&self) -> u64 {
        self.seq - self.committed.0
    }

    /// Bytes of the records appended but not yet written through.
    pub fn unwritten_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Appends one record (anything that serializes to a JSON object, without the reserved
    /// fields `seq`, `time`, `instance`, `prev` and `mac`) stamped with `at`; returns its
    /// sequence number. Time never goes backwards within a writer (an earlier `at` is raised
    /// to the last one), so files and records stay in order. Buffered: call
    /// [`ChainWriter::flush`] or [`ChainWriter::sync`] to write it through and move the head.
    pub fn append<T: Serialize + ?Sized>(
        &mut self,
        at: OffsetDateTime,
        event: &T,
    ) -> Result<u64, ChainError> {
        self.append_with(at, |out| serde_json::to_writer(out, event).is_ok())
    }

    /// Like [`ChainWriter::append`] for an audit [`Record`](super::Record), encoded without
    /// serde (the writer thread's path; the same bytes).
    pub fn append_record(
        &mut self,
        at: OffsetDateTime,
        record: &super::Record,
    ) -> Result<u64, ChainError> {
        self.append_with(at, |out| {
            super::encode::record(out, record);
            true
        })
    }

    /// Appends the record that `encode` writes as a JSON object at the end of the buffer
    /// given (false: it could not).
    fn append_with(
        &mut self,
        at: OffsetDateTime,
        encode: impl FnOnce(&mut Vec<u8>) -> bool,
    ) -> Result<u64, ChainError> {
        let at = at.max(self.last_at);
        let day = at.to_offset(time::UtcOffset::UTC).date();
        let day = self.day.map_or(day, |d| d.max(day));
        if self.out.is_none() || Some(day) != self.day {
            // What a failure here rolls back (none when the sync fails), and what it wrote.
            self.rolled_back = 0;
            self.rollover_sync_failed = false;
            self.rollover_written += self.write_through()?;
            // The head moves onto the old day's last record (made durable first) before the new
            // day's file is opened: recovery reads only the newest file, so records past the
            // head left in the old one by a crash would otherwise be skipped and the chain
            // forked. Once a day; a no-op when the head is already there.
            if let Err(e) = self.sync_records() {
                self.rollover_sync_failed = true;
                return Err(e);
            }
            self.move_head(true)?;
            let path = self.dir.join(file_name(&self.instance, day));
            let file = private_file()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io(&path))?;
            make_private(&file).map_err(io(&path))?;
            let len = file.metadata().map_err(io(&path))?.len();
            self.out = Some(file);
            self.day = Some(day);
            if path != self.path {
                // The previous file was synced just now: nothing of this one is unsynced yet.
                self.kept.clear();
                self.kept_from = len;
                self.synced = (len, self.seq, self.last_at);
            } else if len != self.kept_from + self.kept.len() as u64 {
                // Reopened after a roll-back that could not cut the file: the kept bytes no
                // longer end where the next write begins, so they cannot be written again in
                // place. Their records are remembered for a gap instead (if a sync fails).
                self.let_go_kept(len);
            }
            self.path = path;
            self.committed = (self.seq, self.prev.clone(), len);
        }
        let seq = self.seq + 1;
        // The line is built in place at the end of the batch's bytes (no copy, no allocation),
        // in format v2 (see `super::line`).
        let line = &mut self.pending;
        let begin = line.len();
        line.extend_from_slice(b"{\"seq\":");
        line::push_u64(line, seq);
        line.extend_from_slice(line::V2_FIELD);
        line.extend_from_slice(b",\"time\":\"");
        self.time_text.push(line, at);
        line.extend_from_slice(b"\",\"instance\":\"");
        line.extend_from_slice(self.instance.as_bytes());
        line.extend_from_slice(b"\",\"prev\":\"");
        line.extend_from_slice(self.prev.as_bytes());
        line.push(b'"');
        // The event's fields follow, serialized in place: its `{` becomes the `,` after
        // `prev`, its `}` goes (the MAC closes the line).
        let object = line.len();
        if !encode(line) || line.get(object) != Some(&b'{') || line.last() != Some(&b'}') {
            line.truncate(begin);
            return Err(ChainError::NotAnObject);
        }
        line.pop();
        if line.len() == object + 1 {
            line.pop();
        } else {
            line[object] = b',';
        }
        let link = line::seal_v2(&self.key, line, begin);
        self.prev.clear();
        self.prev.push_str(link.as_str());
        self.last_at = at;
        self.seq = seq;
        Ok(seq)
    }

    /// Writes buffered records through to the OS and records the new head (atomically, by
    /// rename). Not durable against a power loss: see [`ChainWriter::sync`].
    pub fn flush(&mut self) -> Result<(), ChainError> {
        self.flush_inner(false)
    }

    /// Like [`ChainWriter::flush`], and makes the records and the head durable (fsync) before
    /// the head moves.
    pub fn sync(&mut self) -> Result<(), ChainError> {
        self.flush_inner(true)
    }

    fn flush_inner(&mut self, sync: bool) -> Result<(), ChainError> {
        self.write_through()?;
        if sync {
            self.sync_records()?;
        }
        if self.seq > 0 {
            self.write_head(sync)?;
            self.head_seq = self.seq;
        }
        Ok(())
    }

    /// Hands every record appended since the last call to the kernel in one `write(2)`, without
    /// moving the head (the hot path: a reader accepts verified records past the head). On
    /// failure the records are rolled back: the file is cut back to its last good length and
    /// the chain continues from the last record written, so the caller can report the lost
    /// records as a gap. Returns how many records were written.
    pub fn write_through(&mut self) -> Result<u64, ChainError> {
        if self.pending.is_empty() {
            return Ok(0);
        }
        let written = match self.out.as_mut() {
            Some(out) => out.write_all(&self.pending),
            None => Err(std::io::Error::other("no open chain file")),
        };
        match written {
            Ok(()) => {
                let n = self.seq - self.committed.0;
                self.committed = (
                    self.seq,
                    self.prev.clone(),
                    self.committed.2 + self.pending.len() as u64,
                );
                self.keep_written();
                Ok(n)
            }
            Err(e) => {
                self.rolled_back = self.roll_back();
                Err(io(&self.path)(e))
            }
        }
    }

    /// How many records the last failed write-through rolled back.
    pub fn roll_back_count(&self) -> u64 {
        self.rolled_back
    }

    /// Forgets the records appended since the last write-through (they could not be written).
    /// Returns how many.
    pub fn roll_back(&mut self) -> u64 {
        let n = self.seq - self.committed.0;
        self.pending.clear();
        if n > 0 {
            self.seq = self.committed.0;
            if !self.committed.1.is_empty() {
                self.prev = self.committed.1.clone();
            }
        }
        // A partial write leaves a torn line: cut it, or at least reopen before writing again
        // (a reader treats a torn last line as an unflushed tail, and resuming cuts it).
        let cut = self
            .out
            .as_ref()
            .is_some_and(|f| f.set_len(self.committed.2).is_ok());
        if !cut {
            self.out = None;
        }
        n
    }

    /// Moves the head to the last record written through (not durable unless `sync`).
    pub fn move_head(&mut self, sync: bool) -> Result<(), ChainError> {
        if self.committed.0 == self.head_seq || self.committed.0 == 0 {
            return Ok(());
        }
        let pin = Pin {
            day: None,
            seq: self.committed.0,
            hash: self.committed.1.clone(),
            mac: String::new(),
        };
        let path = head_path(&self.dir, &self.instance);
        write_pin(&self.key, &path, "head", &self.instance, pin, sync)?;
        self.head_seq = self.committed.0;
        Ok(())
    }

    /// Makes what was written through durable (fsync) and moves the head.
    pub fn sync_written(&mut self) -> Result<(), ChainError> {
        self.sync_records()?;
        self.move_head(true)
    }

    /// The batch just written joins the bytes kept since the last successful fsync; past
    /// `keep_max` they are let go (only their records are remembered, for a gap).
    fn keep_written(&mut self) {
        self.kept.extend_from_slice(&self.pending);
        self.pending.clear();
        if self.kept.len() > self.keep_max {
            self.let_go_kept(self.kept_from + self.kept.len() as u64);
        }
    }

    /// Stops keeping the bytes written since the last good fsync (their records are
    /// remembered for a gap); what is written next begins at `next`.
    fn let_go_kept(&mut self, next: u64) {
        if self.committed.0 > self.synced.1 {
            let first = self.unkept.map_or(self.synced.1 + 1, |u| u.0);
            self.unkept = Some((first, self.committed.0, self.last_at));
        }
        self.kept_from = next;
        self.kept.clear();
    }

    /// Records written through since the last successful fsync (not known to be durable).
    pub fn unsynced_records(&self) -> u64 {
        self.committed.0.saturating_sub(self.synced.1)
    }

    /// Whether a record stamped `at` begins a new day's file (or reopens the file).
    pub fn rolls_over(&self, at: OffsetDateTime) -> bool {
        let day = at.max(self.last_at).to_offset(time::UtcOffset::UTC).date();
        self.out.is_none() || self.day.is_some_and(|d| day > d)
    }

    /// How many records day rollovers wrote through to the previous day's file since the last
    /// call (they are written, whether or not the rollover then failed).
    pub fn take_rollover_written(&mut self) -> u64 {
        std::mem::take(&mut self.rollover_written)
    }

    /// Whether the last failed append failed at the rollover's fsync of the previous day's
    /// file (a sync failure: the records written are in the chain, not known durable).
    pub fn rollover_sync_failed(&self) -> bool {
        self.rollover_sync_failed
    }

    /// Makes what was written through durable (fsync), without moving the head.
    ///
    /// **After a failed fsync** the bytes written since the last successful one are suspect:
    /// Linux may drop the dirty pages of a failed writeback and report the error once, so a
    /// later fsync succeeds without them while the page cache still shows them. They are
    /// therefore written again, in place (the same bytes: a reader or a crash meanwhile sees
    /// the file unchanged), before the next fsync is trusted. Records whose bytes were no
    /// longer kept (more than [`KEEP_UNSYNCED`] since the last good fsync) cannot be; the first
    /// successful fsync reports them through [`ChainWriter::take_unrepaired`] (a gap record).
    pub fn sync_records(&mut self) -> Result<(), ChainError> {
        if self.out.is_none() {
            if !self.sync_failed && self.committed.2 == self.synced.0 {
                return Ok(());
            }
            // Closed by a roll-back that could not cut it, with bytes written since the last
            // good fsync (or after a failed one): reopened to sync them, never taken as synced.
            let reopened = OpenOptions::new().append(true).open(&self.path);
            let file = match reopened.and_then(|f| f.metadata().map(|m| (f, m.len()))) {
                Ok((file, len)) => {
                    if len != self.kept_from + self.kept.len() as u64 {
                        self.let_go_kept(len);
                    }
                    // Writes go on after whatever the failed write left (as at a reopen).
                    self.committed.2 = len;
                    file
                }
                Err(e) => {
                    self.sync_failed = true;
                    return Err(io(&self.path)(e));
                }
            };
            self.out = Some(file);
        }
        if self.sync_failed {
            self.rewrite_kept()?;
        }
        if let Err(e) = self.sync_file() {
            self.sync_failed = true;
            // Only what was written before a failed fsync is suspect: pages written after it
            // are flushed by the next one.
            if let Some((_, last, to)) = self.unkept {
                self.suspect = Some((last, to));
            }
            return Err(io(&self.path)(e));
        }
        let unkept = self.unkept.take();
        let suspect = self.suspect.take();
        if std::mem::take(&mut self.sync_failed) {
            if let (Some((first, _, _)), Some((last, to))) = (unkept, suspect) {
                let u = self.unrepaired.get_or_insert(Unrepaired {
                    count: 0,
                    from: self.synced.2,
                    to,
                });
                u.count += last + 1 - first;
                u.to = to;
            }
        }
        self.kept.clear();
        self.kept_from = self.committed.2;
        self.synced = (self.committed.2, self.committed.0, self.last_at);
        Ok(())
    }

    /// Records a successful fsync after a failed one could not vouch for (reported once).
    pub fn take_unrepaired(&mut self) -> Option<Unrepaired> {
        self.unrepaired.take()
    }

    /// Writes the kept bytes again where they are (through a second handle: the chain file is
    /// open for appending, where a positioned write would append).
    #[cfg(unix)]
    fn rewrite_kept(&self) -> Result<(), ChainError> {
        use std::os::unix::fs::FileExt;
        if self.kept.is_empty() {
            return Ok(());
        }
        let file = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(io(&self.path))?;
        file.write_all_at(&self.kept, self.kept_from)
            .map_err(io(&self.path))
    }

    /// Without positioned writes the kept bytes cannot be written again: their records are
    /// reported as unrepaired.
    #[cfg(not(unix))]
    fn rewrite_kept(&mut self) -> Result<(), ChainError> {
        if !self.kept.is_empty() {
            let first = self.unkept.map_or(self.synced.1 + 1, |u| u.0);
            self.unkept = Some((first, self.committed.0, self.last_at));
        }
        Ok(())
    }

    /// fsyncs the chain file (tests inject failures here).
    fn sync_file(&self) -> std::io::Result<()> {
        #[cfg(test)]
        if fault::sync_fails(&self.dir) {
            fault::lose_unsynced(&self.path, self.synced.0)?;
            return Err(std::io::Error::other("injected fsync failure"));
        }
        match &self.out {
            Some(out) => out.sync_data(),
            None => Ok(()),
        }
    }

    fn write_head(&self, sync: bool) -> Result<(), ChainError> {
        let pin = Pin {
            day: None,
            seq: self.seq,
            hash: self.prev.clone(),
            mac: String::new(),
        };
        let path = head_path(&self.dir, &self.instance);
        write_pin(&self.key, &path, "head", &self.instance, pin, sync)
    }

    /// Retention: deletes this instance's files of days before `today - retain_days` (never
    /// the file being written). First it records, in the MACed anchor file, the last record of
    /// the newest file deleted, so that [`verify`] accepts a chain whose oldest kept file starts
    /// mid-chain.
    pub fn expire(&mut self, today: Date, retain_days: u32) -> Result<Expired, ChainError> {
        let cutoff = today - time::Duration::days(i64::from(retain_days.max(1)));
        let files = list_chains(&self.dir)?
            .remove(&self.instance)
            .unwrap_or_default();
        let old: Vec<&ChainFile> = files
            .iter()
            .filter(|f| f.day < cutoff && Some(f.day) != self.day)
            .collect();
        let Some(newest_old) = old.last() else {
            return Ok(Expired::default());
        };
        let anchor_file = anchor_path(&self.dir, &self.instance);
        let previous = read_pin(&self.key, &anchor_file, "anchor", &self.instance)
            .ok()
            .flatten();
        let (seq, hash) = last_record(&newest_old.path)?;
        // The anchor never moves back (an old file left behind by a crashed pass is below it).
        if previous.as_ref().is_none_or(|p| p.seq < seq) {
            let first_kept = files
                .iter()
                .find(|f| f.day > newest_old.day)
                .map_or(cutoff, |f| f.day);
            let pin = Pin {
                day: Some(first_kept.to_string()),
                seq,
                hash,
                mac: String::new(),
            };
            write_pin(&self.key, &anchor_file, "anchor", &self.instance, pin, true)?;
        }
        for f in &old {
            fs::remove_file(&f.path).map_err(io(&f.path))?;
        }
        Ok(Expired {
            files: old.len(),
            through_seq: Some(seq),
        })
    }
}

/// The sequence number and hash of a file's last complete record.
fn last_record(path: &Path) -> Result<(u64, String), ChainError> {
    let mut file = File::open(path).map_err(io(path))?;
    let len = file.metadata().map_err(io(path))?.len();
    let mut window = 64 * 1024u64;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start)).map_err(io(path))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail).map_err(io(path))?;
        let mut lines: Vec<&[u8]> = tail.split(|b| *b == b'\n').collect();
        if start > 0 {
            lines.remove(0);
        }
        if let Some(last) = lines
            .iter()
            .rev()
            .find(|l| serde_json::from_slice::<Link<'_>>(l).is_ok())
        {
            // A record of a format this code does not know cannot be pinned.
            return line::link_of(last)
                .map(|(seq, link)| (seq, link.as_str().to_string()))
                .ok_or_else(|| {
                    io(path)(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the last audit record is of an unknown format version",
                    ))
                });
        }
        if start == 0 {
            return Err(io(path)(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no complete audit record to anchor retention on",
            )));
        }
        window *= 4;
    }
}

// === verify ===

/// Verifies every instance's chain in `dir`.
pub fn verify(dir: &Path, key_bytes: &[u8]) -> Result<Vec<InstanceReport>, ChainError> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key_bytes);
    list_chains(dir)?
        .into_iter()
        .map(|(instance, files)| verify_instance(dir, &key, &instance, &files))
        .collect()
}

fn verify_instance(
    dir: &Path,
    key: &hmac::Key,
    instance: &str,
    files: &[ChainFile],
) -> Result<InstanceReport, ChainError> {
    let mut report = InstanceReport {
        instance: instance.to_string(),
        records: 0,
        files: 0,
        first_seq: None,
        last_seq: None,
        first_time: None,
        last_time: None,
        expired_before: None,
        first_bad: None,
        gaps: Vec::new(),
        beyond_head: 0,
        unflushed_tail: 0,
        writer_live: false,
        abrupt_stop: None,
    };
    let bad = |mut report: InstanceReport, file: &str, line, seq, reason: String| {
        report.first_bad = Some(BadRecord {
            file: file.to_string(),
            line,
            seq,
            reason,
        });
        Ok(report)
    };
    let first_name = files.first().map_or("-", |f| f.name.as_str());
    let (mut seq, mut prev, from_day) =
        match read_pin(key, &anchor_path(dir, instance), "anchor", instance) {
            Ok(None) => (0, GENESIS.to_string(), None),
            Ok(Some(a)) => {
                let day = a.day.as_deref().and_then(|d| {
                    Date::parse(
                        d,
                        &time::macros::format_description!("[year]-[month]-[day]"),
                    )
                    .ok()
                });
                report.expired_before = a.day.clone();
                (a.seq, a.hash, day)
            }
            Err(Ok(())) => {
                return bad(
                    report,
                    first_name,
                    0,
                    None,
                    "the retention anchor file is corrupt or forged".into(),
                )
            }
            Err(Err(e)) => return Err(e),
        };
    let head = read_pin(key, &head_path(dir, instance), "head", instance);
    let head_pin = match &head {
        Ok(Some(h)) => Some((h.seq, h.hash.clone())),
        _ => None,
    };
    let mut head_seen = false;
    // The last record verified (buffers swapped, not copied).
    let mut last_line = Vec::new();
    let newest = files.last().map(|f| f.name.clone());
    let mut last_name = first_name;
    for file in files {
        if from_day.is_some_and(|d| file.day < d) {
            continue; // Expired by retention; deletion was interrupted.
        }
        report.files += 1;
        last_name = &file.name;
        let mut reader = BufReader::new(File::open(&file.path).map_err(io(&file.path))?);
        let mut n = 0;
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .map_err(io(&file.path))?;
            if read == 0 {
                break;
            }
            n += 1;
            if line.last() != Some(&b'\n') {
                // The newest file's incomplete last line: a write in progress or cut by a
                // crash (a resuming writer cuts it). Anywhere else it is damage.
                if Some(&file.name) == newest.as_ref() {
                    report.unflushed_tail = line.len() as u64;
                    break;
                }
            } else {
                line.pop();
            }
            let Ok(link) = serde_json::from_slice::<Link<'_>>(&line) else {
                return bad(
                    report,
                    &file.name,
                    n,
                    None,
                    "not an audit record (a torn or garbled line)".into(),
                );
            };
            let at = Some(link.seq);
            let Some(format) = link.format() else {
                return bad(
                    report,
                    &file.name,
                    n,
                    at,
                    format!(
                        "written in an unknown chain format (v {}): verify it with the spgate that wrote it",
                        link.v.unwrap_or_default()
                    ),
                );
            };
            if link.seq != seq + 1 {
                return bad(
                    report,
                    &file.name,
                    n,
                    at,
                    format!(
                        "sequence {}, expected {}: a record was removed, inserted or moved",
                        link.seq,
                        seq + 1
                    ),
                );
            }
            if link.prev != prev {
                return bad(
                    report,
                    &file.name,
                    n,
                    at,
                    "does not link to the record before it (prev is not its digest)".into(),
                );
            }
            if link.instance != instance {
                return bad(
                    report,
                    &file.name,
                    n,
                    at,
                    "belongs to another instance's chain".into(),
                );
            }
            let Some((true, link_hex)) = line::check(key, &line, format) else {
                return bad(
                    report,
                    &file.name,
                    n,
                    at,
                    "MAC mismatch: the record was edited (or another key wrote it)".into(),
                );
            };
            seq = link.seq;
            prev.clear();
            prev.push_str(link_hex.as_str());
            if head_seen {
                report.beyond_head += 1;
            }
            if let Some((hs, hh)) = &head_pin {
                if *hs == seq && *hh == prev {
                    head_seen = true;
                }
            }
            if let Some(gap) = gap_of(&line, seq) {
                report.gaps.push(gap);
            }
            report.records += 1;
            report.first_seq.get_or_insert(link.seq);
            report.last_seq = Some(link.seq);
            if report.first_time.is_none() {
                report.first_time = Some(link.time.to_string());
            }
            report.last_time = Some(link.time.into_owned());
            std::mem::swap(&mut line, &mut last_line);
        }
    }
    // Read after the files: a writer that started meanwhile reports the abrupt stop itself.
    report.writer_live = writer_live(dir, instance)?;
    if !report.writer_live
        && (report.unflushed_tail > 0
            || report.last_seq.is_some()
                && memchr::memmem::find(&last_line, b"\"kind\":\"audit_stopped\"").is_none())
    {
        report.abrupt_stop = Some(AbruptStop {
            after_seq: seq,
            after_time: report.last_time.clone().unwrap_or_default(),
            beyond_head: report.beyond_head,
            unflushed_tail: report.unflushed_tail,
        });
    }
    match head {
        Ok(Some(h)) if h.seq == seq && h.hash == prev => Ok(report),
        // A live writer moves its head lazily: verified records past it are not a cut tail.
        Ok(Some(_)) if head_seen => Ok(report),
        Ok(Some(h)) if h.seq > seq => bad(
            report,
            last_name,
            0,
            None,
            format!("the chain ends at record {seq} but its head names record {}: records were cut from the end", h.seq),
        ),
        Ok(Some(h)) => bad(
            report,
            last_name,
            0,
            None,
            format!("the chain ends at record {seq} but its head names record {}: the head does not match the last record", h.seq),
        ),
        Ok(None) => bad(report, last_name, 0, None, "the head file is missing".into()),
        Err(Ok(())) => bad(
            report,
            last_name,
            0,
            None,
            "the head file is corrupt or forged".into(),
        ),
        Err(Err(e)) => Err(e),
    }
}

/// A `gap` record's fields, if the line is one.
fn gap_of(line: &[u8], seq: u64) -> Option<Gap> {
    #[derive(Deserialize)]
    struct G {
        kind: String,
        count: Option<u64>,
        gap_from: Option<String>,
        gap_to: Option<String>,
        reason: Option<String>,
    }
    // Cheap test first: most lines are not gaps.
    memchr::memmem::find(line, b"\"kind\":\"gap\"")?;
    let g: G = serde_json::from_slice(line).ok()?;
    (g.kind == "gap").then_some(Gap {
        seq,
        count: g.count,
        from: g.gap_from,
        to: g.gap_to,
        reason: g.reason,
    })
}

/// Fault injection for tests: fsyncs of the chain files in a directory that fail as a disk's
/// failed writeback does.
#[cfg(test)]
pub(crate) mod fault {
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    /// By directory: fsyncs left to fail, and the bytes a writer keeps since its last good
    /// fsync (instead of [`super::KEEP_UNSYNCED`]).
    static FAULTS: Mutex<Vec<(PathBuf, u32, Option<usize>)>> = Mutex::new(Vec::new());

    fn with<T>(dir: &Path, f: impl FnOnce(&mut (PathBuf, u32, Option<usize>)) -> T) -> T {
        let mut faults = FAULTS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = faults.iter().position(|e| e.0 == dir) {
            return f(&mut faults[i]);
        }
        faults.push((dir.to_path_buf(), 0, None));
        let last = faults.len() - 1;
        f(&mut faults[last])
    }

    /// The next `n` fsyncs of chain files in `dir` fail, each after replacing what was written
    /// since the last good fsync with zeros on disk (the kernel dropped those dirty pages:
    /// what is read back is the disk's).
    pub(crate) fn fail_syncs(dir: &Path, n: u32) {
        with(dir, |e| e.1 = n);
    }

    /// Writers opened on `dir` from now on keep at most `bytes` for rewriting.
    pub(crate) fn keep_at_most(dir: &Path, bytes: usize) {
        with(dir, |e| e.2 = Some(bytes));
    }

    pub(super) fn keep_max(dir: &Path) -> Option<usize> {
        with(dir, |e| e.2)
    }

    pub(super) fn sync_fails(dir: &Path) -> bool {
        with(dir, |e| {
            let fail = e.1 > 0;
            e.1 = e.1.saturating_sub(1);
            fail
        })
    }

    pub(super) fn lose_unsynced(path: &Path, synced_len: u64) -> std::io::Result<()> {
        let file = std::fs::OpenOptions::new().write(true).open(path)?;
        let len = file.metadata()?.len();
        let zeros = vec![0u8; len.saturating_sub(synced_len) as usize];
        file.write_all_at(&zeros, synced_len)
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;

#[cfg(test)]
#[path = "chain_v1_tests.rs"]
mod v1_tests;
