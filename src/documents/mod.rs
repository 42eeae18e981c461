//! Report documents with buyer PII, redacted while they stream.
//!
//! `getReportDocument` answers with a presigned S3 `url`. For restricted report types that
//! document holds buyer PII, so the gateway never hands the `url` to the tool: it rewrites it
//! ([`rewrite_report_document`]) to its own short-lived signed link ([`link`]), and the link's
//! endpoint downloads the document and streams it through [`redact`].
//!
//! # What `redact` does
//!
//! 1. **Gunzip.** The input is gunzipped when it starts with the gzip magic bytes `1f 8b`
//!    (whatever `compressionAlgorithm` said; the flag is only a hint). Concatenated members are
//!    decoded; a corrupt or truncated stream (CRC, length) is an error.
//! 2. **Sniff.** The first 1 KiB of the (decompressed) document, after a UTF-8 BOM and white
//!    space, decides the format:
//!    - `{` or `[`: **JSON** (also JSON Lines: several top-level values);
//!    - `<`: **XML**;
//!    - control bytes other than tab, CR, LF and form feed (a NUL, a PDF or ZIP
//!      signature, UTF-16): **opaque**;
//!    - anything else: a **delimited** flat file whose first line is the header row.
//! 3. **Redact**, format by format, with the names of [`fields`]:
//!    - delimited: the header row decides: the first line with two or more fields, or one field
//!      that names PII (up to 16 one-field title or blank lines before it pass unchanged, as
//!      Amazon's date range reports have). Tab-separated when the header holds a tab (Amazon's
//!      flat files; no quoting), else comma- or semicolon-separated with RFC 4180 quoting. When
//!      no header names buyer PII, or the role passes every PII column it has, the bytes pass
//!      through unchanged. Otherwise every row is split and each PII column goes through the
//!      [`Redactor`]; other columns, delimiters and line ends are copied byte for byte. A row
//!      with more fields than the header is an error (its extra fields have no name).
//!    - JSON: a streaming tokenizer copies the document and replaces the string (or number)
//!      value of each PII key, classified with the names of its two enclosing objects (so
//!      `Name` counts inside `ShippingAddress`). Literals (`true`, `false`, `null`) stay; any
//!      other bare word, or a number JSON's grammar does not allow, is an error. A key that
//!      names nothing inside an object or array under a PII key inherits that key's category
//!      (`"BuyerName": {"first": ..}`; `ShippingAddress.AddressType` is redacted as an address).
//!    - XML: a streaming tokenizer copies the document and replaces the text (and CDATA) of
//!      each PII element and the value of each PII attribute; elements that name nothing inside
//!      a PII element inherit its category, as in JSON. A PII element's text and CDATA up to its
//!      end tag (or first child) are one value, redacted once; comments and processing
//!      instructions inside it are dropped unless the role passes the category. A DOCTYPE with an internal subset
//!      and entities other than the five predefined and numeric ones in PII text are errors.
//!    - opaque: passes unchanged only when the role gets [`Category::Document`] as
//!      [`Action::Pass`] (a PDF invoice or label shows the buyer's address and cannot be
//!      redacted field by field); otherwise the stream fails with
//!      [`DocumentError::Unrecognized`]. A restricted document the gateway cannot read is never
//!      passed through.
//!
//! # Fail closed
//!
//! Every error stops the stream: the bytes already sent are complete, redacted records (a row
//! or value is written only once it is whole and transformed), and the error ends the body so
//! the tool sees a broken download instead of a short one. In particular a row, JSON string,
//! number or key, XML tag, comment, CDATA section or PII text longer than
//! [`Limits::max_record_bytes`] is an error, never emitted; so is nesting deeper than
//! [`Limits::max_depth`].
//!
//! # Values
//!
//! Flat files come in UTF-8 and sometimes Windows-1252. Bytes are handled as bytes: columns
//! that are not PII are never decoded. A PII value is given to the redactor as UTF-8, decoded as
//! Windows-1252 when it is not valid UTF-8. The redactor answers with a [`Decision`]: a
//! replacement is written as UTF-8, made safe for its format (tabs and line breaks become
//! spaces in TSV, quoting in CSV, escaping in JSON and XML), even when it equals the value; only
//! [`Decision::Unchanged`] copies the value's original bytes (its encoding and escaping). A
//! category the role passes is copied without calling the redactor; one it drops is emitted
//! empty without calling it. The order id given to the redactor is the
//! record's: the row's `order-id` / `amazon-order-id` column in flat files, the nearest
//! enclosing object's or element's order id field seen *before* the value in JSON and XML
//! (Amazon puts it first); `None` when there is none.
//!
//! # Memory
//!
//! Input is processed in slices of at most [`Limits::chunk_bytes`], and the output of each slice
//! is yielded before the next is read, so memory is bounded by the chunk size, one record
//! (`max_record_bytes`), the gzip window, and for JSON and XML the nesting depth times a
//! 256-byte name and a 64-byte order id per level plus a name cache of at most 4096 entries,
//! whatever the document's size. Compressed input is inflated 4 KiB at a time, so a slice's
//! output stays bounded even for extreme compression ratios.

