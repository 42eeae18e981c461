//! `Secret<T>`: a value that never prints.
//!
//! Tokens, refresh tokens, client secrets, API keys and master keys are wrapped in [`Secret`] from
//! the moment they are read until the moment they are used, so a stray `{:?}` in a log line, an
//! error message or a panic prints `**REDACTED**` instead of the value.

use std::fmt;

/// A value whose `Debug` and `Display` print `**REDACTED**`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

// === impl Secret ===

impl<T> Secret<T> {
    /// Wraps a value.
    pub fn new(value: T) -> Secret<T> {
        Secret(value)
    }

    /// The value itself. Call this only where the value is used (a header, a cipher, a hash).
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("**REDACTED**")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("**REDACTED**")
    }
}

impl From<String> for Secret<String> {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_shows_its_value_in_debug_or_display() {
        let s = Secret::new("Atzr|very-secret-refresh-token".to_string());
        let nested = Some(vec![s.clone()]);
        for printed in [
            format!("{s:?}"),
            format!("{s}"),
            format!("{nested:?}"),
            format!("{s:#?}"),
        ] {
            assert!(!printed.contains("very-secret"), "{printed}");
            assert!(printed.contains("REDACTED"), "{printed}");
        }
        assert_eq!(s.expose(), "Atzr|very-secret-refresh-token");
    }
}
