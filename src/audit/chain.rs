//! The hash chain behind the audit log.
//!
//! Each instance writes its own chain to `audit-<instance>-<YYYY-MM-DD>.jsonl` (a new file each
//! UTC day; the chain continues across files). Every record carries its sequence number, the
//! MAC of the record before it (`prev`) and its own MAC (`mac`): HMAC-SHA256 under the audit key
//! over the record without `mac`. So an edited record fails its MAC, and a removed, inserted or
//! reordered one breaks the sequence or the link. After each flush the writer records the last
//! sequence number and MAC, itself MACed, in `audit-<instance>.head` (replaced atomically): a
//! truncated tail, or a deleted last file, no longer matches it. [`verify`] checks all of this
//! and names the first bad record.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use ring::hmac;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::crypto;

/// The `prev` of an instance's first record.
const GENESIS: &str = "genesis";

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
    /// A record is not a JSON object.
    #[error("an audit record must be a JSON object")]
    NotAnObject,
}

/// The last record of a chain, as remembered in the head file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Head {
    seq: u64,
    mac: String,
    head_mac: String,
}

/// Appends records to one instance's chain.
pub struct ChainWriter {
    dir: PathBuf,
    instance: String,
    key: hmac::Key,
    seq: u64,
    prev: String,
    day: String,
    out: Option<BufWriter<File>>,
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

fn head_mac(key: &hmac::Key, instance: &str, seq: u64, mac: &str) -> String {
    mac_hex(key, format!("head\0{instance}\0{seq}\0{mac}").as_bytes())
}

/// The MAC of a record: over its canonical JSON without the `mac` field.
fn record_mac(key: &hmac::Key, record: &Map<String, Value>) -> String {
    let mut without = record.clone();
    without.remove("mac");
    // serde_json's Map keeps keys sorted (no preserve_order feature): canonical.
    let bytes = serde_json::to_vec(&Value::Object(without)).unwrap_or_default();
    mac_hex(key, &bytes)
}

fn check_instance(instance: &str) -> Result<(), ChainError> {
    let ok = !instance.is_empty()
        && instance.len() <= 64
        && instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    ok.then_some(()).ok_or(ChainError::BadInstance)
}

impl ChainWriter {
    /// Opens (or resumes, from its head file) an instance's chain in `dir`.
    pub fn open(dir: &Path, instance: &str, key_bytes: &[u8]) -> Result<ChainWriter, ChainError> {
        check_instance(instance)?;
        fs::create_dir_all(dir).map_err(io(dir))?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, key_bytes);
        let head_file = head_path(dir, instance);
        let (seq, prev) = match fs::read_to_string(&head_file) {
            Ok(text) => {
                let head: Head = serde_json::from_str(&text)
                    .map_err(|_| ChainError::BadHead(head_file.display().to_string()))?;
                if head.head_mac != head_mac(&key, instance, head.seq, &head.mac) {
                    return Err(ChainError::BadHead(head_file.display().to_string()));
                }
                (head.seq, head.mac)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, GENESIS.to_string()),
            Err(e) => return Err(io(&head_file)(e)),
        };
        Ok(ChainWriter {
            dir: dir.to_path_buf(),
            instance: instance.to_string(),
            key,
            seq,
            prev,
            day: String::new(),
            out: None,
        })
    }

    /// Appends one record (a JSON object of event fields) stamped with `at`. Buffered: call
    /// [`ChainWriter::flush`] to make it durable and move the head.
    pub fn append(&mut self, at: OffsetDateTime, event: &Value) -> Result<(), ChainError> {
        let Value::Object(fields) = event else {
            return Err(ChainError::NotAnObject);
        };
        let day = at.date().to_string();
        if self.out.is_none() || day != self.day {
            self.flush()?;
            let path = self
                .dir
                .join(format!("audit-{}-{day}.jsonl", self.instance));
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io(&path))?;
            self.out = Some(BufWriter::new(file));
            self.day = day;
        }
        let mut record = fields.clone();
        self.seq += 1;
        record.insert("seq".into(), Value::from(self.seq));
        record.insert("instance".into(), Value::from(self.instance.clone()));
        record.insert(
            "time".into(),
            Value::from(
                at.format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            ),
        );
        record.insert("prev".into(), Value::from(self.prev.clone()));
        let mac = record_mac(&self.key, &record);
        record.insert("mac".into(), Value::from(mac.clone()));
        let mut line = serde_json::to_vec(&Value::Object(record)).unwrap_or_default();
        line.push(b'\n');
        let path = self
            .dir
            .join(format!("audit-{}-{}.jsonl", self.instance, self.day));
        if let Some(out) = self.out.as_mut() {
            out.write_all(&line).map_err(io(&path))?;
        }
        self.prev = mac;
        Ok(())
    }

    /// Writes buffered records through and records the new head (atomically, by rename).
    pub fn flush(&mut self) -> Result<(), ChainError> {
        if let Some(out) = self.out.as_mut() {
            out.flush().map_err(io(&self.dir))?;
        }
        let head = Head {
            seq: self.seq,
            mac: self.prev.clone(),
            head_mac: head_mac(&self.key, &self.instance, self.seq, &self.prev),
        };
        let path = head_path(&self.dir, &self.instance);
        let tmp = path.with_extension("head.tmp");
        fs::write(&tmp, serde_json::to_vec(&head).unwrap_or_default()).map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        Ok(())
    }
}