pub mod fields;
pub mod link;

mod delimited;
mod json;
mod xml;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use flate2::write::MultiGzDecoder;
use futures_util::{Stream, StreamExt};

use crate::pii::{Action, Category};

/// What the redactor decided for one value.
#[derive(Clone, PartialEq, Eq)]
pub enum Decision {
    /// The role receives the value as it is: its original bytes are copied (encoding, escapes,
    /// CDATA, a JSON number stay as they were). Only a role that passes the category says this.
    Unchanged,
    /// Emit this text instead (written as UTF-8, escaped for the format), even when it happens
    /// to equal the value (an already masked `J***`).
    Replace(String),
    /// Emit the value empty.
    Drop,
}

impl std::fmt::Debug for Decision {
    /// Names the decision, never the text (it may be a value the role receives).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Decision::Unchanged => "Unchanged",
            Decision::Replace(_) => "Replace(..)",
            Decision::Drop => "Drop",
        })
    }
}

/// The per-value policy of the role a document is served to.
pub trait Redactor: Send + Sync {
    /// What to emit for one PII value of `category` in a record of order `order_id` (if the
    /// document has an order id column). Only [`Decision::Unchanged`] keeps the original bytes;
    /// a [`Decision::Replace`] is written out even when its text equals the value.
    fn redact(&self, category: Category, value: &str, order_id: Option<&str>) -> Decision;
    /// Whether the role gets this category at all (lets the redaction skip work).
    fn action(&self, category: Category) -> Action;
}

/// Bounds that keep memory flat in the document's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest row, JSON token, XML tag or PII text; a longer one fails the stream.
    pub max_record_bytes: usize,
    /// Deepest JSON or XML nesting.
    pub max_depth: usize,
    /// Largest slice of input processed before its output is yielded.
    pub chunk_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_record_bytes: 1024 * 1024,
            max_depth: 256,
            chunk_bytes: 64 * 1024,
        }
    }
}

