//! spgate: a gateway between seller tools and Amazon's Selling Partner API.
//!
//! # Layout
//! - [`catalog`]: every SP-API operation (path template, usage plan, restricted?, PII map).
//! - [`config`]: the config file: parse, validate, resolve secrets (the only env/file reader).
//! - [`crypto`]: randomness, hashing and sealing secrets at rest (ring).
//! - [`sandbox`]: a fake SP-API + LWA (static examples, synthetic orders, quotas, token expiry).
//! - [`secret`]: `Secret<T>`, which never prints its value.
//! - [`spapi`]: SP-API wire shapes shared by the gateway and the sandbox.
//! - [`store`]: the storage trait and its embedded (SQLite) backend.
pub mod catalog;
pub mod config;
pub mod crypto;
pub mod sandbox;
pub mod secret;
pub mod spapi;
pub mod store;
