//! The transform over raw bytes: one pass that validates the JSON, copies everything it does
//! not change verbatim, and rewrites only PII. Same rules as the [`super::transform`] walk over a
//! `serde_json::Value` (tests prove both give the same JSON and report), without building a
//! document: an order costs a few microseconds instead of the tens a DOM round trip costs.
//!
//! Differences from the `Value` walk, all on the side of keeping the input as it was: member
//! order, number formatting and string escapes of untouched values are preserved; duplicate keys
//! are all transformed and all kept (the `Value` walk keeps the last), and a record's order id
//! and facts come from the first of duplicate keys. The grammar is RFC 8259
//! with serde_json's extra checks (no lone surrogates, no number outside `f64`); nesting deeper
//! than [`MAX_NESTING`] is [`PiiError::TooDeep`].

use std::borrow::Cow;

use super::keys::Keys;
use super::map::{IdSource, Leaf, Node, OpMap, RecordSpec};
use super::net::{self, Hit};
use super::transform::{apply_value_counted, FieldOut, OrderFacts, PiiError, Policy, Report};
use super::{Action, Category, Role};

/// How deeply arrays and objects may nest (serde_json's default limit).
pub const MAX_NESTING: usize = 128;

type Result<T> = std::result::Result<T, PiiError>;

/// Transforms a response body (see the module docs).
pub(crate) fn apply_stream(
    op: Option<&OpMap>,
    role: &Role,
    body: &[u8],
    params: &[(&str, &str)],
    keys: &Keys<'_>,
    policy: &Policy,
) -> Result<(Vec<u8>, Report)> {
    if body.len() > policy.max_bytes {
        return Err(PiiError::TooLarge {
            size: body.len(),
            limit: policy.max_bytes,
        });
    }
    let mut s = Stream {
        src: body,
        pos: 0,
        out: Vec::with_capacity(body.len() + body.len() / 8),
        role,
        keys,
        net_action: policy.safety_net,
        records: op.map_or(&[], |o| o.records.as_slice()),
        params,
        report: Report {
            mapped: op.is_some(),
            ..Report::default()
        },
    };
    let result = s.ws().and_then(|()| s.value(op.map(|o| &o.tree), None, 0));
    let result = result.and_then(|()| {
        s.ws()?;
        if s.pos == s.src.len() {
            Ok(())
        } else {
            Err(s.syntax())
        }
    });
    match result {
        Ok(()) => Ok((s.out, s.report)),
        Err(PiiError::NotJson { .. }) => Err(s.syntax()),
        Err(e) => Err(e),
    }
}

struct Stream<'a> {
    src: &'a [u8],
    pos: usize,
    out: Vec<u8>,
    role: &'a Role,
    keys: &'a Keys<'a>,
    net_action: Action,
    records: &'a [RecordSpec],
    params: &'a [(&'a str, &'a str)],
    report: Report,
}

/// A string token: content bounds (inside the quotes), whether it has escapes, and the content
/// when it has none (validated once).
#[derive(Clone, Copy)]
struct Str<'a> {
    start: usize,
    end: usize,
    escaped: bool,
    text: Option<&'a str>,
}

// === impl Stream ===

