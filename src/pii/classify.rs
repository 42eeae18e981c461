//! Every operation's buyer-PII classification: mapped (`data/pii-fields.tsv`), or declared to
//! carry no buyer PII with a one-line reason (`data/pii-none.tsv`). An operation in neither is
//! [`Classification::Unclassified`], and the gateway refuses it before sending anything.
//!
//! `data/pii-exceptions.tsv` records, for the completeness test (`tests/pii_completeness.rs`),
//! the properties of Amazon's models that look personal but are not buyer PII, each with its
//! reason: `<scope>  <path pattern>  <reason>`, where the scope is an operation key or
//! `api:<api>`, and the pattern is a response path (`[]` array elements, `{}` map values) in
//! which `*` matches any run of characters.

use std::sync::LazyLock;

use super::map::{FieldMap, OpKeyMap, OpMap};
use crate::catalog::Operation;

static PII_NONE_TSV: &str = include_str!("../../data/pii-none.tsv");
static PII_EXCEPTIONS_TSV: &str = include_str!("../../data/pii-exceptions.tsv");

static BUILTIN: LazyLock<Classifier> = LazyLock::new(|| {
    // Fixed at compile time; `the_builtin_lists_parse` proves they parse.
    Classifier::new(FieldMap::builtin(), PII_NONE_TSV)
        .expect("data/pii-none.tsv is valid (checked by tests)")
});

static EXCEPTIONS: LazyLock<Exceptions> = LazyLock::new(|| {
    Exceptions::parse(PII_EXCEPTIONS_TSV)
        .expect("data/pii-exceptions.tsv is valid (checked by tests)")
});

/// Why a classification list could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    /// A line does not have the expected columns.
    #[error("{file} line {line}: {reason}")]
    BadLine {
        /// Which file.
        file: &'static str,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// What the gateway knows about an operation's responses.
#[derive(Debug, Clone, Copy)]
pub enum Classification<'a> {
    /// Carries buyer PII at these paths (or document links).
    Mapped(&'a OpMap),
    /// Carries no buyer PII, for this reason.
    NoPii(&'static str),
    /// Neither: refused.
    Unclassified,
}

/// The classification of every operation.
#[derive(Debug)]
pub struct Classifier {
    map: &'static FieldMap,
    none: OpKeyMap<&'static str>,
}

/// Properties that look personal but are not buyer PII, with the reason.
#[derive(Debug)]
pub struct Exceptions {
    rules: Vec<Exception>,
}

#[derive(Debug)]
struct Exception {
    scope: &'static str,
    pattern: &'static str,
    reason: &'static str,
}

// === impl Classifier ===

impl Classifier {
    /// The lists compiled into the binary.
    pub fn builtin() -> &'static Classifier {
        &BUILTIN
    }

    /// The classifier of `map` and a `pii-none.tsv` text (`operation<TAB>reason` lines; `#`
    /// comments; the header starts with `operation`). An operation in both is an error.
    pub fn new(
        map: &'static FieldMap,
        none_tsv: &'static str,
    ) -> Result<Classifier, ClassifyError> {
        let mut none = OpKeyMap::default();
        for (i, line) in none_tsv.lines().enumerate() {
            if line.starts_with('#') || line.trim().is_empty() || line.starts_with("operation\t") {
                continue;
            }
            let bad = |reason: String| ClassifyError::BadLine {
                file: "pii-none.tsv",
                line: i + 1,
                reason,
            };
            let (key, reason) = match line.split('\t').collect::<Vec<_>>()[..] {
                [key, reason] if !key.is_empty() && !reason.trim().is_empty() => (key, reason),
                _ => return Err(bad("expected operation and reason".into())),
            };
            if map.get(key).is_some() {
                return Err(bad(format!("{key} is also in the field map")));
            }
            if none.insert(key, reason).is_some() {
                return Err(bad(format!("{key} is listed twice")));
            }
        }
        Ok(Classifier { map, none })
    }

    /// The classification of an operation key.
    pub fn classify(&self, op_key: &str) -> Classification<'static> {
        if let Some(op) = self.map.get(op_key) {
            return Classification::Mapped(op);
        }
        match self.none.get(op_key) {
            Some(reason) => Classification::NoPii(reason),
            None => Classification::Unclassified,
        }
    }

    /// Every classified operation key, sorted.
    pub fn keys(&self) -> Vec<&'static str> {
        let mut keys = self.map.keys();
        keys.extend(self.none.keys().copied());
        keys.sort_unstable();
        keys
    }
}

