//! A fake SP-API and LWA token endpoint for `spgate demo` and the tests.