impl<'a> Stream<'a> {
    /// A syntax error at the current position (line and column computed only here).
    fn syntax(&self) -> PiiError {
        let upto = &self.src[..self.pos.min(self.src.len())];
        let line = upto.iter().filter(|&&b| b == b'\n').count() + 1;
        // 1-based column of the offending byte, as serde_json reports it.
        let column = upto.iter().rev().take_while(|&&b| b != b'\n').count()
            + usize::from(self.pos < self.src.len());
        PiiError::NotJson { line, column }
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn ws(&mut self) -> Result<()> {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
        Ok(())
    }

    fn expect(&mut self, byte: u8) -> Result<()> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.syntax())
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<()> {
        if self.src[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.syntax())
        }
    }

    /// Scans a string token (the cursor on its opening quote), validating escapes and UTF-8.
    fn string(&mut self) -> Result<Str<'a>> {
        self.expect(b'"')?;
        let start = self.pos;
        let mut escaped = false;
        loop {
            let rest = &self.src[self.pos..];
            // The quote or backslash ends the run (SIMD search); a control byte before it is
            // an error (a second, vectorized pass over the same run): every string of every
            // answer goes through here, a byte-at-a-time test of three conditions cost more
            // than the rest of the safety net.
            let i = memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
            // No early exit, so that it vectorizes; where the byte is matters only on error.
            if rest[..i].iter().fold(false, |seen, &b| seen | (b < 0x20)) {
                self.pos += rest[..i].iter().position(|&b| b < 0x20).unwrap_or(i);
                return Err(self.syntax());
            }
            if i == rest.len() {
                self.pos = self.src.len();
                return Err(self.syntax());
            }
            self.pos += i;
            match self.src[self.pos] {
                b'"' => {
                    let end = self.pos;
                    self.pos += 1;
                    let src: &'a [u8] = self.src;
                    let text = if escaped {
                        None
                    } else {
                        Some(std::str::from_utf8(&src[start..end]).map_err(|_| self.syntax())?)
                    };
                    let token = Str {
                        start,
                        end,
                        escaped,
                        text,
                    };
                    if escaped {
                        // Validates escapes, surrogates and UTF-8.
                        self.decode(token)?;
                    }
                    return Ok(token);
                }
                b'\\' => {
                    escaped = true;
                    self.pos += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' | b'u') => {
                            self.pos += 1;
                        }
                        _ => return Err(self.syntax()),
                    }
                }
                _ => return Err(self.syntax()),
            }
        }
    }

    /// The content of a string token.
    fn decode(&self, token: Str<'a>) -> Result<Cow<'a, str>> {
        if let Some(text) = token.text {
            return Ok(Cow::Borrowed(text));
        }
        let raw = &self.src[token.start..token.end];
        if !token.escaped {
            return std::str::from_utf8(raw)
                .map(Cow::Borrowed)
                .map_err(|_| self.syntax());
        }
        let mut out: Vec<u8> = Vec::with_capacity(raw.len());
        let mut i = 0;
        let bad = || PiiError::NotJson { line: 0, column: 0 };
        while i < raw.len() {
            let b = raw[i];
            if b != b'\\' {
                out.push(b);
                i += 1;
                continue;
            }
            let e = *raw.get(i + 1).ok_or_else(bad)?;
            i += 2;
            let c = match e {
                b'"' => '"',
                b'\\' => '\\',
                b'/' => '/',
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                b'u' => {
                    let hi = hex4(raw.get(i..i + 4)).ok_or_else(bad)?;
                    i += 4;
                    let code = if (0xD800..0xDC00).contains(&hi) {
                        if raw.get(i..i + 2) != Some(b"\\u") {
                            return Err(bad());
                        }
                        let lo = hex4(raw.get(i + 2..i + 6)).ok_or_else(bad)?;
                        if !(0xDC00..0xE000).contains(&lo) {
                            return Err(bad());
                        }
                        i += 6;
                        0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                    } else if (0xDC00..0xE000).contains(&hi) {
                        return Err(bad());
                    } else {
                        hi
                    };
                    char::from_u32(code).ok_or_else(bad)?
                }
                _ => return Err(bad()),
            };
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
        String::from_utf8(out).map(Cow::Owned).map_err(|_| bad())
    }

    /// Scans a number token, validating the grammar and that it fits an `f64`.
    fn number(&mut self) -> Result<()> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                while let Some(b'0'..=b'9') = self.peek() {
                    self.pos += 1;
                }
            }
            _ => return Err(self.syntax()),
        }
        let mut float = false;
        if self.peek() == Some(b'.') {
            float = true;
            self.pos += 1;
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            float = true;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.digits()?;
        }
        let text = std::str::from_utf8(&self.src[start..self.pos]).map_err(|_| self.syntax())?;
        let fits = if float {
            text.parse::<f64>().is_ok_and(f64::is_finite)
        } else {
            text.parse::<i64>().is_ok()
                || text.parse::<u64>().is_ok()
                || text.parse::<f64>().is_ok_and(f64::is_finite)
        };
        if fits {
            Ok(())
        } else {
            Err(self.syntax())
        }
    }

    fn digits(&mut self) -> Result<()> {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        if self.pos == start {
            Err(self.syntax())
        } else {
            Ok(())
        }
    }

    /// Scans any value without emitting it; returns its first byte.
    fn skip(&mut self, depth: usize) -> Result<u8> {
        if depth > MAX_NESTING {
            return Err(PiiError::TooDeep);
        }
        let first = self.peek().ok_or_else(|| self.syntax())?;
        match first {
            b'{' => {
                self.pos += 1;
                self.ws()?;
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    return Ok(first);
                }
                loop {
                    self.ws()?;
                    self.string()?;
                    self.ws()?;
                    self.expect(b':')?;
                    self.ws()?;
                    self.skip(depth + 1)?;
                    self.ws()?;
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {
                            self.pos += 1;
                            return Ok(first);
                        }
                        _ => return Err(self.syntax()),
                    }
                }
            }
            b'[' => {
                self.pos += 1;
                self.ws()?;
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    return Ok(first);
                }
                loop {
                    self.ws()?;
                    self.skip(depth + 1)?;
                    self.ws()?;
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(first);
                        }
                        _ => return Err(self.syntax()),
                    }
                }
            }
            b'"' => self.string().map(|_| first),
            b't' => self.literal(b"true").map(|()| first),
            b'f' => self.literal(b"false").map(|()| first),
            b'n' => self.literal(b"null").map(|()| first),
            b'-' | b'0'..=b'9' => self.number().map(|()| first),
            _ => Err(self.syntax()),
        }
    }

    /// Copies a value verbatim (after validating it).
    fn copy(&mut self, depth: usize) -> Result<()> {
        let start = self.pos;
        self.skip(depth)?;
        self.out.extend_from_slice(&self.src[start..self.pos]);
        Ok(())
    }

    /// A value outside any PII path (cursor on its first byte).
    fn value(&mut self, node: Option<&Node>, order: Option<&str>, depth: usize) -> Result<()> {
        if depth > MAX_NESTING {
            return Err(PiiError::TooDeep);
        }
        // A record root that is not an object has no order id (as in the `Value` walk).
        let order = match self.peek() {
            Some(b'{') => order,
            _ if node.is_some_and(|n| n.record.is_some()) => None,
            _ => order,
        };
        match self.peek() {
            Some(b'{') => self.object(node, order, depth),
            Some(b'[') => {
                // Arrays where the map expects none are transparent.
                let element = node.map(|n| n.items.as_deref().unwrap_or(n));
                self.pos += 1;
                self.out.push(b'[');
                self.ws()?;
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    self.out.push(b']');
                    return Ok(());
                }
                loop {
                    self.ws()?;
                    self.value(element, order, depth + 1)?;
                    self.ws()?;
                    match self.peek() {
                        Some(b',') => {
                            self.pos += 1;
                            self.out.push(b',');
                        }
                        Some(b']') => {
                            self.pos += 1;
                            self.out.push(b']');
                            return Ok(());
                        }
                        _ => return Err(self.syntax()),
                    }
                }
            }
            Some(b'"') => {
                let start = self.pos;
                let token = self.string()?;
                if node.is_some_and(|n| n.pii_below) {
                    // A string where the model has an object holding PII: drop it.
                    if token.end > token.start {
                        self.report.fallbacks += 1;
                    }
                    self.out.extend_from_slice(b"\"\"");
                } else {
                    self.net(token, start, order)?;
                }
                Ok(())
            }
            Some(_) => self.copy(depth),
            None => Err(self.syntax()),
        }
    }

    fn object(&mut self, node: Option<&Node>, order: Option<&str>, depth: usize) -> Result<()> {
        // A single object where the map expects an array of them: walk it as an element.
        let node = match node {
            Some(n) if n.members.is_empty() && n.record.is_none() => n.items.as_deref().or(Some(n)),
            _ => node,
        };
        let record_id;
        let mut order = order;
        if let Some(index) = node.and_then(|n| n.record) {
            let facts = self
                .records
                .get(index)
                .and_then(|spec| self.record_facts(spec, self.pos));
            record_id = facts.as_ref().map(|f| f.order_id.clone());
            order = record_id.as_deref();
            self.report.orders.extend(facts);
        }
        self.expect(b'{')?;
        self.out.push(b'{');
        let mut first = true;
        self.ws()?;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.out.push(b'}');
            return Ok(());
        }
        loop {
            self.ws()?;
            let mark = self.out.len();
            if !first {
                self.out.push(b',');
            }
            let key_start = self.pos;
            let key = self.string()?;
            self.out.extend_from_slice(&self.src[key_start..self.pos]);
            self.ws()?;
            self.expect(b':')?;
            self.out.push(b':');
            self.ws()?;
            let child = match node {
                Some(n) => {
                    let name = self.decode(key)?;
                    n.member(&name)
                }
                None => None,
            };
            let keep = match child.and_then(|n| n.leaf) {
                Some(leaf) => self.leaf(leaf, order, depth + 1)?,
                None => {
                    self.value(child, order, depth + 1)?;
                    true
                }
            };
            if keep {
                first = false;
            } else {
                self.out.truncate(mark);
            }
            self.ws()?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    self.out.push(b'}');
                    return Ok(());
                }
                _ => return Err(self.syntax()),
            }
        }
    }

    /// A value at a PII path; returns whether its key stays.
    fn leaf(&mut self, leaf: Leaf, order: Option<&str>, depth: usize) -> Result<bool> {
        if self.src[self.pos..].starts_with(b"null") {
            self.pos += 4;
            self.out.extend_from_slice(b"null");
            return Ok(true);
        }
        let action = self.role.action(leaf.category);
        self.report.returned.insert(leaf.category, action);
        self.report.fields += 1;
        let mark = self.out.len();
        let first = self.peek().ok_or_else(|| self.syntax())?;
        let keep = match action {
            Action::Pass => {
                self.copy(depth)?;
                true
            }
            Action::Drop => {
                self.skip(depth)?;
                false
            }
            Action::Mask | Action::Pseudonymize | Action::Encrypt => {
                self.rewrite(leaf.category, action, order, depth)?
            }
        };
        if keep {
            return Ok(true);
        }
        self.out.truncate(mark);
        if leaf.required {
            self.out.extend_from_slice(empty_like(first));
            return Ok(true);
        }
        Ok(false)
    }

    /// Rewrites every string of a value (containers keep their shape); returns false when the
    /// value itself must go (nothing of it emitted then).
    fn rewrite(
        &mut self,
        category: Category,
        action: Action,
        order: Option<&str>,
        depth: usize,
    ) -> Result<bool> {
        if depth > MAX_NESTING {
            return Err(PiiError::TooDeep);
        }
        match self.peek() {
            Some(b'"') => {
                let token = self.string()?;
                let value = self.decode(token)?;
                let (out, fell_back) =
                    apply_value_counted(category, action, &value, order, self.keys);
                self.report.fallbacks += usize::from(fell_back);
                match out {
                    FieldOut::Keep => {
                        self.out.push(b'"');
                        self.out
                            .extend_from_slice(&self.src[token.start..token.end]);
                        self.out.push(b'"');
                        Ok(true)
                    }
                    FieldOut::Replace(new) => {
                        write_string(&mut self.out, &new);
                        Ok(true)
                    }
                    FieldOut::Drop => Ok(false),
                }
            }
            Some(b'n') => {
                self.copy(depth)?;
                Ok(true)
            }
            Some(b'[') => {
                self.pos += 1;
                self.out.push(b'[');
                self.ws()?;
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    self.out.push(b']');
                    return Ok(true);
                }
                loop {
                    self.ws()?;
                    self.rewrite_member(category, action, order, depth)?;
                    self.ws()?;
                    match self.peek() {
                        Some(b',') => {
                            self.pos += 1;
                            self.out.push(b',');
                        }
                        Some(b']') => {
                            self.pos += 1;
                            self.out.push(b']');
                            return Ok(true);
                        }
                        _ => return Err(self.syntax()),
                    }
                }
            }
            Some(b'{') => {
                self.pos += 1;
                self.out.push(b'{');
                self.ws()?;
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    self.out.push(b'}');
                    return Ok(true);
                }
                loop {
                    self.ws()?;
                    let key_start = self.pos;
                    self.string()?;
                    self.out.extend_from_slice(&self.src[key_start..self.pos]);
                    self.ws()?;
                    self.expect(b':')?;
                    self.out.push(b':');
                    self.ws()?;
                    self.rewrite_member(category, action, order, depth)?;
                    self.ws()?;
                    match self.peek() {
                        Some(b',') => {
                            self.pos += 1;
                            self.out.push(b',');
                        }
                        Some(b'}') => {
                            self.pos += 1;
                            self.out.push(b'}');
                            return Ok(true);
                        }
                        _ => return Err(self.syntax()),
                    }
                }
            }
            Some(_) => {
                // Numbers and booleans cannot be rewritten in place.
                self.skip(depth)?;
                self.report.fallbacks += 1;
                Ok(false)
            }
            None => Err(self.syntax()),
        }
    }

    /// A member or element under a rewritten container: what must go becomes its type's empty
    /// value.
    fn rewrite_member(
        &mut self,
        category: Category,
        action: Action,
        order: Option<&str>,
        depth: usize,
    ) -> Result<()> {
        let first = self.peek().ok_or_else(|| self.syntax())?;
        let mark = self.out.len();
        if !self.rewrite(category, action, order, depth + 1)? {
            self.out.truncate(mark);
            self.out.extend_from_slice(empty_like(first));
        }
        Ok(())
    }

    /// The safety net for a string outside the map (`start` is its opening quote).
    fn net(&mut self, token: Str<'a>, start: usize, order: Option<&str>) -> Result<()> {
        let value = self.decode(token)?;
        let hit = match net::scan(&value) {
            None => {
                self.out.extend_from_slice(&self.src[start..self.pos]);
                return Ok(());
            }
            Some(hit) => hit,
        };
        let category = match hit {
            Hit::Email => {
                self.report.net_hits.email += 1;
                Category::Email
            }
            Hit::Phone => {
                self.report.net_hits.phone += 1;
                Category::Phone
            }
        };
        let (out, fell_back) =
            apply_value_counted(category, self.net_action, &value, order, self.keys);
        self.report.fallbacks += usize::from(fell_back);
        match out {
            FieldOut::Keep => self.out.extend_from_slice(&self.src[start..self.pos]),
            FieldOut::Replace(new) => write_string(&mut self.out, &new),
            FieldOut::Drop => self.out.extend_from_slice(b"\"\""),
        }
        Ok(())
    }

    /// A record's facts, read ahead from the object at `at` in one pass over its members (read
    /// only, without validation: a malformed record yields what could be read, and the main
    /// pass reports the syntax error).
    fn record_facts(&self, spec: &RecordSpec, at: usize) -> Option<OrderFacts> {
        if self.src.get(at) != Some(&b'{') {
            return None;
        }
        let mut wanted: Vec<&str> = Vec::with_capacity(6);
        let paths = spec
            .id
            .iter()
            .filter_map(|s| match s {
                IdSource::Field(p) => Some(*p),
                IdSource::Param(_) => None,
            })
            .chain(spec.status)
            .chain(spec.earliest_delivery)
            .chain(spec.latest_delivery)
            .chain(spec.delivered.map(|(p, _)| p));
        for path in paths {
            wanted.push(head_name(path));
        }
        wanted.sort_unstable();
        wanted.dedup();
        // Where each wanted member's value starts. The scan stops once all are found, so with
        // duplicate keys the first wins here (serde_json keeps the last).
        let mut tops: Vec<(&str, usize)> = Vec::with_capacity(wanted.len());
        self.members(at, &mut |name, pos| {
            if let Some(w) = wanted.iter().find(|w| **w == name) {
                if !tops.iter().any(|(n, _)| n == w) {
                    tops.push((w, pos));
                }
            }
            tops.len() < wanted.len()
        });
        let each = |path: &str, f: &mut dyn FnMut(usize)| {
            let (head, rest) = path.split_once('.').unwrap_or((path, ""));
            let items = head.ends_with("[]");
            if let Some((_, pos)) = tops.iter().find(|(n, _)| *n == head_name(head)) {
                self.descend(*pos, items, rest, 0, f);
            }
        };
        let scalar = |path: &str| -> Option<String> {
            let mut found = None;
            each(path, &mut |pos| {
                if found.is_none() {
                    found = self.scalar(pos);
                }
            });
            found
        };
        let order_id = spec.id.iter().find_map(|source| match source {
            IdSource::Field(path) => scalar(path),
            IdSource::Param(name) => self
                .params
                .iter()
                .find(|(n, v)| n == name && !v.is_empty())
                .map(|(_, v)| (*v).to_string()),
        })?;
        let delivered = spec.delivered.is_some_and(|(path, expected)| {
            let mut any = false;
            let mut all = true;
            each(path, &mut |pos| {
                any = true;
                all &= self.string_at(pos).as_deref() == Some(expected);
            });
            any && all
        });
        Some(OrderFacts {
            order_id,
            status: spec.status.and_then(scalar),
            earliest_delivery: spec.earliest_delivery.and_then(scalar),
            latest_delivery: spec.latest_delivery.and_then(scalar),
            delivered,
        })
    }

    /// Calls `f(name, value position)` for the members of the object at `pos` (look-ahead),
    /// until `f` returns false.
    fn members(&self, pos: usize, f: &mut dyn FnMut(&str, usize) -> bool) {
        let src = self.src;
        let mut i = pos + 1;
        loop {
            i = skip_ws(src, i);
            if src.get(i) != Some(&b'"') {
                return;
            }
            let Some(key_end) = skip_fast(src, i) else {
                return;
            };
            let key = Str {
                start: i + 1,
                end: key_end - 1,
                escaped: src[i + 1..key_end - 1].contains(&b'\\'),
                text: None,
            };
            i = skip_ws(src, key_end);
            if src.get(i) != Some(&b':') {
                return;
            }
            i = skip_ws(src, i + 1);
            if let Ok(name) = self.decode(key) {
                if !f(&name, i) {
                    return;
                }
            }
            let Some(end) = skip_fast(src, i) else {
                return;
            };
            i = skip_ws(src, end);
            if src.get(i) != Some(&b',') {
                return;
            }
            i += 1;
        }
    }

    /// Calls `f` with the position of every value at `rest` below the value at `pos` (whose
    /// elements are meant when `items`).
    fn descend(&self, pos: usize, items: bool, rest: &str, depth: usize, f: &mut dyn FnMut(usize)) {
        if depth > MAX_NESTING {
            return;
        }
        if items {
            let src = self.src;
            if src.get(pos) != Some(&b'[') {
                return;
            }
            let mut i = skip_ws(src, pos + 1);
            while i < src.len() && src[i] != b']' {
                self.descend(i, false, rest, depth + 1, f);
                let Some(end) = skip_fast(src, i) else {
                    return;
                };
                i = skip_ws(src, end);
                if src.get(i) != Some(&b',') {
                    return;
                }
                i = skip_ws(src, i + 1);
            }
            return;
        }
        if rest.is_empty() {
            f(pos);
            return;
        }
        if self.src.get(pos) != Some(&b'{') {
            return;
        }
        let (head, tail) = rest.split_once('.').unwrap_or((rest, ""));
        let name = head_name(head);
        let mut found = None;
        self.members(pos, &mut |n, at| {
            if n == name {
                found = Some(at);
            }
            found.is_none()
        });
        if let Some(at) = found {
            self.descend(at, head.ends_with("[]"), tail, depth + 1, f);
        }
    }

    /// A reader positioned at `pos` (for look-ahead; shares no output).
    fn reader(&self, pos: usize) -> Stream<'a> {
        Stream {
            src: self.src,
            pos,
            out: Vec::new(),
            role: self.role,
            keys: self.keys,
            net_action: self.net_action,
            records: self.records,
            params: self.params,
            report: Report::default(),
        }
    }

    /// The string (non-empty) or number at `pos`, as the `Value` walk reads it.
    fn scalar(&self, pos: usize) -> Option<String> {
        let mut r = self.reader(pos);
        match r.peek()? {
            b'"' => {
                let token = r.string().ok()?;
                let s = r.decode(token).ok()?;
                (!s.is_empty()).then(|| s.into_owned())
            }
            b'-' | b'0'..=b'9' => {
                r.number().ok()?;
                let text = std::str::from_utf8(&self.src[pos..r.pos]).ok()?;
                // Print like serde_json's Number does.
                serde_json::from_str::<serde_json::Number>(text)
                    .ok()
                    .map(|n| n.to_string())
            }
            _ => None,
        }
    }

    fn string_at(&self, pos: usize) -> Option<String> {
        let mut r = self.reader(pos);
        if r.peek()? != b'"' {
            return None;
        }
        let token = r.string().ok()?;
        r.decode(token).ok().map(Cow::into_owned)
    }
}