/// The first record that does not verify.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BadRecord {
    /// File name.
    pub file: String,
    /// 1-based line in that file (0: the problem is a missing tail).
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// One instance's verification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceReport {
    /// The instance.
    pub instance: String,
    /// Records read.
    pub records: u64,
    /// The first bad record, if any.
    pub first_bad: Option<BadRecord>,
}

/// Verifies every instance's chain in `dir`.
pub fn verify(dir: &Path, key_bytes: &[u8]) -> Result<Vec<InstanceReport>, ChainError> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key_bytes);
    let mut files: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut heads: Vec<String> = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let name = entry
            .map_err(io(dir))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if let Some(rest) = name
            .strip_prefix("audit-")
            .and_then(|n| n.strip_suffix(".jsonl"))
        {
            // audit-<instance>-<YYYY-MM-DD>.jsonl: the date is the last 10 characters.
            if rest.len() > 11 {
                let instance = rest[..rest.len() - 11].to_string();
                files.entry(instance).or_default().push(name);
            }
        } else if let Some(instance) = name
            .strip_prefix("audit-")
            .and_then(|n| n.strip_suffix(".head"))
        {
            heads.push(instance.to_string());
        }
    }
    for instance in heads {
        files.entry(instance).or_default();
    }
    let mut reports = Vec::new();
    for (instance, mut names) in files {
        names.sort();
        reports.push(verify_instance(dir, &key, &instance, &names)?);
    }
    Ok(reports)
}

fn verify_instance(
    dir: &Path,
    key: &hmac::Key,
    instance: &str,
    names: &[String],
) -> Result<InstanceReport, ChainError> {
    let mut seq = 0u64;
    let mut prev = GENESIS.to_string();
    let bad = |file: &str, line: usize, reason: String, records: u64| InstanceReport {
        instance: instance.to_string(),
        records,
        first_bad: Some(BadRecord {
            file: file.to_string(),
            line,
            reason,
        }),
    };
    for name in names {
        let path = dir.join(name);
        let reader = BufReader::new(File::open(&path).map_err(io(&path))?);
        for (i, line) in reader.lines().enumerate() {
            let line = line.map_err(io(&path))?;
            let record: Map<String, Value> = match serde_json::from_str(&line) {
                Ok(Value::Object(m)) => m,
                _ => return Ok(bad(name, i + 1, "not a JSON object".into(), seq)),
            };
            let got_seq = record.get("seq").and_then(Value::as_u64);
            if got_seq != Some(seq + 1) {
                return Ok(bad(name, i + 1, format!("sequence {got_seq:?}, expected {}: a record was removed, inserted or moved", seq + 1), seq));
            }
            if record.get("prev").and_then(Value::as_str) != Some(prev.as_str()) {
                return Ok(bad(
                    name,
                    i + 1,
                    "does not link to the record before it".into(),
                    seq,
                ));
            }
            let mac = record
                .get("mac")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if mac != record_mac(key, &record) {
                return Ok(bad(
                    name,
                    i + 1,
                    "MAC mismatch: the record was edited (or another key wrote it)".into(),
                    seq,
                ));
            }
            seq += 1;
            prev = mac;
        }
    }
    let head_file = head_path(dir, instance);
    let last = names.last().map(String::as_str).unwrap_or("-");
    match fs::read_to_string(&head_file) {
        Ok(text) => {
            let head: Option<Head> = serde_json::from_str(&text).ok();
            match head {
                Some(h) if h.head_mac == head_mac(key, instance, h.seq, &h.mac) => {
                    if h.seq != seq || h.mac != prev {
                        return Ok(bad(last, 0, format!("the chain ends at record {seq} but its head names record {}: records were cut from the end", h.seq), seq));
                    }
                }
                _ => {
                    return Ok(bad(
                        last,
                        0,
                        "the head file is corrupt or forged".into(),
                        seq,
                    ))
                }
            }
        }
        Err(_) => return Ok(bad(last, 0, "the head file is missing".into(), seq)),
    }
    Ok(InstanceReport {
        instance: instance.to_string(),
        records: seq,
        first_bad: None,
    })
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
