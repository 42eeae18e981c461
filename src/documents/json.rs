//! JSON documents (and JSON Lines): a streaming tokenizer that copies everything but the values
//! of PII keys.

use std::borrow::Cow;
use std::sync::Arc;

use memchr::memchr2;

use super::fields::{Cache, Field};
use super::{decode_text, DocumentError, Limits, Plan, Policy, Redacted};

const FORMAT: &str = "JSON";

/// A JSON document being redacted token by token.
pub(crate) struct Json {
    state: St,
    stack: Vec<Frame>,
    /// The key being read, or a value being collected (raw, without quotes).
    buf: Vec<u8>,
    /// The field of the value being collected.
    value_field: Option<Field>,
    cache: Cache,
}

/// One open object or array.
struct Frame {
    array: bool,
    /// The key this container sits under (array elements inherit the array's).
    name: Option<Arc<str>>,
    /// The current key (objects).
    key: Option<Arc<str>>,
    /// The field of the value being read: the current key's (objects) or every element's
    /// (arrays).
    field: Option<Field>,
    /// The record's order id, once seen (objects).
    order_id: Option<String>,
    /// The PII category of the key this container sits under (or of an enclosing one): keys
    /// inside that name nothing themselves inherit it (`"BuyerName": {"first": ...}`).
    inherit: Option<Field>,
}

/// Where a string scan stopped.
enum End {
    /// Still inside the string; whether the last byte was a backslash.
    Open(bool),
    /// The closing quote was consumed.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Value,
    ArrayFirst,
    ObjectFirst,
    ObjectKey,
    Key { escape: bool },
    Colon,
    AfterValue,
    Str { escape: bool, collect: bool },
    Scalar { collect: bool },
}

// === impl Json ===

impl Json {
    pub(crate) fn new() -> Json {
        Json {
            state: St::Value,
            stack: Vec::new(),
            buf: Vec::new(),
            value_field: None,
            cache: Cache::default(),
        }
    }

