//! The gate before anything is sent: an operation the gateway cannot classify for buyer PII
//! (neither in the field map nor declared to carry none) is refused, never passed, and counted.

use std::sync::atomic::{AtomicU64, Ordering};

use super::rescue::ProxyError;
use crate::catalog::Operation;
use crate::pii::{Classification, Classifier};

/// The classifier the gateway refuses by (the built-in one unless a test injects another),
/// and how many requests it refused.
#[derive(Debug)]
pub struct Gate {
    classifier: &'static Classifier,
    refused: AtomicU64,
}

impl Gate {
    /// A gate over `classifier`.
    pub fn new(classifier: &'static Classifier) -> Gate {
        Gate {
            classifier,
            refused: AtomicU64::new(0),
        }
    }

    /// `Ok` for an operation the classifier knows; [`ProxyError::Unclassified`] (counted)
    /// otherwise.
    pub fn check(&self, op: &Operation) -> Result<(), ProxyError> {
        let checked = refuse_unclassified(self.classifier.classify(op.key));
        if checked.is_err() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        checked
    }

    /// Requests refused because their operation is unclassified.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The refusal counter in Prometheus' text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP spgate_pii_unclassified_refused_total Requests refused before sending because the gateway cannot classify their operation's buyer PII.\n# TYPE spgate_pii_unclassified_refused_total counter\nspgate_pii_unclassified_refused_total {}",
            self.refused()
        );
    }
}

/// `Ok` for a classified operation; [`ProxyError::Unclassified`] otherwise.
pub fn refuse_unclassified(class: Classification<'_>) -> Result<(), ProxyError> {
    match class {
        Classification::Mapped(_) | Classification::NoPii(_) => Ok(()),
        Classification::Unclassified => Err(ProxyError::Unclassified),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::pii::FieldMap;

    /// A catalog/data mismatch: the classifier knows only one operation.
    fn partial() -> &'static Classifier {
        Box::leak(Box::new(
            Classifier::new(
                FieldMap::builtin(),
                "sellers.getAccount\tthe seller's own account",
            )
            .unwrap(),
        ))
    }

    #[test]
    fn an_operation_missing_from_both_lists_is_refused() {
        let classifier = partial();
        assert!(refuse_unclassified(classifier.classify("sellers.getAccount")).is_ok());
        assert!(refuse_unclassified(classifier.classify("ordersV0.getOrder")).is_ok());
        assert!(matches!(
            refuse_unclassified(classifier.classify("sellers.getMarketplaceParticipations")),
            Err(ProxyError::Unclassified)
        ));
    }

    #[test]
    fn the_gate_counts_what_it_refuses() {
        let gate = Gate::new(partial());
        let op = |key: &str| Catalog::builtin().by_key(key).unwrap();
        assert!(gate.check(op("sellers.getAccount")).is_ok());
        assert!(gate
            .check(op("sellers.getMarketplaceParticipations"))
            .is_err());
        assert_eq!(gate.refused(), 1);
        let mut out = String::new();
        gate.render_metrics(&mut out);
        assert!(
            out.contains("\nspgate_pii_unclassified_refused_total 1\n"),
            "{out}"
        );
    }
}
