//! spgate binary.
fn main() {}