/// Why a report document could not be redacted or a document link not be issued or opened.
/// Messages name formats, lines and limits, never values, URLs or claims.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// Reading the upstream document failed (the cause may name the presigned URL, so it is not
    /// kept).
    #[error("reading the upstream report document failed")]
    Upstream,
    /// The gzip stream is corrupt or truncated.
    #[error("the report document is not valid gzip")]
    Gzip,
    /// A row, token or text is longer than the limit.
    #[error("a {format} record is longer than {limit} bytes")]
    RecordTooLong {
        /// The document's format.
        format: &'static str,
        /// The limit in bytes.
        limit: usize,
    },
    /// Nesting is deeper than the limit.
    #[error("the {format} document nests deeper than {limit} levels")]
    TooDeep {
        /// The document's format.
        format: &'static str,
        /// The limit.
        limit: usize,
    },
    /// The document does not parse.
    #[error("the {format} document is malformed: {reason}")]
    Malformed {
        /// The document's format.
        format: &'static str,
        /// What is wrong (no document content).
        reason: &'static str,
    },
    /// A data row has more fields than the header row.
    #[error("row {line} has {fields} fields but the header has {columns}")]
    RaggedRow {
        /// The 1-based line number.
        line: u64,
        /// Fields in the row.
        fields: usize,
        /// Columns in the header.
        columns: usize,
    },
    /// The document is neither delimited text, JSON nor XML, and the role does not get whole
    /// documents in clear.
    #[error("the report document is not a flat file, JSON or XML, and the role does not receive documents")]
    Unrecognized,
    /// `getReportDocument` answered with something other than a JSON object with a `url`.
    #[error("the getReportDocument response is not a JSON object with a url")]
    NotAReportDocument,
    /// The document link's expiry is not in the future or too far away.
    #[error("a document link must expire within {max_seconds} seconds from now")]
    BadExpiry {
        /// The longest lifetime allowed.
        max_seconds: i64,
    },
    /// The document link has expired.
    #[error("the document link has expired")]
    LinkExpired,
    /// The document link is malformed, tampered with or sealed under a key this gateway does
    /// not have.
    #[error("the document link is not valid")]
    LinkInvalid,
    /// Sealing a document link failed.
    #[error(transparent)]
    Crypto(#[from] crate::crypto::CryptoError),
}

/// Streams `input` (a report document, gzipped or not) through the role's policy. See the
/// module docs for formats, limits and what fails.
pub fn redact<S, E>(
    input: S,
    gzip: bool,
    redactor: Arc<dyn Redactor>,
    limits: Limits,
) -> impl Stream<Item = Result<Bytes, DocumentError>> + Send
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Send + 'static,
{
    struct Driver<S> {
        input: std::pin::Pin<Box<S>>,
        core: Redaction,
        pending: Bytes,
        done: bool,
    }
    let driver = Driver {
        input: Box::pin(input),
        core: Redaction::new(gzip, redactor, limits),
        pending: Bytes::new(),
        done: false,
    };
    futures_util::stream::unfold(driver, |mut d| async move {
        loop {
            if d.done {
                return None;
            }
            let mut out = Vec::new();
            if !d.pending.is_empty() {
                let n = d.pending.len().min(d.core.limits.chunk_bytes.max(1));
                let slice = d.pending.split_to(n);
                if let Err(e) = d.core.push(&slice, &mut out) {
                    d.done = true;
                    return Some((Err(e), d));
                }
            } else {
                match d.input.next().await {
                    Some(Ok(bytes)) => {
                        d.pending = bytes;
                        continue;
                    }
                    Some(Err(_)) => {
                        d.done = true;
                        return Some((Err(DocumentError::Upstream), d));
                    }
                    None => {
                        d.done = true;
                        if let Err(e) = d.core.finish(&mut out) {
                            return Some((Err(e), d));
                        }
                    }
                }
            }
            if !out.is_empty() {
                return Some((Ok(Bytes::from(out)), d));
            }
        }
    })
}

/// The synchronous core of [`redact`]: push input bytes in, get redacted bytes out. After an
/// error every later call fails too.
pub struct Redaction {
    limits: Limits,
    policy: Policy,
    /// The first bytes, until there are enough to tell gzip from plain.
    head: Vec<u8>,
    gunzip: Option<MultiGzDecoder<Vec<u8>>>,
    decided: bool,
    body: Body,
    failed: bool,
}

// === impl Redaction ===

impl Redaction {
    /// A redaction for one document. `_gzip_hint` is what `compressionAlgorithm` said; the magic
    /// bytes decide, since a document whose flag and bytes disagree is redacted correctly either
    /// way (a plain document is sniffed, a gzipped one inflated).
    pub fn new(_gzip_hint: bool, redactor: Arc<dyn Redactor>, limits: Limits) -> Redaction {
        Redaction {
            limits,
            policy: Policy::new(redactor),
            head: Vec::new(),
            gunzip: None,
            decided: false,
            body: Body::Sniff(Vec::new()),
            failed: false,
        }
    }

