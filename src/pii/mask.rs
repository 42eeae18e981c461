//! Shape-preserving masks, one rule per category.
//!
//! | category | rule | example |
//! |---|---|---|
//! | name, company | each word: first character + `***` | `Jane Example` -> `J*** E***` |
//! | email | first character of the local part and of the domain | `jane@example.invalid` -> `j***@e***` |
//! | phone | every digit but the last two becomes `*`, separators stay | `+1 206-555-0100` -> `+* ***-***-**00` |
//! | address | `***` | |
//! | postal code | first two characters + `***` | `98101` -> `98***` |
//! | coarse location | up to 3 characters (country and state codes) kept; longer: first character + `***` | `WA` -> `WA`, `Seattle` -> `S***` |
//! | tax id | every letter and digit but the last two becomes `*` | `DE123456789` -> `*********89` |
//! | customization URL | scheme and host kept, path replaced | `https://zme.example/abc?x=1` -> `https://zme.example/***` |
//! | gift message, delivery instructions, regulated info | `***` | |
//! | document | empty string | |
//!
//! An empty value stays empty. Very short values (where keeping characters would reveal most of
//! them) become `***`.

use super::Category;

const STARS: &str = "***";

/// Masks one value of a category (see the module docs for the rules).
pub fn mask(category: Category, value: &str) -> String {
    if value.is_empty() {
        return String::new();
    }
    match category {
        Category::Name | Category::Company => words(value),
        Category::Email => email(value),
        Category::Phone => keep_last(value, 2, |c| c.is_ascii_digit()),
        Category::PostalCode => prefix(value.trim(), 2),
        Category::CoarseLocation => {
            let value = value.trim();
            if value.chars().count() <= 3 {
                value.to_string()
            } else {
                prefix(value, 1)
            }
        }
        Category::TaxId => keep_last(value, 2, char::is_alphanumeric),
        Category::CustomizationUrl => url(value),
        Category::Address
        | Category::GiftMessage
        | Category::DeliveryInstructions
        | Category::RegulatedInfo => STARS.to_string(),
        Category::Document => String::new(),
    }
}

/// The first `n` characters + `***`; just `***` when the value has no more than `n` characters.
fn prefix(value: &str, n: usize) -> String {
    let mut chars = value.char_indices();
    match chars.nth(n) {
        Some((end, _)) => {
            let mut out = String::with_capacity(end + STARS.len());
            out.push_str(&value[..end]);
            out.push_str(STARS);
            out
        }
        None => STARS.to_string(),
    }
}

fn words(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for word in value.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        if let Some(c) = word.chars().next() {
            out.push(c);
        }
        out.push_str(STARS);
    }
    if out.is_empty() {
        out.push_str(STARS);
    }
    out
}

fn email(value: &str) -> String {
    match value.trim().rsplit_once('@') {
        Some((local, domain)) => {
            let mut out = String::with_capacity(10);
            out.extend(local.chars().next());
            out.push_str(STARS);
            out.push('@');
            out.extend(domain.chars().next());
            out.push_str(STARS);
            out
        }
        None => prefix(value.trim(), 1),
    }
}

/// Replaces every character matching `secret` with `*`, except the last `keep` of them; other
/// characters stay. When there are no more than `2 * keep` secret characters, all are replaced.
fn keep_last(value: &str, keep: usize, secret: impl Fn(char) -> bool) -> String {
    let total = value.chars().filter(|&c| secret(c)).count();
    let shown = if total > 2 * keep { keep } else { 0 };
    let mut seen = 0;
    value
        .chars()
        .map(|c| {
            if !secret(c) {
                return c;
            }
            seen += 1;
            if seen > total - shown {
                c
            } else {
                '*'
            }
        })
        .collect()
}

fn url(value: &str) -> String {
    let value = value.trim();
    if let Some((scheme, rest)) = value.split_once("://") {
        let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let host = &rest[..host_end];
        // Userinfo (`user@host`) would be personal: keep only what follows it.
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        if !scheme.is_empty() && !host.is_empty() {
            return format!("{scheme}://{host}/{STARS}");
        }
    }
    STARS.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Category::*;

    #[test]
    fn each_category_masks_by_its_documented_rule() {
        let cases: &[(Category, &str, &str)] = &[
            (Name, "Jane Example", "J*** E***"),
            (Name, "  ", "***"),
            (Name, "", ""),
            (Company, "Example Trading GmbH", "E*** T*** G***"),
            (Email, "jane@example.invalid", "j***@e***"),
            (Email, "not-an-email", "n***"),
            (Phone, "+1 206-555-0100", "+* ***-***-**00"),
            (Phone, "0100", "****"),
            (Address, "123 Example Street", "***"),
            (PostalCode, "98101", "98***"),
            (PostalCode, "SW1A 1AA", "SW***"),
            (PostalCode, "12", "***"),
            (CoarseLocation, "WA", "WA"),
            (CoarseLocation, "Seattle", "S***"),
            (TaxId, "DE123456789", "*********89"),
            (TaxId, "12-34", "**-**"),
            (GiftMessage, "Happy birthday, Jane!", "***"),
            (
                CustomizationUrl,
                "https://zme.example/abc/def?x=1",
                "https://zme.example/***",
            ),
            (
                CustomizationUrl,
                "https://jane@zme.example/x",
                "https://zme.example/***",
            ),
            (CustomizationUrl, "zme.example/abc", "***"),
            (DeliveryInstructions, "Ring twice", "***"),
            (RegulatedInfo, "Rx 12345", "***"),
            (Document, "JVBERi0xLjQK", ""),
            (Name, "Ünal Öztürk", "Ü*** Ö***"),
        ];
        for (category, input, expected) in cases {
            assert_eq!(&mask(*category, input), expected, "{category} {input:?}");
        }
    }
}