// === impl Exceptions ===

impl Exceptions {
    /// The exceptions compiled into the binary.
    pub fn builtin() -> &'static Exceptions {
        &EXCEPTIONS
    }

    /// Parses `scope<TAB>pattern<TAB>reason` lines (`#` comments; header starts with `scope`).
    pub fn parse(tsv: &'static str) -> Result<Exceptions, ClassifyError> {
        let mut rules = Vec::new();
        for (i, line) in tsv.lines().enumerate() {
            if line.starts_with('#') || line.trim().is_empty() || line.starts_with("scope\t") {
                continue;
            }
            match line.split('\t').collect::<Vec<_>>()[..] {
                [scope, pattern, reason]
                    if !scope.is_empty() && !pattern.is_empty() && reason.trim().len() > 5 =>
                {
                    rules.push(Exception {
                        scope,
                        pattern,
                        reason,
                    })
                }
                _ => {
                    return Err(ClassifyError::BadLine {
                        file: "pii-exceptions.tsv",
                        line: i + 1,
                        reason: "expected scope, path pattern and a reason".into(),
                    })
                }
            }
        }
        Ok(Exceptions { rules })
    }

    /// The reason a response path of `op` is not buyer PII, when an exception says so.
    pub fn reason(&self, op: &Operation, path: &str) -> Option<&'static str> {
        self.rules
            .iter()
            .find(|r| {
                let in_scope = match r.scope.strip_prefix("api:") {
                    Some(api) => api == op.api,
                    None => r.scope == op.key,
                };
                in_scope && glob(r.pattern, path)
            })
            .map(|r| r.reason)
    }

    /// Every scope named, in file order.
    pub fn scopes(&self) -> Vec<&'static str> {
        self.rules.iter().map(|r| r.scope).collect()
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(pos) => rest = &rest[pos + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_lists_parse_and_keep_mapped_and_none_apart() {
        let c = Classifier::builtin();
        assert!(matches!(
            c.classify("ordersV0.getOrder"),
            Classification::Mapped(_)
        ));
        assert!(matches!(
            c.classify("sellers.getMarketplaceParticipations"),
            Classification::NoPii(_)
        ));
        assert!(matches!(
            c.classify("nope.nothing"),
            Classification::Unclassified
        ));
        assert!(!Exceptions::builtin().rules.is_empty());
    }

    #[test]
    fn bad_lists_are_rejected() {
        let map = FieldMap::builtin();
        for bad in [
            "x.y",
            "x.y\t",
            "x.y\tok reason\nx.y\tagain",
            "ordersV0.getOrder\tno PII here",
        ] {
            assert!(Classifier::new(map, bad).is_err(), "{bad}");
        }
        for bad in ["a\tb", "a\tb\tshort", "\tb\tlong enough reason"] {
            assert!(Exceptions::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patterns_match_whole_paths_with_stars() {
        for (pattern, text, expect) in [
            ("a.b", "a.b", true),
            ("a.b", "a.b.c", false),
            ("*.name", "x[].y.name", true),
            ("*.name", "x.nameX", false),
            ("payload.*", "payload.a", true),
            ("*Address.*", "x.shipFromAddress.city", true),
            ("*Address.*", "x.city", false),
            ("*", "anything", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXcYb", false),
        ] {
            assert_eq!(glob(pattern, text), expect, "{pattern} {text}");
        }
    }
}
