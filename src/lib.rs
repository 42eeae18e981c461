//! spgate: a gateway between seller tools and Amazon's Selling Partner API.
//!
//! # Layout
//! - [`catalog`]: every SP-API operation (path template, usage plan, restricted?, PII map).
//! - [`sandbox`]: a fake SP-API + LWA (static examples, synthetic orders, quotas, token expiry).
//! - [`spapi`]: SP-API wire shapes shared by the gateway and the sandbox.
pub mod catalog;
pub mod sandbox;
pub mod spapi;