    /// Consumes the next input bytes, appending redacted output to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), DocumentError> {
        if self.failed {
            return Err(DocumentError::Malformed {
                format: "report",
                reason: "the redaction already failed",
            });
        }
        let result = self.push_inner(input, out);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Ends the document: flushes what is buffered and checks it is complete.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), DocumentError> {
        if self.failed {
            return Err(DocumentError::Malformed {
                format: "report",
                reason: "the redaction already failed",
            });
        }
        self.failed = true;
        if !self.decided {
            let head = std::mem::take(&mut self.head);
            self.decided = true;
            self.body_push(&head, out)?;
        }
        if let Some(gz) = self.gunzip.as_mut() {
            gz.try_finish().map_err(|_| DocumentError::Gzip)?;
            let plain = std::mem::take(gz.get_mut());
            self.body_push(&plain, out)?;
        }
        self.body.finish(&self.policy, &self.limits, out)
    }

    fn push_inner(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), DocumentError> {
        let mut input = input;
        let owned;
        if !self.decided {
            self.head.extend_from_slice(input);
            if self.head.len() < 2 {
                return Ok(());
            }
            self.decided = true;
            if self.head[..2] == [0x1f, 0x8b] {
                self.gunzip = Some(MultiGzDecoder::new(Vec::new()));
            }
            owned = std::mem::take(&mut self.head);
            input = &owned;
        }
        if self.gunzip.is_none() {
            return self.body_push(input, out);
        }
        // Small compressed slices bound what one write can inflate to (deflate expands at
        // most ~1032:1).
        for piece in input.chunks(4096) {
            let plain = {
                let gz = self.gunzip.as_mut().ok_or(DocumentError::Gzip)?;
                gz.write_all(piece).map_err(|_| DocumentError::Gzip)?;
                std::mem::take(gz.get_mut())
            };
            self.body_push(&plain, out)?;
            if let Some(gz) = self.gunzip.as_mut() {
                // Hand the (now empty) buffer back so its capacity is reused.
                let mut plain = plain;
                plain.clear();
                *gz.get_mut() = plain;
            }
        }
        Ok(())
    }

    fn body_push(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), DocumentError> {
        if data.is_empty() {
            return Ok(());
        }
        if let Body::Sniff(buf) = &mut self.body {
            buf.extend_from_slice(data);
            if buf.len() < SNIFF_BYTES {
                return Ok(());
            }
            let buf = std::mem::take(buf);
            self.body = Body::choose(&buf, &self.policy)?;
            return self.body.push(&buf, &self.policy, &self.limits, out);
        }
        self.body.push(data, &self.policy, &self.limits, out)
    }
}

/// Longest order id kept for a JSON object or XML element (Amazon's are 19 characters);
/// a longer value is not an order id, and keeping it at every level would cost memory.
pub(crate) const MAX_ORDER_ID_BYTES: usize = 64;

/// How much of the document the format sniffer looks at.
const SNIFF_BYTES: usize = 1024;

/// Starts of text documents that are page or label descriptions, not data.
const OPAQUE_TEXT: [&[u8]; 3] = [b"%PDF-", b"%!PS", b"\x10CT~~CD"];

/// The first line of a document (up to what the sniffer saw).
fn header_row(text: &[u8]) -> &[u8] {
    let end = memchr::memchr(b'\n', text).unwrap_or(text.len());
    &text[..end]
}

/// Whether a first line names columns: split by tabs or commas, or one short column name.
fn looks_like_header(row: &[u8]) -> bool {
    let row = row.strip_suffix(b"\r").unwrap_or(row);
    row.iter().any(|b| matches!(b, b'\t' | b','))
        || (!row.is_empty()
            && row.len() <= 64
            && row
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b" _-/().\"".contains(b)))
}

/// The document's format, once known.
enum Body {
    Sniff(Vec<u8>),
    Delimited(delimited::Delimited),
    Json(json::Json),
    Xml(xml::Xml),
    Opaque,
}

// === impl Body ===

