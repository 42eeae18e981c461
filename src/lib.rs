//! spgate: a gateway between seller tools and Amazon's Selling Partner API.
//!
//! # Layout
//! - [`catalog`]: every SP-API operation (path template, usage plan, restricted?, PII map).
//! - [`spapi`]: SP-API wire shapes shared by the gateway and the sandbox.
pub mod catalog;
pub mod spapi;
