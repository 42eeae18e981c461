//! Flat files (TSV, CSV): the header row decides which columns are redacted.

use memchr::{memchr, memchr2, memchr_iter};

use super::fields::{classify_header, Field};
use super::{decode_text, DocumentError, Limits, Plan, Policy, Redacted};

const FORMAT: &str = "flat file";

/// Most one-field lines looked past for the header row.
const MAX_PREAMBLE_LINES: usize = 16;

/// A delimited document being redacted row by row.
pub(crate) struct Delimited {
    mode: Mode,
    /// The start of a row whose end has not arrived yet.
    line: Vec<u8>,
    delim: u8,
    /// CSV: fields may be quoted (and hold delimiters and line breaks).
    quoted: bool,
    /// CSV: whether the carried `line` ends inside quotes.
    in_quotes: bool,
    /// Per column: what to do with it (`None`: not PII, or passed).
    plans: Vec<Option<Plan>>,
    order_col: Option<usize>,
    line_no: u64,
    /// Lines before the header row passed so far (report titles, blank lines).
    preamble: usize,
    /// Field boundaries of the current row (reused).
    bounds: Vec<(usize, usize)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Waiting for the header row.
    Header,
    /// No PII column the role does not pass: copy bytes.
    Pass,
    /// Redact row by row.
    Rows,
}

// === impl Delimited ===

impl Delimited {
    pub(crate) fn new() -> Delimited {
        Delimited {
            mode: Mode::Header,
            line: Vec::new(),
            delim: b'\t',
            // Header names hold no line breaks: the first one ends the header.
            quoted: false,
            in_quotes: false,
            plans: Vec::new(),
            order_col: None,
            line_no: 0,
            preamble: 0,
            bounds: Vec::new(),
        }
    }

    pub(crate) fn push(
        &mut self,
        data: &[u8],
        policy: &Policy,
        limits: &Limits,
        out: &mut Vec<u8>,
    ) -> Result<(), DocumentError> {
        let mut rest = data;
        loop {
            if self.mode == Mode::Pass {
                out.extend_from_slice(rest);
                return Ok(());
            }
            let Some(i) = self.line_end(rest) else {
                if self.line.len() + rest.len() > limits.max_record_bytes {
                    return Err(too_long(limits));
                }
                self.line.extend_from_slice(rest);
                return Ok(());
            };
            let (complete, tail) = rest.split_at(i + 1);
            rest = tail;
            if self.line.len() + complete.len() > limits.max_record_bytes + 1 {
                return Err(too_long(limits));
            }
            if self.line.is_empty() {
                self.row(complete, policy, out)?;
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(complete);
                self.row(&line, policy, out)?;
                line.clear();
                self.line = line;
            }
        }
    }

    pub(crate) fn finish(
        &mut self,
        policy: &Policy,
        _limits: &Limits,
        out: &mut Vec<u8>,
    ) -> Result<(), DocumentError> {
        if self.mode == Mode::Pass || self.line.is_empty() {
            return Ok(());
        }
        if self.quoted && self.in_quotes {
            return Err(DocumentError::Malformed {
                format: FORMAT,
                reason: "a quoted field is not closed",
            });
        }
        let line = std::mem::take(&mut self.line);
        self.row(&line, policy, out)
    }

    /// The index of the `\n` that ends the current row within `data`, if it is there.
    fn line_end(&mut self, data: &[u8]) -> Option<usize> {
        if !self.quoted {
            return memchr(b'\n', data);
        }
        let mut pos = 0;
        while let Some(i) = memchr2(b'\n', b'"', &data[pos..]) {
            let at = pos + i;
            if data[at] == b'"' {
                self.in_quotes = !self.in_quotes;
            } else if !self.in_quotes {
                return Some(at);
            }
            pos = at + 1;
        }
        None
    }

    /// Handles one complete row (with its line end, except at the end of the document).
    fn row(
        &mut self,
        line: &[u8],
        policy: &Policy,
        out: &mut Vec<u8>,
    ) -> Result<(), DocumentError> {
        self.line_no += 1;
        if self.mode == Mode::Header {
            return self.header(line, policy, out);
        }
        let (body, end) = split_line_end(line);
        if body.is_empty() {
            out.extend_from_slice(line);
            return Ok(());
        }
        let mut bounds = std::mem::take(&mut self.bounds);
        bounds.clear();
        split_fields(body, self.delim, self.quoted, &mut bounds);
        if bounds.len() > self.plans.len() {
            let err = DocumentError::RaggedRow {
                line: self.line_no,
                fields: bounds.len(),
                columns: self.plans.len(),
            };
            self.bounds = bounds;
            return Err(err);
        }
        let mut order_id: Option<Option<String>> = None;
        let mut copied = 0;
        for (col, &(start, stop)) in bounds.iter().enumerate() {
            let Some(plan) = self.plans[col] else {
                continue;
            };
            let field = &body[start..stop];
            let (raw, was_quoted) = unquote(field, self.quoted);
            let replacement = match plan {
                Plan::Keep => continue,
                Plan::Empty => String::new(),
                Plan::Call(category) => {
                    let id = order_id.get_or_insert_with(|| {
                        self.order_col
                            .and_then(|c| bounds.get(c))
                            .map(|&(s, e)| unquote(&body[s..e], self.quoted).0)
                            .filter(|raw| !raw.is_empty())
                            .map(|raw| decode_text(&raw).into_owned())
                    });
                    match policy.apply_raw(category, &raw, id.as_deref()) {
                        Redacted::Keep => continue,
                        Redacted::Text(t) => t,
                    }
                }
            };
            out.extend_from_slice(&body[copied..start]);
            self.write_field(&replacement, was_quoted, out);
            copied = stop;
        }
        out.extend_from_slice(&body[copied..]);
        out.extend_from_slice(end);
        self.bounds = bounds;
        Ok(())
    }