impl Body {
    fn choose(head: &[u8], policy: &Policy) -> Result<Body, DocumentError> {
        let text = head.strip_prefix(b"\xef\xbb\xbf").unwrap_or(head);
        let binary = text
            .iter()
            .any(|&b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0c));
        let opaque = || {
            if policy.action(Category::Document) == Action::Pass {
                Ok(Body::Opaque)
            } else {
                Err(DocumentError::Unrecognized)
            }
        };
        // Text formats that cannot be redacted field by field (PDF, PostScript, ZPL and EPL
        // labels: ZPL commands start with `^` or `~`, an EPL label with `N` on its own line)
        // are as opaque as images.
        let start = text
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .map_or(&text[text.len()..], |i| &text[i..]);
        let label = matches!(start.first(), Some(b'^' | b'~'))
            || start.starts_with(b"N\r\n")
            || start.starts_with(b"N\n");
        if binary || label || OPAQUE_TEXT.iter().any(|magic| start.starts_with(magic)) {
            return opaque();
        }
        match text.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{' | b'[') => Ok(Body::Json(json::Json::new())),
            Some(b'<') => Ok(Body::Xml(xml::Xml::new())),
            // A flat file names its columns in a header row split by tabs or commas; text
            // without one is nothing the gateway knows how to redact.
            _ if looks_like_header(header_row(text)) => {
                Ok(Body::Delimited(delimited::Delimited::new()))
            }
            _ => opaque(),
        }
    }

    fn push(
        &mut self,
        data: &[u8],
        policy: &Policy,
        limits: &Limits,
        out: &mut Vec<u8>,
    ) -> Result<(), DocumentError> {
        match self {
            Body::Sniff(buf) => {
                buf.extend_from_slice(data);
                Ok(())
            }
            Body::Delimited(d) => d.push(data, policy, limits, out),
            Body::Json(j) => j.push(data, policy, limits, out),
            Body::Xml(x) => x.push(data, policy, limits, out),
            Body::Opaque => {
                out.extend_from_slice(data);
                Ok(())
            }
        }
    }

    fn finish(
        &mut self,
        policy: &Policy,
        limits: &Limits,
        out: &mut Vec<u8>,
    ) -> Result<(), DocumentError> {
        if let Body::Sniff(buf) = self {
            if buf.is_empty() {
                return Ok(());
            }
            let buf = std::mem::take(buf);
            *self = Body::choose(&buf, policy)?;
            self.push(&buf, policy, limits, out)?;
        }
        match self {
            Body::Sniff(_) | Body::Opaque => Ok(()),
            Body::Delimited(d) => d.finish(policy, limits, out),
            Body::Json(j) => j.finish(policy, limits, out),
            Body::Xml(x) => x.finish(policy, limits, out),
        }
    }
}

/// What to do with one PII value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Copy the value's bytes (the role passes the category).
    Keep,
    /// Emit nothing (the role does not get the category).
    Empty,
    /// Ask the redactor.
    Call(Category),
}

/// What came out of the redactor for one value.
pub(crate) enum Redacted {
    /// Copy the original bytes.
    Keep,
    /// Emit this (possibly empty) text.
    Text(String),
}

/// The redactor with its actions looked up once.
pub(crate) struct Policy {
    redactor: Arc<dyn Redactor>,
    actions: [Action; Category::ALL.len()],
}

// === impl Policy ===

impl Policy {
    fn new(redactor: Arc<dyn Redactor>) -> Policy {
        let actions = Category::ALL.map(|c| redactor.action(c));
        Policy { redactor, actions }
    }

    pub(crate) fn action(&self, category: Category) -> Action {
        let i = Category::ALL
            .iter()
            .position(|c| *c == category)
            .unwrap_or(0);
        self.actions[i]
    }

    pub(crate) fn plan(&self, category: Category) -> Plan {
        match self.action(category) {
            Action::Pass => Plan::Keep,
            Action::Drop => Plan::Empty,
            Action::Mask | Action::Pseudonymize | Action::Encrypt => Plan::Call(category),
        }
    }

