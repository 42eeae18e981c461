//! The audit log: one record per proxied request and per admin or security action, written as
//! JSON Lines in a tamper-evident chain, one chain per instance.
//!
//! - [`record`]: [`Record`], whose fields cannot hold a PII value, token, key or secret.
//! - [`writer`]: [`Auditor`], the cheap handle the request path records through, and the
//!   writer thread (batching, fsync policy, daily retention, alerts).
//! - [`queue`]: the bounded queue to the writer thread, which wakes it only when it must act.
//! - [`health`]: whether the writer keeps up (a full queue, a stalled writer, failing fsyncs), and
//!   the watchdog thread.
//! - [`chain`]: the HMAC-keyed SHA-256 chain, daily files, the retention anchor, `verify`.
//! - `line`: one chain line's format versions (how it is sealed and linked); `encode`: a
//!   record's JSON, written without serde.
//! - [`alerts`]: alert rules and the webhook.
//! - [`query`]: reading chains back: time-ordered merge of every instance, filters, report.
//! - [`cli`]: `spgate audit verify | query | report`.
//! - [`config`]: the `audit` section of the config file.
//!
//! **Invariant:** records say who, what and when (tool, seller, operation, status, PII
//! categories and the action applied), never a PII value, token, key or secret.

pub mod alerts;
pub mod chain;
pub mod cli;
pub mod config;
mod encode;
pub mod events;
mod health;
mod line;
pub mod noise;
pub mod query;
mod queue;
pub mod record;
pub mod writer;

pub use config::{AlertRules, AuditConfig, FsyncPolicy, OnFailure, RawAudit};
pub use record::{Decision, Kind, Limiter, Outcome, PiiUse, Reason, Record, TokenKind};
pub use writer::{AuditError, AuditMetrics, Auditor, Clock, ManualClock, SystemClock};
