//! The format of one audit chain line: how it is sealed (its MAC) and linked (the digest the
//! next line's `prev` names), in the two versions a chain may hold.
//!
//! A line is one JSON object ending in `,"mac":"<64 hex digits>"}`. Call the bytes before
//! `,"mac"` the line's *prefix*.
//!
//! - **v1** (lines without `"v"`, written before version 2): `mac` = HMAC-SHA256(key, prefix
//!   + `}`), and the next line's `prev` = SHA-256 of the whole line. Two passes over the line.
//! - **v2** (`"v":2` right after `seq`): d = SHA-256(prefix); `mac` = HMAC-SHA256(key,
//!   `spgate-audit-v2\n` ‖ d), a fixed 48-byte input; the next line's `prev` = d. One pass over
//!   the line, plus two SHA-256 blocks for the MAC whatever the line's length.
//!
//! **Why `prev` = d need not cover the MAC.** The MAC is a function of d and the key alone. A
//! reader holding the key checks every line's MAC, so for a given key there is exactly one
//! valid `mac` per prefix: changing the MAC alone fails that check, and changing the prefix
//! changes d (SHA-256 is collision resistant), which breaks the next line's `prev` and this
//! line's MAC. Binding d therefore binds the whole line. Someone without the key can write no
//! valid line in either version; someone with the key could rewrite any chain in either
//! version (as before: the key is what makes the log trustworthy). The head and anchor files
//! pin a record by its link digest, so they keep their format.
//!
//! **Versions cannot be swapped.** `"v":2` is inside the prefix: removing it (to check a line
//! as v1) or adding it to a v1 line changes what the MAC covers, and a v1 MAC input (a JSON
//! line, 100 bytes or more) never equals a v2 one (48 bytes starting `spgate-audit-v2`). A
//! version this code does not know is refused, never guessed. Links work across versions: the
//! `prev` of a line names the link digest of the line before it in *that* line's version, so
//! a chain switching from v1 to v2 mid-file (a v1 writer's chain resumed by a v2 writer)
//! verifies, and so would a switch back.

use std::borrow::Cow;

use ring::{digest, hmac};
use serde::Deserialize;

/// The `prev` of an instance's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `,"mac":"` + 64 hex digits + `"}`: how every line ends.
const MAC_SUFFIX_LEN: usize = 8 + 64 + 2;

/// What a v2 MAC covers before the prefix's digest (domain separation from every other MAC
/// made with the audit key).
const V2_TAG: &[u8; 16] = b"spgate-audit-v2\n";

/// The version written by this code: `{"seq":N` is followed by this.
pub(super) const V2_FIELD: &[u8] = b",\"v\":2";

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A line's format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// No `v`: the MAC over the line, `prev` the SHA-256 of the whole line.
    V1,
    /// `"v":2`: the MAC over the prefix's digest, `prev` that digest.
    V2,
}

impl Format {
    /// The format of a line whose `v` field is `v`; `None` for a version this code does not
    /// know.
    pub(super) fn of(v: Option<u64>) -> Option<Format> {
        match v {
            None => Some(Format::V1),
            Some(2) => Some(Format::V2),
            Some(_) => None,
        }
    }
}

/// The fields of a line that verification and readers need.
#[derive(Deserialize)]
pub(super) struct Link<'a> {
    pub(super) seq: u64,
    /// The format version (absent in v1 lines).
    #[serde(default)]
    pub(super) v: Option<u64>,
    #[serde(borrow)]
    pub(super) time: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) instance: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) prev: Cow<'a, str>,
}

impl Link<'_> {
    /// The line's format; `None` for an unknown version.
    pub(super) fn format(&self) -> Option<Format> {
        Format::of(self.v)
    }
}

/// A line's link digest in lowercase hex: what the next line's `prev` must be.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct LinkHex([u8; 64]);

impl std::fmt::Debug for LinkHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl LinkHex {
    fn of(digest: &[u8]) -> LinkHex {
        let mut out = [0u8; 64];
        for (i, b) in digest.iter().take(32).enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        LinkHex(out)
    }