    /// Applies the policy to one value given as raw bytes (UTF-8, else Windows-1252).
    pub(crate) fn apply_raw(
        &self,
        category: Category,
        raw: &[u8],
        order_id: Option<&str>,
    ) -> Redacted {
        match self.plan(category) {
            Plan::Keep => Redacted::Keep,
            Plan::Empty => Redacted::Text(String::new()),
            Plan::Call(_) if raw.is_empty() => Redacted::Keep,
            Plan::Call(c) => {
                let value = decode_text(raw);
                Redacted::from_call(self.redactor.redact(c, &value, order_id))
            }
        }
    }

    /// Applies the policy to one already decoded value.
    pub(crate) fn apply_str(
        &self,
        category: Category,
        value: &str,
        order_id: Option<&str>,
    ) -> Redacted {
        match self.plan(category) {
            Plan::Keep => Redacted::Keep,
            Plan::Empty => Redacted::Text(String::new()),
            Plan::Call(_) if value.is_empty() => Redacted::Keep,
            Plan::Call(c) => Redacted::from_call(self.redactor.redact(c, value, order_id)),
        }
    }
}

// === impl Redacted ===

impl Redacted {
    /// The result of a redactor's call. Only an explicit [`Decision::Unchanged`] (as the audit
    /// log's noting redactor returns for what a role passes) keeps the original bytes: a JSON
    /// number stays a number, escapes, CDATA and Windows-1252 bytes stay as they were. A
    /// replacement is written out even when it equals the decoded value, so what is emitted
    /// never depends on how faithfully a format's decoder read the value.
    fn from_call(decision: Decision) -> Redacted {
        match decision {
            Decision::Unchanged => Redacted::Keep,
            Decision::Replace(text) => Redacted::Text(text),
            Decision::Drop => Redacted::Text(String::new()),
        }
    }
}

/// Decodes value bytes: UTF-8 when valid, else Windows-1252 (which every byte string is).
pub(crate) fn decode_text(raw: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(raw) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(raw.iter().map(|&b| cp1252(b)).collect()),
    }
}

fn cp1252(b: u8) -> char {
    const HIGH: [char; 32] = [
        '\u{20ac}', '\u{81}', '\u{201a}', '\u{192}', '\u{201e}', '\u{2026}', '\u{2020}',
        '\u{2021}', '\u{2c6}', '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8d}', '\u{17d}',
        '\u{8f}', '\u{90}', '\u{2018}', '\u{2019}', '\u{201c}', '\u{201d}', '\u{2022}', '\u{2013}',
        '\u{2014}', '\u{2dc}', '\u{2122}', '\u{161}', '\u{203a}', '\u{153}', '\u{9d}', '\u{17e}',
        '\u{178}',
    ];
    match b {
        0x80..=0x9f => HIGH[(b - 0x80) as usize],
        _ => char::from(b),
    }
}

/// Rewrites a `getReportDocument` response: `url` becomes `link_base` + the token
/// `token_for(url, compressionAlgorithm)` returns, `compressionAlgorithm` is removed (the
/// gateway serves the document decompressed), every other field stays. Anything but a JSON
/// object with a string `url` is an error (fail closed). The output's keys are in sorted order
/// (serde_json's map), which JSON readers ignore.
pub fn rewrite_report_document(
    body: &[u8],
    link_base: &str,
    token_for: impl FnOnce(&str, Option<&str>) -> Result<String, DocumentError>,
) -> Result<Vec<u8>, DocumentError> {
    let mut doc: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|_| DocumentError::NotAReportDocument)?;
    let url = match doc.get("url") {
        Some(serde_json::Value::String(url)) => url.clone(),
        _ => return Err(DocumentError::NotAReportDocument),
    };
    let compression = match doc.remove("compressionAlgorithm") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(c)) => Some(c),
        Some(_) => return Err(DocumentError::NotAReportDocument),
    };
    let token = token_for(&url, compression.as_deref())?;
    doc.insert(
        "url".to_string(),
        serde_json::Value::String(format!("{link_base}{token}")),
    );
    serde_json::to_vec(&doc).map_err(|_| DocumentError::NotAReportDocument)
}
