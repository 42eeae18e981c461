//! The gate before anything is sent: an operation the gateway cannot classify for buyer PII
//! (neither in the field map nor declared to carry none) is refused, never passed.

use super::rescue::ProxyError;
use crate::pii::Classification;

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
    use crate::pii::{Classifier, FieldMap};

    #[test]
    fn an_operation_missing_from_both_lists_is_refused() {
        // A catalog/data mismatch: the classifier knows only one operation.
        let classifier = Classifier::new(
            FieldMap::builtin(),
            "sellers.getAccount\tthe seller's own account",
        )
        .unwrap();
        assert!(refuse_unclassified(classifier.classify("sellers.getAccount")).is_ok());
        assert!(refuse_unclassified(classifier.classify("ordersV0.getOrder")).is_ok());
        assert!(matches!(
            refuse_unclassified(classifier.classify("sellers.getMarketplaceParticipations")),
            Err(ProxyError::Unclassified)
        ));
    }
}
