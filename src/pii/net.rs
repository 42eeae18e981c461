//! The safety net: finds e-mail addresses and phone numbers in string values the field map does
//! not cover (a model change, a free-text field), without touching ordinary data.
//!
//! The rules err towards ordinary data surviving: Amazon order ids (`902-1234567-1234567`),
//! ASINs, SKUs, ISO dates and times, amounts, postal codes, tracking numbers and UUIDs are not
//! phone numbers. A phone number is a run of digits and separators (space, `-`, `.`, `(`, `)`)
//! that stands alone (not glued to letters, `-`, `_` or `/`), and either starts with `+` and has
//! 8-15 digits, or has 10-15 digits in 2-6 groups, all but the first of at least two digits, and
//! does not look like a date or a decimal number. Bare digit strings are never phone numbers
//! (they are ids, timestamps and barcodes far more often). An e-mail address is
//! `local@domain.tld` with a top-level domain of two or more letters.

/// What the net found in a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hit {
    /// An e-mail address.
    Email,
    /// A phone number.
    Phone,
}

/// The first kind of PII found in `value` (e-mail is checked first), if any.
pub fn scan(value: &str) -> Option<Hit> {
    let bytes = value.as_bytes();
    if contains_email(bytes) {
        Some(Hit::Email)
    } else if contains_phone(bytes) {
        Some(Hit::Phone)
    } else {
        None
    }
}

/// Whether the value holds an e-mail address.
pub fn contains_email(s: &[u8]) -> bool {
    let mut from = 0;
    while let Some(offset) = memchr::memchr(b'@', &s[from..]) {
        let at = from + offset;
        if email_at(s, at) {
            return true;
        }
        from = at + 1;
    }
    false
}

fn is_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn is_domain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')
}

fn email_at(s: &[u8], at: usize) -> bool {
    let local_len = s[..at].iter().rev().take_while(|&&b| is_local(b)).count();
    if local_len == 0 || s[at - local_len] == b'.' || s[at - 1] == b'.' {
        return false;
    }
    let domain_len = s[at + 1..].iter().take_while(|&&b| is_domain(b)).count();
    let mut domain = &s[at + 1..at + 1 + domain_len];
    while let [rest @ .., b'.'] = domain {
        domain = rest;
    }
    let mut labels = domain.split(|&b| b == b'.');
    let Some(first) = labels.next() else {
        return false;
    };
    let mut last = first;
    let mut count = 1;
    for label in labels {
        if label.is_empty() {
            return false;
        }
        last = label;
        count += 1;
    }
    count >= 2
        && !first.is_empty()
        && first[0] != b'-'
        && last.len() >= 2
        && last.iter().all(u8::is_ascii_alphabetic)
}

/// Whether the value holds a phone number (see the module docs for the rules).
pub fn contains_phone(s: &[u8]) -> bool {
    if !has_digits(s, MIN_PHONE_DIGITS) {
        return false;
    }
    let n = s.len();
    let mut i = 0;
    while i < n {
        // Skip to the next byte that may start a run: `+`, `(` or a digit not glued to what
        // precedes it (one table lookup per byte: every string of every answer meets this).
        let mut prev = if i == 0 {
            0
        } else {
            CLASS[usize::from(s[i - 1])]
        };
        while i < n {
            let class = CLASS[usize::from(s[i])];
            if class & START != 0 && prev & GLUED_BEFORE == 0 {
                break;
            }
            prev = class;
            i += 1;
        }
        if i == n {
            break;
        }
        match phone_run(s, i) {
            Ok(()) => return true,
            Err(next) => i = next,
        }
    }
    false
}

/// The run of digits and separators starting at `i` (a byte that may start one): `Ok` when it
/// reads as a phone number, else `Err` with where the scan goes on.
fn phone_run(s: &[u8], i: usize) -> Result<(), usize> {
    let n = s.len();
    let mut j = i + 1;
    while j < n && in_run(s[j]) && !(s[j] == b' ' && s[j - 1] == b' ') && s[j] != b'+' {
        j += 1;
    }
    let mut end = j;
    while end > i && matches!(s[end - 1], b' ' | b'-' | b'.' | b'(' | b')') {
        end -= 1;
    }
    let glued_after = j < n && glued_after(s[j]) && s[j - 1] != b' ';
    if !glued_after && end > i && is_phone(&s[i..end]) {
        Ok(())
    } else {
        Err(j.max(i + 1))
    }
}

/// The fewest digits of a phone number (`+` and 8 digits; 10 without the `+`).
const MIN_PHONE_DIGITS: usize = 8;

/// Whether `s` holds at least `n` ASCII digits: most values hold fewer than a phone number
/// needs, and counting them (vectorized, 64 bytes at a time) is far cheaper than the scan.
fn has_digits(s: &[u8], n: usize) -> bool {
    let mut count = 0;
    for chunk in s.chunks(64) {
        // A u8 sum over at most 64 bytes cannot overflow; no early exit inside, so it vectorizes.
        count += usize::from(
            chunk
                .iter()
                .fold(0u8, |c, &b| c + u8::from(b.wrapping_sub(b'0') < 10)),
        );
        if count >= n {
            return true;
        }
    }
    false
}

/// [`CLASS`] bit: a byte that may start a phone number's run.
const START: u8 = 1;
/// [`CLASS`] bit: [`glued_before`].
const GLUED_BEFORE: u8 = 2;

/// Per byte value: [`START`] and [`GLUED_BEFORE`].
static CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        if byte.is_ascii_digit() || byte == b'+' || byte == b'(' {
            table[b] |= START;
        }
        if glued_before(byte) {
            table[b] |= GLUED_BEFORE;
        }
        b += 1;
    }
    table
};

