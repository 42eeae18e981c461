//! XML documents: a streaming tokenizer that copies everything but the text of PII elements and
//! the values of PII attributes.

use std::borrow::Cow;

use memchr::memchr;

use super::fields::{Cache, Field};
use super::{decode_text, DocumentError, Limits, Plan, Policy, Redacted};

const FORMAT: &str = "XML";

/// An XML document being redacted markup by markup.
pub(crate) struct Xml {
    in_markup: bool,
    /// The content of a PII (or order id) element being collected, as it came (escaped text
    /// and whole CDATA sections; comments and processing instructions left out).
    text: Vec<u8>,
    /// The same content decoded: text unescaped, CDATA sections' content, all joined into the
    /// one value the redactor sees.
    value: Vec<u8>,
    /// Where the text not yet added to `value` starts in `text`.
    pending: usize,
    /// The markup being read, from `<` to `>`.
    markup: Vec<u8>,
    /// CSV-like quote state of a start tag's attribute values, up to `scanned`.
    quote: Option<u8>,
    scanned: usize,
    stack: Vec<Elem>,
    cache: Cache,
}

/// One open element.
struct Elem {
    name: std::sync::Arc<str>,
    field: Option<Field>,
    /// The record's order id, once one of its children gave it.
    order_id: Option<String>,
}

// === impl Xml ===