    fn header(
        &mut self,
        line: &[u8],
        policy: &Policy,
        out: &mut Vec<u8>,
    ) -> Result<(), DocumentError> {
        let (body, _) = split_line_end(line);
        let body = body.strip_prefix(b"\xef\xbb\xbf").unwrap_or(body);
        (self.delim, self.quoted) = if memchr(b'\t', body).is_some() {
            (b'\t', false)
        } else if memchr(b',', body).is_some() {
            (b',', true)
        } else if memchr(b';', body).is_some() {
            (b';', true)
        } else {
            (b'\t', false)
        };
        self.in_quotes = false;
        let mut bounds = Vec::new();
        split_fields(body, self.delim, self.quoted, &mut bounds);
        // A line of one field that names nothing is a title or blank line before the header
        // (Amazon's date range reports start with a few); a PII header may come after it.
        let single = bounds.len() < 2
            && classify_header(&decode_text(&unquote(body, self.quoted).0)).is_none();
        if single && self.preamble < MAX_PREAMBLE_LINES {
            self.preamble += 1;
            (self.delim, self.quoted) = (b'\t', false);
            out.extend_from_slice(line);
            return Ok(());
        }
        self.plans.clear();
        self.order_col = None;
        for (col, &(s, e)) in bounds.iter().enumerate() {
            let (name, _) = unquote(&body[s..e], self.quoted);
            let plan = match classify_header(&decode_text(&name)) {
                Some(Field::Pii(category)) => Some(policy.plan(category)),
                Some(Field::OrderId) => {
                    self.order_col.get_or_insert(col);
                    None
                }
                None => None,
            };
            self.plans.push(plan.filter(|p| *p != Plan::Keep));
        }
        self.mode = if self.plans.iter().any(Option::is_some) {
            Mode::Rows
        } else {
            Mode::Pass
        };
        out.extend_from_slice(line);
        Ok(())
    }

    fn write_field(&self, value: &str, was_quoted: bool, out: &mut Vec<u8>) {
        if !self.quoted {
            out.extend(value.bytes().map(|b| {
                if matches!(b, b'\t' | b'\r' | b'\n') {
                    b' '
                } else {
                    b
                }
            }));
            return;
        }
        let needs_quotes = was_quoted
            || value
                .bytes()
                .any(|b| b == self.delim || matches!(b, b'"' | b'\r' | b'\n'));
        if !needs_quotes {
            out.extend_from_slice(value.as_bytes());
            return;
        }
        out.push(b'"');
        for b in value.bytes() {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    }
}

fn too_long(limits: &Limits) -> DocumentError {
    DocumentError::RecordTooLong {
        format: FORMAT,
        limit: limits.max_record_bytes,
    }
}

/// Splits a row into its content and its line end (`\r\n`, `\n` or nothing).
fn split_line_end(line: &[u8]) -> (&[u8], &[u8]) {
    let cut = if line.ends_with(b"\r\n") {
        2
    } else if line.ends_with(b"\n") {
        1
    } else {
        0
    };
    line.split_at(line.len() - cut)
}

/// Field boundaries (start, end) of one row's content.
fn split_fields(body: &[u8], delim: u8, quoted: bool, bounds: &mut Vec<(usize, usize)>) {
    let mut start = 0;
    if !quoted {
        for i in memchr_iter(delim, body) {
            bounds.push((start, i));
            start = i + 1;
        }
        bounds.push((start, body.len()));
        return;
    }
    let mut in_quotes = false;
    for (i, &b) in body.iter().enumerate() {
        if b == b'"' {
            in_quotes = !in_quotes;
        } else if b == delim && !in_quotes {
            bounds.push((start, i));
            start = i + 1;
        }
    }
    bounds.push((start, body.len()));
}

/// A field's value: CSV quotes removed and doubled quotes undone; whether it was quoted.
fn unquote(field: &[u8], quoted: bool) -> (std::borrow::Cow<'_, [u8]>, bool) {
    if !quoted || field.len() < 2 || field[0] != b'"' || field[field.len() - 1] != b'"' {
        return (std::borrow::Cow::Borrowed(field), false);
    }
    let inner = &field[1..field.len() - 1];
    if memchr(b'"', inner).is_none() {
        return (std::borrow::Cow::Borrowed(inner), true);
    }
    let mut value = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        value.push(inner[i]);
        if inner[i] == b'"' && inner.get(i + 1) == Some(&b'"') {
            i += 1;
        }
        i += 1;
    }
    (std::borrow::Cow::Owned(value), true)
}
