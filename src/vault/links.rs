//! Which buyer-pseudonym links this process has already written, so a buyer's order fetched again
//! costs no store write.
//!
//! A link row (pseudonym → seller, order) lives exactly as long as the order's data key: shredding
//! an order deletes its key and its links in one transaction, and a later fetch creates a new key
//! with a new id. An entry here names the key id the link was written under, so it answers "already
//! linked" only while the caller holds that same key (just read from the store); once the key is
//! gone or replaced, the key id differs and the link is written again. Bounded: at
//! [`MAX_ENTRIES`] the set is cleared (the next fetch of each order writes its link once more).

use std::collections::HashSet;
use std::sync::Mutex;

/// Entries kept before the set is cleared (~150 bytes each).
const MAX_ENTRIES: usize = 50_000;

/// Links written by this process, by (seller, order, pseudonym, key id).
#[derive(Debug, Default)]
pub(crate) struct Links {
    written: Mutex<HashSet<String>>,
}

fn entry(seller: &str, order_id: &str, pseudonym: &str, key_id: &str) -> String {
    // NUL cannot occur in any of the four (ids and pseudonyms are printable ASCII).
    [seller, order_id, pseudonym, key_id].join("\0")
}

impl Links {
    /// Whether this process wrote the link under this key.
    pub(crate) fn written(
        &self,
        seller: &str,
        order_id: &str,
        pseudonym: &str,
        key_id: &str,
    ) -> bool {
        let set = self.written.lock().unwrap_or_else(|e| e.into_inner());
        set.contains(&entry(seller, order_id, pseudonym, key_id))
    }

    /// Notes a link the store confirmed under this key.
    pub(crate) fn note(&self, seller: &str, order_id: &str, pseudonym: &str, key_id: &str) {
        let mut set = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if set.len() >= MAX_ENTRIES {
            set.clear();
        }
        set.insert(entry(seller, order_id, pseudonym, key_id));
    }

    /// Forgets every link of an order (its key was destroyed here).
    pub(crate) fn forget_order(&self, seller: &str, order_id: &str) {
        let prefix = [seller, order_id, ""].join("\0");
        let mut set = self.written.lock().unwrap_or_else(|e| e.into_inner());
        set.retain(|e| !e.starts_with(&prefix));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_counts_only_under_the_key_it_was_written_with() {
        let links = Links::default();
        assert!(!links.written("A1", "O1", "psn_a", "k1"));
        links.note("A1", "O1", "psn_a", "k1");
        assert!(links.written("A1", "O1", "psn_a", "k1"));
        // A new key (the order was shredded and fetched again): written again.
        assert!(!links.written("A1", "O1", "psn_a", "k2"));
        // Other pseudonyms, orders and sellers are their own links.
        assert!(!links.written("A1", "O1", "psn_b", "k1"));
        assert!(!links.written("A1", "O2", "psn_a", "k1"));
        assert!(!links.written("A2", "O1", "psn_a", "k1"));
        links.forget_order("A1", "O1");
        assert!(!links.written("A1", "O1", "psn_a", "k1"));
    }

    #[test]
    fn the_set_is_bounded() {
        let links = Links::default();
        for i in 0..MAX_ENTRIES + 10 {
            links.note("A1", &format!("O{i}"), "psn", "k");
        }
        assert!(links.written.lock().unwrap().len() <= MAX_ENTRIES);
        assert!(links.written("A1", &format!("O{}", MAX_ENTRIES + 9), "psn", "k"));
    }
}