impl Xml {
    pub(crate) fn new() -> Xml {
        Xml {
            in_markup: false,
            text: Vec::new(),
            value: Vec::new(),
            pending: 0,
            markup: Vec::new(),
            quote: None,
            scanned: 0,
            stack: Vec::new(),
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
        let mut rest = data;
        while !rest.is_empty() {
            if !self.in_markup {
                let collect = self.collecting(policy);
                let end = memchr(b'<', rest).unwrap_or(rest.len());
                if collect {
                    self.text.extend_from_slice(&rest[..end]);
                    if self.text.len() > limits.max_record_bytes {
                        return Err(too_long(limits));
                    }
                } else {
                    out.extend_from_slice(&rest[..end]);
                }
                rest = &rest[end..];
                if rest.is_empty() {
                    break;
                }
                if collect {
                    self.decode_pending()?;
                }
                self.in_markup = true;
                self.markup.clear();
                self.quote = None;
                self.scanned = 0;
            }
            // In markup: take bytes up to each `>` until the markup is complete.
            let Some(gt) = memchr(b'>', rest) else {
                self.markup.extend_from_slice(rest);
                if self.markup.len() > limits.max_record_bytes {
                    return Err(too_long(limits));
                }
                return Ok(());
            };
            self.markup.extend_from_slice(&rest[..=gt]);
            rest = &rest[gt + 1..];
            if self.markup.len() > limits.max_record_bytes {
                return Err(too_long(limits));
            }
            if self.markup_complete()? {
                self.in_markup = false;
                let markup = std::mem::take(&mut self.markup);
                let result = self.handle_markup(&markup, policy, limits, out);
                self.markup = markup;
                result?;
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
        if self.in_markup || !self.stack.is_empty() {
            return Err(malformed("the document ends inside an element"));
        }
        self.end_text(policy, out)
    }

    /// Whether text here is collected: inside a PII element the role does not pass, or an order
    /// id element.
    fn collecting(&self, policy: &Policy) -> bool {
        match self.stack.last().and_then(|e| e.field) {
            Some(Field::OrderId) => true,
            Some(Field::Pii(c)) => policy.plan(c) != Plan::Keep,
            None => false,
        }
    }

    fn order_id(&self) -> Option<&str> {
        self.stack.iter().rev().find_map(|e| e.order_id.as_deref())
    }

    /// Adds the collected text read since the last markup to the decoded value.
    fn decode_pending(&mut self) -> Result<(), DocumentError> {
        let piece = unescape(&self.text[self.pending..])?;
        self.value.extend_from_slice(&piece);
        self.pending = self.text.len();
        Ok(())
    }

    /// Emits the collected content of the current element (up to its end tag or first child),
    /// redacted as one value.
    fn end_text(&mut self, policy: &Policy, out: &mut Vec<u8>) -> Result<(), DocumentError> {
        if self.text.is_empty() {
            return Ok(());
        }
        self.decode_pending()?;
        let text = std::mem::take(&mut self.text);
        let value = std::mem::take(&mut self.value);
        let result = self.emit_value(&text, &value, policy, out);
        self.text = text;
        self.text.clear();
        self.value = value;
        self.value.clear();
        self.pending = 0;
        result
    }

    /// Emits the collected content of the current element: `raw` as it came (escaped text and
    /// CDATA sections), `decoded` the value it stands for.
    fn emit_value(
        &mut self,
        raw: &[u8],
        decoded: &[u8],
        policy: &Policy,
        out: &mut Vec<u8>,
    ) -> Result<(), DocumentError> {
        let original = |out: &mut Vec<u8>| out.extend_from_slice(raw);
        if decoded.iter().all(u8::is_ascii_whitespace) {
            original(out);
            return Ok(());
        }
        let value = decode_text(decoded).into_owned();
        match self.stack.last().and_then(|e| e.field) {
            Some(Field::OrderId) => {
                original(out);
                let len = self.stack.len();
                if len >= 2 && value.trim().len() <= super::MAX_ORDER_ID_BYTES {
                    self.stack[len - 2].order_id = Some(value.trim().to_string());
                }
            }
            Some(Field::Pii(category)) => match policy.apply_str(category, &value, self.order_id())
            {
                Redacted::Keep => original(out),
                Redacted::Text(t) => escape_into(&t, false, out),
            },
            None => original(out),
        }
        Ok(())
    }

    /// Whether `markup` (which ends with `>`) is a whole comment, CDATA section, processing
    /// instruction, declaration or tag.
    fn markup_complete(&mut self) -> Result<bool, DocumentError> {
        let m = &self.markup;
        if m.starts_with(b"<!--") {
            return Ok(m.len() >= 7 && m.ends_with(b"-->"));
        }
        if m.starts_with(b"<![CDATA[") {
            return Ok(m.len() >= 12 && m.ends_with(b"]]>"));
        }
        if b"<![CDATA[".starts_with(m) || b"<!--".starts_with(m) {
            return Ok(false);
        }
        if m.starts_with(b"<?") {
            return Ok(m.len() >= 4 && m.ends_with(b"?>"));
        }
        // A tag or declaration: complete at a `>` outside quotes.
        let end = m.len() - 1;
        let mut pos = self.scanned;
        while pos < end {
            let found = match self.quote {
                None => memchr::memchr2(b'"', b'\'', &m[pos..end]),
                Some(q) => memchr(q, &m[pos..end]),
            };
            let Some(j) = found else {
                break;
            };
            self.quote = match self.quote {
                None => Some(m[pos + j]),
                Some(_) => None,
            };
            pos += j + 1;
        }
        self.scanned = end;
        if self.quote.is_some() {
            return Ok(false);
        }
        Ok(true)
    }

    fn handle_markup(
        &mut self,
        m: &[u8],
        policy: &Policy,
        limits: &Limits,
        out: &mut Vec<u8>,
    ) -> Result<(), DocumentError> {
        let collecting = self.collecting(policy);
        if m.starts_with(b"<!--") || m.starts_with(b"<?") {
            // Inside a collected element a comment or processing instruction is dropped: it
            // would carry what it holds past the redactor, and split the value in pieces.
            if !collecting {
                out.extend_from_slice(m);
            }
            return Ok(());
        }
        if let Some(content) = m.strip_prefix(b"<![CDATA[") {
            if collecting {
                let content = &content[..content.len() - 3];
                self.text.extend_from_slice(m);
                self.value.extend_from_slice(content);
                self.pending = self.text.len();
                if self.text.len() > limits.max_record_bytes {
                    return Err(too_long(limits));
                }
                return Ok(());
            }
            out.extend_from_slice(m);
            return Ok(());
        }
        // Any other markup ends the collected content.
        self.end_text(policy, out)?;
        if m.starts_with(b"<!") {
            if memchr(b'[', m).is_some() {
                return Err(malformed(
                    "a DOCTYPE with an internal subset is not supported",
                ));
            }
            out.extend_from_slice(m);
            return Ok(());
        }
        if let Some(rest) = m.strip_prefix(b"</") {
            let name = tag_name(rest);
            match self.stack.pop() {
                Some(open) if open.name.as_bytes() == name => {}
                _ => return Err(malformed("an end tag does not match its start tag")),
            }
            out.extend_from_slice(m);
            return Ok(());
        }
        self.start_tag(m, policy, limits, out)
    }

    fn start_tag(
        &mut self,
        m: &[u8],
        policy: &Policy,
        limits: &Limits,
        out: &mut Vec<u8>,
    ) -> Result<(), DocumentError> {
        let name_bytes = tag_name(&m[1..]);
        if name_bytes.is_empty() {
            return Err(malformed("a tag has no name"));
        }
        let self_closing = m.ends_with(b"/>");
        let parent = self.stack.last().map(|e| e.name.clone());
        let grandparent = self
            .stack
            .len()
            .checked_sub(2)
            .map(|i| self.stack[i].name.clone());
        let ancestors: [&str; 2] = [
            parent.as_deref().unwrap_or(""),
            grandparent.as_deref().unwrap_or(""),
        ];
        let depth = usize::from(parent.is_some()) + usize::from(grandparent.is_some());
        let (name, field) = self
            .cache
            .classify_shared(&String::from_utf8_lossy(name_bytes), &ancestors[..depth]);
        // An element that names nothing itself inside a PII element is PII of the same kind
        // (`<BuyerName><First>...`).
        let field = field.or_else(|| {
            self.stack
                .last()
                .and_then(|e| e.field)
                .filter(|f| matches!(f, Field::Pii(_)))
        });

        // Attributes: name="value" pairs after the element name.
        let attr_ancestors: [&str; 2] = [&name, parent.as_deref().unwrap_or("")];
        let attr_depth = 1 + usize::from(parent.is_some());
        let body_end = m.len() - if self_closing { 2 } else { 1 };
        let mut i = 1 + name_bytes.len();
        let mut copied = 0;
        loop {
            while i < body_end && m[i].is_ascii_whitespace() {
                i += 1;
            }
            if i >= body_end {
                break;
            }
            let attr_start = i;
            while i < body_end && !m[i].is_ascii_whitespace() && m[i] != b'=' {
                i += 1;
            }
            let attr = &m[attr_start..i];
            while i < body_end && m[i].is_ascii_whitespace() {
                i += 1;
            }
            if i >= body_end || m[i] != b'=' {
                return Err(malformed("an attribute has no value"));
            }
            i += 1;
            while i < body_end && m[i].is_ascii_whitespace() {
                i += 1;
            }
            let quote = *m
                .get(i)
                .filter(|q| matches!(q, b'"' | b'\''))
                .ok_or_else(|| malformed("an attribute value is not quoted"))?;
            let value_start = i + 1;
            let value_end = memchr(quote, &m[value_start..body_end])
                .map(|j| value_start + j)
                .ok_or_else(|| malformed("an attribute value is not closed"))?;
            i = value_end + 1;
            let attr_name = String::from_utf8_lossy(attr);
            let Some(Field::Pii(category)) = self
                .cache
                .classify(&attr_name, &attr_ancestors[..attr_depth])
            else {
                continue;
            };
            let raw = &m[value_start..value_end];
            let value = decode_text(&unescape(raw)?).into_owned();
            if let Redacted::Text(t) = policy.apply_str(category, &value, self.order_id()) {
                out.extend_from_slice(&m[copied..value_start]);
                escape_into(&t, true, out);
                copied = value_end;
            }
        }
        out.extend_from_slice(&m[copied..]);
        if !self_closing {
            if self.stack.len() >= limits.max_depth {
                return Err(DocumentError::TooDeep {
                    format: FORMAT,
                    limit: limits.max_depth,
                });
            }
            self.stack.push(Elem {
                name,
                field,
                order_id: None,
            });
        }
        Ok(())
    }
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

/// The name at the start of a tag's bytes (after `<` or `</`).
fn tag_name(rest: &[u8]) -> &[u8] {
    let end = rest
        .iter()
        .position(|&b| b.is_ascii_whitespace() || b == b'>' || b == b'/')
        .unwrap_or(rest.len());
    &rest[..end]
}

/// Resolves the predefined and numeric entities; any other entity is an error.
fn unescape(raw: &[u8]) -> Result<Cow<'_, [u8]>, DocumentError> {
    if memchr(b'&', raw).is_none() {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'&' {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        let semi = memchr(b';', &raw[i..])
            .filter(|&j| j <= 12)
            .ok_or_else(|| malformed("an entity reference is not closed"))?;
        let entity = &raw[i + 1..i + semi];
        let c = match entity {
            b"lt" => '<',
            b"gt" => '>',
            b"amp" => '&',
            b"quot" => '"',
            b"apos" => '\'',
            _ => {
                let code = match entity {
                    [b'#', b'x' | b'X', hex @ ..] => std::str::from_utf8(hex)
                        .ok()
                        .and_then(|h| u32::from_str_radix(h, 16).ok()),
                    [b'#', dec @ ..] => std::str::from_utf8(dec).ok().and_then(|d| d.parse().ok()),
                    _ => None,
                };
                code.and_then(char::from_u32)
                    .ok_or_else(|| malformed("an unknown entity in PII text"))?
            }
        };
        let mut tmp = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
        i += semi + 1;
    }
    Ok(Cow::Owned(out))
}

/// Writes `s` escaped for element text (or an attribute value).
fn escape_into(s: &str, attribute: bool, out: &mut Vec<u8>) {
    for b in s.bytes() {
        match b {
            b'&' => out.extend_from_slice(b"&amp;"),
            b'<' => out.extend_from_slice(b"&lt;"),
            b'>' => out.extend_from_slice(b"&gt;"),
            b'"' if attribute => out.extend_from_slice(b"&quot;"),
            b'\'' if attribute => out.extend_from_slice(b"&apos;"),
            b => out.push(b),
        }
    }
}