    pub(crate) fn push(
        &mut self,
        data: &[u8],
        policy: &Policy,
        limits: &Limits,
        out: &mut Vec<u8>,
    ) -> Result<(), DocumentError> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                St::Key { escape } => {
                    let (next, end) = self.scan_string(data, i, escape, true, true, out);
                    i = next;
                    match end {
                        End::Open(escape) => self.state = St::Key { escape },
                        End::Closed => {
                            out.push(b'"');
                            self.end_key()?;
                        }
                    }
                    if self.buf.len() > limits.max_record_bytes {
                        return Err(too_long(limits));
                    }
                }
                St::Str { escape, collect } => {
                    let (next, end) = self.scan_string(data, i, escape, collect, !collect, out);
                    i = next;
                    match end {
                        End::Open(escape) => self.state = St::Str { escape, collect },
                        End::Closed => self.end_string(collect, policy, out)?,
                    }
                    if collect && self.buf.len() > limits.max_record_bytes {
                        return Err(too_long(limits));
                    }
                }
                St::Scalar { collect } => {
                    // Scalars are read whole and checked before any of their bytes is
                    // written, so a bare word that is no JSON literal never passes.
                    if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.') {
                        self.buf.push(b);
                        if self.buf.len() > limits.max_record_bytes {
                            return Err(too_long(limits));
                        }
                        i += 1;
                    } else {
                        self.end_scalar(collect, policy, out)?;
                        self.state = St::AfterValue;
                    }
                }
                _ => {
                    self.structural(b, limits, policy, out)?;
                    i += 1;
                }
            }
        }
        Ok(())
    }

    pub(crate) fn finish(
        &mut self,
        policy: &Policy,
        _limits: &Limits,
        out: &mut Vec<u8>,
    ) -> Result<(), DocumentError> {
        if let St::Scalar { collect } = self.state {
            self.end_scalar(collect, policy, out)?;
            self.state = St::AfterValue;
        }
        if !self.stack.is_empty() || !matches!(self.state, St::AfterValue | St::Value) {
            return Err(malformed("the document ends inside a value"));
        }
        Ok(())
    }

    /// Reads string bytes from `data[i..]` up to the closing quote (consumed, not emitted).
    fn scan_string(
        &mut self,
        data: &[u8],
        mut i: usize,
        mut escape: bool,
        collect: bool,
        emit: bool,
        out: &mut Vec<u8>,
    ) -> (usize, End) {
        loop {
            if escape {
                if i == data.len() {
                    return (i, End::Open(true));
                }
                // The escaped byte (a quote or backslash here ends nothing).
                self.take(&data[i..=i], collect, emit, out);
                i += 1;
            }
            let rest = &data[i..];
            match memchr2(b'"', b'\\', rest) {
                None => {
                    self.take(rest, collect, emit, out);
                    return (data.len(), End::Open(false));
                }
                Some(j) if rest[j] == b'\\' => {
                    self.take(&rest[..=j], collect, emit, out);
                    escape = true;
                    i += j + 1;
                }
                Some(j) => {
                    self.take(&rest[..j], collect, emit, out);
                    return (i + j + 1, End::Closed);
                }
            }
        }
    }

    fn take(&mut self, bytes: &[u8], collect: bool, emit: bool, out: &mut Vec<u8>) {
        if collect {
            self.buf.extend_from_slice(bytes);
        }
        if emit {
            out.extend_from_slice(bytes);
        }
    }

    fn structural(
        &mut self,
        b: u8,
        limits: &Limits,
        policy: &Policy,
        out: &mut Vec<u8>,
    ) -> Result<(), DocumentError> {
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            out.push(b);
            return Ok(());
        }
        match self.state {
            St::AfterValue if self.stack.is_empty() => {
                // JSON Lines: the next top-level value.
                self.state = St::Value;
                self.structural(b, limits, policy, out)
            }
            St::ArrayFirst if b == b']' => self.close(b, out),
            St::Value | St::ArrayFirst => self.start_value(b, limits, policy, out),
            St::ObjectFirst if b == b'}' => self.close(b, out),
            St::ObjectFirst | St::ObjectKey if b == b'"' => {
                self.buf.clear();
                out.push(b);
                self.state = St::Key { escape: false };
                Ok(())
            }
            St::Colon if b == b':' => {
                out.push(b);
                self.state = St::Value;
                Ok(())
            }
            St::AfterValue => match (b, self.stack.last().map(|f| f.array)) {
                (b',', Some(true)) => {
                    out.push(b);
                    self.state = St::Value;
                    Ok(())
                }
                (b',', Some(false)) => {
                    out.push(b);
                    self.state = St::ObjectKey;
                    Ok(())
                }
                (b']', Some(true)) | (b'}', Some(false)) => self.close(b, out),
                _ => Err(malformed("unexpected character after a value")),
            },
            _ => Err(malformed("unexpected character")),
        }
    }

    fn start_value(
        &mut self,
        b: u8,
        limits: &Limits,
        policy: &Policy,
        out: &mut Vec<u8>,
    ) -> Result<(), DocumentError> {
        let field = self.stack.last().and_then(|f| f.field);
        let collect = match field {
            Some(Field::OrderId) => true,
            Some(Field::Pii(c)) => policy.plan(c) != Plan::Keep,
            None => false,
        };
        match b {
            b'"' => {
                self.buf.clear();
                self.value_field = field;
                if !collect {
                    out.push(b);
                }
                self.state = St::Str {
                    escape: false,
                    collect,
                };
            }
            b'{' | b'[' => {
                if self.stack.len() >= limits.max_depth {
                    return Err(DocumentError::TooDeep {
                        format: FORMAT,
                        limit: limits.max_depth,
                    });
                }
                let name = self
                    .stack
                    .last()
                    .and_then(|f| f.name.clone().filter(|_| f.array));
                let name = name.or_else(|| self.current_key());
                let array = b == b'[';
                let inherit = match field {
                    Some(Field::Pii(_)) => field,
                    _ => self.stack.last().and_then(|f| f.inherit),
                };
                self.stack.push(Frame {
                    inherit,
                    array,
                    name,
                    // An array's elements are classified like the array's key.
                    field: if array { field } else { None },
                    key: None,
                    order_id: None,
                });
                out.push(b);
                self.state = if array {
                    St::ArrayFirst
                } else {
                    St::ObjectFirst
                };
            }
            b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                self.buf.clear();
                self.value_field = field;
                self.buf.push(b);
                self.state = St::Scalar { collect };
            }
            _ => return Err(malformed("unexpected character where a value belongs")),
        }
        Ok(())
    }

    /// The key of the value about to start, when its container is an object.
    fn current_key(&self) -> Option<Arc<str>> {
        self.stack
            .last()
            .filter(|f| !f.array)
            .and_then(|f| f.key.clone())
    }

    fn close(&mut self, b: u8, out: &mut Vec<u8>) -> Result<(), DocumentError> {
        self.stack.pop();
        out.push(b);
        self.state = St::AfterValue;
        Ok(())
    }

    fn end_key(&mut self) -> Result<(), DocumentError> {
        let key = unescape(&self.buf).ok_or_else(|| malformed("invalid escape in a key"))?;
        let key = decode_text(&key);
        let mut ancestors: [&str; 2] = ["", ""];
        let mut n = 0;
        for frame in self.stack.iter().rev() {
            if let Some(name) = frame.name.as_deref() {
                if n == 0 || ancestors[n - 1] != name {
                    ancestors[n] = name;
                    n += 1;
                }
            }
            if n == 2 {
                break;
            }
        }
        let (name, field) = self.cache.classify_shared(&key, &ancestors[..n]);
        if let Some(top) = self.stack.last_mut() {
            top.field = field.or(top.inherit);
            top.key = Some(name);
        }
        self.state = St::Colon;
        Ok(())
    }

    fn order_id(&self) -> Option<&str> {
        self.stack.iter().rev().find_map(|f| f.order_id.as_deref())
    }

    fn end_string(
        &mut self,
        collect: bool,
        policy: &Policy,
        out: &mut Vec<u8>,
    ) -> Result<(), DocumentError> {
        self.state = St::AfterValue;
        if !collect {
            out.push(b'"');
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let result = self.emit_collected_string(&buf, policy, out);
        self.buf = buf;
        result
    }

    fn emit_collected_string(
        &mut self,
        raw: &[u8],
        policy: &Policy,
        out: &mut Vec<u8>,
    ) -> Result<(), DocumentError> {
        let original = |out: &mut Vec<u8>| {
            out.push(b'"');
            out.extend_from_slice(raw);
            out.push(b'"');
        };
        let value = unescape(raw).ok_or_else(|| malformed("invalid escape in a string"))?;
        let value = decode_text(&value);
        match self.value_field {
            Some(Field::OrderId) => {
                original(out);
                self.set_order_id(value.into_owned());
            }
            Some(Field::Pii(category)) => {
                match policy.apply_str(category, &value, self.order_id()) {
                    Redacted::Keep => original(out),
                    Redacted::Text(t) => write_string(&t, out),
                }
            }
            None => original(out),
        }
        Ok(())
    }

    /// Ends a bare value: exactly `true`, `false`, `null` or a JSON number, anything else
    /// (`nJaneDoe`) is malformed and never emitted.
    fn end_scalar(
        &mut self,
        collect: bool,
        policy: &Policy,
        out: &mut Vec<u8>,
    ) -> Result<(), DocumentError> {
        let numeric = is_number(&self.buf);
        if !numeric && !matches!(self.buf.as_slice(), b"true" | b"false" | b"null") {
            return Err(malformed(
                "a bare value is not true, false, null or a number",
            ));
        }
        if !collect {
            out.extend_from_slice(&self.buf);
            return Ok(());
        }
        // ASCII only (the scalar's bytes are letters, digits and `+-.`).
        let value = String::from_utf8_lossy(&self.buf).into_owned();
        match self.value_field {
            Some(Field::Pii(category)) if numeric => {
                match policy.apply_str(category, &value, self.order_id()) {
                    Redacted::Keep => out.extend_from_slice(&self.buf),
                    Redacted::Text(t) => write_string(&t, out),
                }
            }
            Some(Field::OrderId) if numeric => {
                out.extend_from_slice(&self.buf);
                self.set_order_id(value);
            }
            _ => out.extend_from_slice(&self.buf),
        }
        Ok(())
    }

    fn set_order_id(&mut self, id: String) {
        if id.len() > super::MAX_ORDER_ID_BYTES {
            return;
        }
        if let Some(top) = self.stack.last_mut().filter(|f| !f.array) {
            top.order_id = Some(id);
        }
    }
}

