//! Fuzz targets for spgate (run with `cargo fuzz run <target>` from this directory).

pub mod transform;