/// A character right before a run that makes it part of a bigger token (an id, a SKU, a path).
const fn glued_before(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'/' | b'.' | b'+' | b'@' | b'#' | b'=')
}

/// A character right after a run that makes it part of a bigger token.
fn glued_after(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'/' | b'@')
}

fn in_run(b: u8) -> bool {
    b.is_ascii_digit() || matches!(b, b' ' | b'-' | b'.' | b'(' | b')' | b'+')
}

/// Whether a trimmed run of digits and separators reads as a phone number.
fn is_phone(run: &[u8]) -> bool {
    let plus = run[0] == b'+';
    let body = if plus { &run[1..] } else { run };
    // Digit groups and the separators between them.
    let mut groups: [usize; 8] = [0; 8];
    let mut seps: [u8; 8] = [0; 8];
    let mut count = 0;
    let mut digits = 0;
    let mut in_group = false;
    for &b in body {
        if b.is_ascii_digit() {
            if !in_group {
                if count == groups.len() {
                    return false;
                }
                count += 1;
                in_group = true;
            }
            groups[count - 1] += 1;
            digits += 1;
        } else {
            if b == b'+' {
                return false;
            }
            if in_group && count <= seps.len() {
                seps[count - 1] = b;
            }
            in_group = false;
        }
    }
    let groups = &groups[..count];
    if count == 0 || count > 6 {
        return false;
    }
    if plus {
        return (MIN_PHONE_DIGITS..=15).contains(&digits) && groups[1..].iter().all(|&g| g >= 2);
    }
    if !(10..=15).contains(&digits) || count < 2 || groups[1..].iter().any(|&g| g < 2) {
        return false;
    }
    if groups.iter().any(|&g| g > 8) {
        return false;
    }
    // Dates: 2024-01-02 (10:30), 02.01.2024, 2024/01/02.
    let dateish = |k: usize| matches!(seps[k], b'-' | b'.' | b'/');
    if count >= 3 && dateish(0) && dateish(1) {
        let (a, b, c) = (groups[0], groups[1], groups[2]);
        if (a == 4 && b <= 2 && c <= 2) || (a <= 2 && b <= 2 && c == 4) {
            return false;
        }
    }
    // A decimal number: one dot and nothing else.
    let dots = body.iter().filter(|&&b| b == b'.').count();
    let other_seps = body
        .iter()
        .filter(|&&b| matches!(b, b' ' | b'-' | b'(' | b')'))
        .count();
    !(dots == 1 && other_seps == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The scan as first written (every byte tested, no prefilter): the fast one must find
    /// exactly what this one finds.
    fn contains_phone_reference(s: &[u8]) -> bool {
        let mut i = 0;
        while i < s.len() {
            let b = s[i];
            let startable = b.is_ascii_digit() || b == b'+' || b == b'(';
            if !startable || (i > 0 && glued_before(s[i - 1])) {
                i += 1;
                continue;
            }
            match phone_run(s, i) {
                Ok(()) => return true,
                Err(next) => i = next,
            }
        }
        false
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn the_fast_phone_scan_finds_what_the_plain_scan_finds(
            s in "[0-9 ()+.\\-a-zA-Z_/@#=,:]{0,80}"
        ) {
            prop_assert_eq!(contains_phone(s.as_bytes()), contains_phone_reference(s.as_bytes()), "{:?}", s);
        }

        #[test]
        fn the_fast_phone_scan_agrees_on_digit_heavy_values(
            s in "[0-9 ()+.\\-a]{0,40}"
        ) {
            prop_assert_eq!(contains_phone(s.as_bytes()), contains_phone_reference(s.as_bytes()), "{:?}", s);
        }
    }

    #[test]
    fn ordinary_sp_api_values_are_not_pii() {
        let ordinary = [
            "902-1234567-1234567",
            "Order 902-1234567-1234567 shipped",
            "D01-1234567-1234567",
            "B07XJ8C8F5",
            "SKU-206-555-0100",
            "my_sku_2065550100",
            "2024-01-02T03:04:05Z",
            "2024-01-02 10:30:00",
            "02.01.2024 10:30",
            "2024/01/02 1030",
            "12345678.90",
            "1234567890",
            "+5",
            "1Z999AA10123456784",
            "SYN000000000123",
            "9400 1000 0000 0000 0000 00",
            "123e4567-e89b-12d3-a456-426614174000",
            "98101-1234",
            "123 Example Street",
            "Suite 101",
            "47.6062, -122.3321",
            "https://example.invalid/path/2065550100",
            "user@host",
            "@handle",
            "a@b.c",
            "first.@example.invalid",
            "1 2 3 4 5 6 7 8 9 10 11",
            "FBA15DJ9SLPH",
            "amzn1.sp.solution.2065550100",
            "USD 1234.56",
            "",
        ];
        for value in ordinary {
            assert_eq!(scan(value), None, "{value:?}");
        }
    }

    #[test]
    fn emails_and_phones_are_found_in_free_text() {
        let cases = [
            ("jane@example.invalid", Hit::Email),
            ("Contact: Jane <jane.doe+x@mail.example.com>.", Hit::Email),
            ("abc123@marketplace.amazon.de", Hit::Email),
            ("+1 206 555 0100", Hit::Phone),
            ("+12065550100", Hit::Phone),
            ("Call (206) 555-0100 after 5", Hit::Phone),
            ("206-555-0100", Hit::Phone),
            ("206.555.0100", Hit::Phone),
            ("tel: 020 7946 0018", Hit::Phone),
            ("+44 20 7946 0018 ext 12", Hit::Phone),
            ("06 12 34 56 78", Hit::Phone),
            ("030 12345678", Hit::Phone),
        ];
        for (value, hit) in cases {
            assert_eq!(scan(value), Some(hit), "{value:?}");
        }
    }
}