/// Whether `s` is a number by JSON's grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_number(s: &[u8]) -> bool {
    fn digits(s: &[u8]) -> usize {
        s.iter().take_while(|b| b.is_ascii_digit()).count()
    }
    let mut i = usize::from(s.first() == Some(&b'-'));
    match s.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i += digits(&s[i..]),
        _ => return false,
    }
    if s.get(i) == Some(&b'.') {
        let n = digits(&s[i + 1..]);
        if n == 0 {
            return false;
        }
        i += 1 + n;
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let n = digits(&s[i..]);
        if n == 0 {
            return false;
        }
        i += n;
    }
    i == s.len()
}

fn malformed(reason: &'static str) -> DocumentError {
    DocumentError::Malformed {
        format: FORMAT,
        reason,
    }
}

fn too_long(limits: &Limits) -> DocumentError {
    DocumentError::RecordTooLong {
        format: FORMAT,
        limit: limits.max_record_bytes,
    }
}

/// The bytes a JSON string's raw content stands for; `None` for a bad escape.
fn unescape(raw: &[u8]) -> Option<Cow<'_, [u8]>> {
    if memchr::memchr(b'\\', raw).is_none() {
        return Some(Cow::Borrowed(raw));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let esc = *raw.get(i + 1)?;
        i += 2;
        let c = match esc {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = hex4(raw.get(i..i + 4)?)?;
                i += 4;
                if (0xd800..0xdc00).contains(&hi) {
                    if raw.get(i..i + 2)? != b"\\u" {
                        return None;
                    }
                    let lo = hex4(raw.get(i + 2..i + 6)?)?;
                    i += 6;
                    if !(0xdc00..0xe000).contains(&lo) {
                        return None;
                    }
                    char::from_u32(0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00))?
                } else {
                    char::from_u32(hi)?
                }
            }
            _ => return None,
        };
        let mut tmp = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
    }
    Some(Cow::Owned(out))
}

fn hex4(digits: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(digits).ok()?;
    u32::from_str_radix(s, 16).ok()
}

/// Writes `s` as a JSON string literal.
fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c => {
                let mut tmp = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
            }
        }
    }
    out.push(b'"');
}
