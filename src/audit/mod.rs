//! The audit log: one record per proxied request and per admin or security action, written as
//! JSON Lines in a tamper-evident chain.
//!
//! **Invariant:** records say who, what and when (tool, seller, operation, status, PII
//! categories and the action applied), never a PII value, token, key or secret.
//!
//! Status: the chain (writing, rotation, verification) is here; emitting records from the
//! pipeline and the admin listener, queries, reports and alerts come with issue 7.

pub mod chain;