    /// The hex text.
    pub(super) fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Splits a line into its prefix and its MAC tag; `None` when it does not end in a well-formed
/// `,"mac":"<hex>"}`.
fn split(line: &[u8]) -> Option<(&[u8], [u8; 32])> {
    if line.len() < MAC_SUFFIX_LEN + 2 || !line.ends_with(b"\"}") {
        return None;
    }
    let start = line.len() - MAC_SUFFIX_LEN;
    if &line[start..start + 8] != b",\"mac\":\"" {
        return None;
    }
    let mut tag = [0u8; 32];
    for (i, pair) in line[start + 8..line.len() - 2].chunks(2).enumerate() {
        tag[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some((&line[..start], tag))
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn v2_mac(key: &hmac::Key, d: &[u8]) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(V2_TAG);
    ctx.update(d);
    ctx.sign()
}

/// Checks a line's MAC and computes its link digest. `None` when the line has no well-formed
/// MAC suffix; else `(mac valid, link digest)`.
pub(super) fn check(key: &hmac::Key, line: &[u8], format: Format) -> Option<(bool, LinkHex)> {
    let (prefix, tag) = split(line)?;
    match format {
        Format::V1 => {
            let mut ctx = hmac::Context::with_key(key);
            ctx.update(prefix);
            ctx.update(b"}");
            let ok = crate::crypto::constant_time_eq(ctx.sign().as_ref(), &tag);
            let link = digest::digest(&digest::SHA256, line);
            Some((ok, LinkHex::of(link.as_ref())))
        }
        Format::V2 => {
            let d = digest::digest(&digest::SHA256, prefix);
            let ok = crate::crypto::constant_time_eq(v2_mac(key, d.as_ref()).as_ref(), &tag);
            Some((ok, LinkHex::of(d.as_ref())))
        }
    }
}

/// A line's link digest without checking its MAC (finding a pinned record); `None` for a line
/// that is not a record of a known format.
pub(super) fn link_of(line: &[u8]) -> Option<(u64, LinkHex)> {
    let link: Link<'_> = serde_json::from_slice(line).ok()?;
    let hex = match link.format()? {
        Format::V1 => LinkHex::of(digest::digest(&digest::SHA256, line).as_ref()),
        Format::V2 => LinkHex::of(digest::digest(&digest::SHA256, split(line)?.0).as_ref()),
    };
    Some((link.seq, hex))
}

/// Seals the v2 line whose prefix is `out[begin..]` (an unclosed JSON object): appends its
/// MAC, the closing brace and a newline, and returns its link digest.
pub(super) fn seal_v2(key: &hmac::Key, out: &mut Vec<u8>, begin: usize) -> LinkHex {
    let d = digest::digest(&digest::SHA256, &out[begin..]);
    let mac = v2_mac(key, d.as_ref());
    out.extend_from_slice(b",\"mac\":\"");
    out.extend_from_slice(&LinkHex::of(mac.as_ref()).0);
    out.extend_from_slice(b"\"}\n");
    LinkHex::of(d.as_ref())
}

/// Appends the decimal digits of `n`.
pub(super) fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0, 7, 10, 99, 12_345, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn only_known_versions_are_read() {
        assert_eq!(Format::of(None), Some(Format::V1));
        assert_eq!(Format::of(Some(2)), Some(Format::V2));
        assert_eq!(Format::of(Some(1)), None);
        assert_eq!(Format::of(Some(3)), None);
    }

    #[test]
    fn a_sealed_v2_line_checks_and_an_edit_anywhere_does_not() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"k");
        let mut out = format!(
            "{{\"seq\":1,\"v\":2,\"time\":\"t\",\"instance\":\"i\",\"prev\":\"{GENESIS}\",\"x\":1"
        )
        .into_bytes();
        let link = seal_v2(&key, &mut out, 0);
        let line = &out[..out.len() - 1];
        assert_eq!(check(&key, line, Format::V2), Some((true, link)));
        assert_eq!(link_of(line).map(|l| l.1), Some(link));
        // Checked as v1 (its "v" removed by a reader), the MAC does not hold.
        assert_eq!(check(&key, line, Format::V1).map(|c| c.0), Some(false));
        let edited = String::from_utf8(line.to_vec())
            .unwrap()
            .replace("\"x\":1", "\"x\":2");
        assert_eq!(
            check(&key, edited.as_bytes(), Format::V2).map(|c| c.0),
            Some(false)
        );
        let other = hmac::Key::new(hmac::HMAC_SHA256, b"other");
        assert_eq!(check(&other, line, Format::V2).map(|c| c.0), Some(false));
        assert_eq!(check(&key, b"{\"seq\":1}", Format::V2), None);
    }
}