/// A path segment's member name (`name[]` -> `name`).
fn head_name(path: &str) -> &str {
    let head = path.split_once('.').map_or(path, |(h, _)| h);
    head.strip_suffix("[]").unwrap_or(head)
}

fn skip_ws(src: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = src.get(i) {
        i += 1;
    }
    i
}

/// The end of the value at `i`, found without validating it (look-ahead only).
fn skip_fast(src: &[u8], mut i: usize) -> Option<usize> {
    let string_end = |mut i: usize| -> Option<usize> {
        // `i` is just after the opening quote.
        loop {
            let off = src
                .get(i..)?
                .iter()
                .position(|&b| b == b'"' || b == b'\\')?;
            i += off;
            if src[i] == b'\\' {
                i += 2;
            } else {
                return Some(i + 1);
            }
        }
    };
    match *src.get(i)? {
        b'"' => string_end(i + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            loop {
                match *src.get(i)? {
                    b'"' => {
                        i = string_end(i + 1)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let off = src[i..]
                .iter()
                .position(|&b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(src.len() - i);
            Some(i + off)
        }
    }
}

/// The JSON text of a type's empty value, by the value's first byte.
fn empty_like(first: u8) -> &'static [u8] {
    match first {
        b'"' => b"\"\"",
        b'{' => b"{}",
        b'[' => b"[]",
        b't' | b'f' => b"false",
        b'n' => b"null",
        _ => b"0",
    }
}

fn hex4(bytes: Option<&[u8]>) -> Option<u32> {
    let bytes = bytes?;
    let text = std::str::from_utf8(bytes).ok()?;
    if text.len() != 4 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

/// Writes a JSON string literal.
fn write_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let mut from = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.extend_from_slice(&s.as_bytes()[from..i]);
        match escape {
            Some(e) => out.extend_from_slice(e),
            None => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
        from = i + 1;
    }
    out.extend_from_slice(&s.as_bytes()[from..]);
    out.push(b'"');
}
