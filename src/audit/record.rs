//! One audit record: who did what, for which seller, with what outcome, and which PII
//! categories left the gateway with which action applied.
//!
//! **Invariant:** a record cannot hold a PII value, token, key or secret. Every text field is a
//! validated identifier newtype ([`Name`], [`SellerId`], [`Id`], [`Template`]) whose alphabet has
//! no space, `@`, `+`, `|`, `=` or `%` (so no name, e-mail address, phone number, street
//! address, LWA token `Atza|...`/`Atzr|...`, `spg_` key with base64 padding, or query string
//! fits), or a [`Reason`], which can only be made from a `&'static str` in the code. The
//! chain adds `seq`, `time`, `instance`, `prev` and `mac` when the record is written.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::pii::{Action, Category};

/// A text did not fit an audit field's alphabet or length (the text is not repeated here).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid audit {field}: expected {expected}")]
pub struct InvalidField {
    /// The field type.
    pub field: &'static str,
    /// What it accepts.
    pub expected: &'static str,
}

/// Whether a text that fits an identifier alphabet still looks like a credential: the
/// gateway's own secrets (`spg_`, `spgcs_`, `spgrt_`, `spgat_`), LWA tokens (`Atza`, `Atzr`),
/// or a long random-looking run (32+ characters mixing upper case, lower case and digits with
/// no `.`, `/` or `:`, as base64 of random bytes does).
fn looks_secret(text: &str) -> bool {
    if text.starts_with("spg") || text.starts_with("Atz") {
        return true;
    }
    text.split(['.', '/', ':', '{', '}']).any(|run| {
        run.len() >= 32
            && run.bytes().any(|b| b.is_ascii_uppercase())
            && run.bytes().any(|b| b.is_ascii_lowercase())
            && run.bytes().any(|b| b.is_ascii_digit())
    })
}

macro_rules! ident {
    ($(#[$doc:meta])* $name:ident, $field:literal, $expected:literal, $max:expr, $ok:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        // By reference: no copy of the text per record written.
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl $name {
            /// Validates a text for this field.
            pub fn new(text: &str) -> Result<$name, InvalidField> {
                let ok: fn(u8) -> bool = $ok;
                if !text.is_empty()
                    && text.len() <= $max
                    && text.bytes().all(ok)
                    && !looks_secret(text)
                {
                    Ok($name(text.to_string()))
                } else {
                    Err(InvalidField {
                        field: $field,
                        expected: $expected,
                    })
                }
            }

            /// Like `new`, but an invalid text becomes `invalid` (the record is kept, the text
            /// is not).
            pub fn lossy(text: &str) -> $name {
                $name::new(text).unwrap_or_else(|_| $name("invalid".to_string()))
            }

            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidField;
            fn try_from(text: String) -> Result<$name, InvalidField> {
                $name::new(&text)?;
                Ok($name(text))
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

ident!(
    /// A configured name: a tool, a role, an admin token's holder, an HTTP method.
    /// `[A-Za-z0-9_.-]`, 1-64 characters.
    Name,
    "name",
    "1-64 characters of [A-Za-z0-9_.-]",
    64,
    |b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
);

ident!(
    /// A selling partner id (Amazon's merchant token, e.g. `A2EUQ1WTGCTBG2`). `[A-Za-z0-9]`,
    /// 1-32 characters.
    SellerId,
    "seller id",
    "1-32 characters of [A-Za-z0-9]",
    32,
    |b| b.is_ascii_alphanumeric()
);

ident!(
    /// A machine identifier: request id, upstream request id, client id, order id, operation
    /// key. `[A-Za-z0-9_.:-]`, 1-128 characters.
    Id,
    "id",
    "1-128 characters of [A-Za-z0-9_.:-]",
    128,
    |b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')
);

ident!(
    /// A path template from the catalog, e.g. `/orders/v0/orders/{orderId}` (never a raw
    /// path). `[A-Za-z0-9_./{}-]`, 1-256 characters.
    Template,
    "path template",
    "1-256 characters of [A-Za-z0-9_./{}-]",
    256,
    |b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'{' | b'}' | b'-')
);

ident!(
    /// A time written by the gateway itself, e.g. `2026-11-20T23:58:00.123Z`.
    /// `[0-9TZ:.-]`, 1-40 characters.
    Stamp,
    "time",
    "an RFC 3339 UTC time",
    40,
    |b| b.is_ascii_digit() || matches!(b, b'T' | b'Z' | b':' | b'.' | b'-')
);

/// How a proxied request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A response was produced (its status says which).
    Answered,
    /// The client went away before the response was complete.
    ClientClosed,
    /// The shutdown drain cut the request.
    Shutdown,
    /// The request ran out of time.
    Timeout,
    /// The handler panicked.
    Panic,
}

/// A reason or detail code, e.g. `seller_not_allowed`. Made only from a `&'static str` in the
/// code ([`Reason::from_static`] or the constants), so no runtime text reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Reason(Cow<'static, str>);

/// What happened: a proxied request, or an admin or security action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A proxied SP-API request (also the drop-in token endpoint and onboarding routes).
    Request,
    /// A tool's API key was created.
    KeyCreated,
    /// A tool's API key was revoked.
    KeyRevoked,
    /// A seller authorized the application (or was imported).
    SellerAuthorized,
    /// A seller was removed or deauthorized.
    SellerDeauthorized,
    /// The configuration was reloaded.
    Reload,
    /// An encrypted PII field was revealed.
    Reveal,
    /// A data-subject export.
    Export,
    /// A data-subject erasure.
    Erase,
    /// A retention deletion run (cached PII and data keys destroyed).
    DeletionRun,
    /// A legal hold was set or lifted.
    LegalHold,
    /// An order's delivery date was recorded (its PII deletion date follows).
    Delivery,
    /// An alert rule fired.
    Alert,
    /// This instance's audit writer started.
    AuditStarted,
    /// This instance's audit writer stopped cleanly.
    AuditStopped,
    /// Audit files past their retention were deleted.
    AuditRetention,
    /// Records were lost (could not be written, or queued by a process that stopped
    /// abruptly): how many when known, and the span.
    Gap,
    /// Refused-before-authentication requests from one address, aggregated per minute.
    Unauthenticated,
    /// A forward-proxy CONNECT accepted (`host`, `source`); the requests inside are recorded
    /// as usual.
    Tunnel,
    /// Compat mode `auto` started translating a region's Orders v0 calls (enough different
    /// sellers answered as removed), or an operator reset what it saw.
    CompatSwitch,
    /// A seller invite link was created (who, for which region, for which seller if a
    /// re-authorization; never the link).
    InviteCreated,
    /// A web console sign-in (`signed_in`, or refused: `unknown_token`) or sign-out
    /// (`signed_out`), with the client's address; never the token.
    SignIn,
}

/// How the rate limiter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// A token was free.
    Admitted,
    /// Admitted after waiting for a token.
    Waited,
    /// Refused (429).
    Rejected,
}

/// The limiter's part in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limiter {
    /// The decision.
    pub decision: Decision,
    /// How long the request waited, in milliseconds.
    pub wait_ms: u64,
}

/// Which Amazon credential the request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// The seller's LWA access token.
    Lwa,
    /// A Restricted Data Token.
    Rdt,
    /// A grantless (client credentials) token.
    Grantless,
}

/// One PII category that left the gateway and what was done to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PiiUse {
    /// The category.
    #[serde(with = "category_name")]
    pub category: Category,
    /// The action the caller's role applied.
    #[serde(with = "action_name")]
    pub action: Action,
}

/// One audit record. Fields that do not apply stay `None` (and are not written).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// What happened.
    pub kind: Kind,
    /// The gateway's request id (the `x-request-id` the caller got back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<Id>,
    /// The seller tool: the caller of a request, or the tool an admin action concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<Name>,
    /// Who performed an admin action (an admin token's holder, or `cli`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Name>,
    /// The tool's role (or the admin token's role).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Name>,
    /// The seller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seller: Option<SellerId>,
    /// The SP-API operation key, e.g. `ordersV0.getOrder`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Id>,
    /// The HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Name>,
    /// The operation's path template (never the raw path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Template>,
    /// The Orders 2026-01-01 operation an Orders v0 call was answered from (compat), e.g.
    /// `orders_2026-01-01.searchOrders`; `operation` names the v0 operation asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub translated_to: Option<Id>,
    /// Fields of a translated answer left out because the 2026 value could not be converted to
    /// v0's (compat; their names are in the operational log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unconverted: Option<u32>,
    /// The HTTP status returned to the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Time from the request's arrival to its response head, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    /// The rate limiter's decision and wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limiter: Option<Limiter>,
    /// The Amazon credential used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenKind>,
    /// A gateway Restricted Data Token was issued (createRestrictedDataToken) or presented by
    /// the tool for this request. Never the token itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_rdt: Option<bool>,
    /// PII categories returned (or revealed, exported) with the action applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pii: Vec<PiiUse>,
    /// Values the PII safety net caught outside the field map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_net_hits: Option<u32>,
    /// Amazon's `x-amzn-RequestId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_request_id: Option<Id>,
    /// A shared answer (reason `coalesced` or `cache_hit`): the gateway's request id of the
    /// request that fetched it from Amazon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_from: Option<Id>,
    /// Why (a denial, an error class, an alert rule, a legal hold's reason code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// The order concerned (order ids are not PII).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<Id>,
    /// The client (API key) concerned, `cli_...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<Id>,
    /// A count: orders deleted, records exported, files expired, alert events in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// An alert's window, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_secs: Option<u64>,
    /// How a request ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Whether the request was sent to Amazon (or the document host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_called: Option<bool>,
    /// A report document's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_id: Option<Id>,
    /// Bytes sent to the caller (document downloads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Whether a streamed response was sent to its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<bool>,
    /// The caller's address (aggregated unauthenticated requests, console sign-ins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<std::net::IpAddr>,
    /// A gap's (or an aggregate's) first moment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_from: Option<Stamp>,
    /// A gap's (or an aggregate's) last moment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_to: Option<Stamp>,
    /// The host a forward-proxy tunnel was opened to (one of Amazon's, `[forward_proxy]
    /// allowed_hosts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Id>,
}

// === impl Reason ===

impl Reason {
    /// The caller asked for a seller its key may not act for.
    pub const SELLER_NOT_ALLOWED: Reason = Reason::from_static("seller_not_allowed");
    /// The caller's role may not call the operation.
    pub const OPERATION_NOT_ALLOWED: Reason = Reason::from_static("operation_not_allowed");
    /// No valid API key or gateway token.
    pub const UNAUTHENTICATED: Reason = Reason::from_static("unauthenticated");
    /// The gateway's limiter refused the request.
    pub const RATE_LIMITED: Reason = Reason::from_static("rate_limited");
    /// The gateway's limiter refused the request: other tools' shares or a higher lane, on any
    /// instance sharing the bucket, went first until its deadline.
    pub const RATE_LIMITED_DEFERRED: Reason = Reason::from_static("rate_limited_deferred");
    /// Amazon answered 429.
    pub const UPSTREAM_THROTTLED: Reason = Reason::from_static("upstream_throttled");
    /// The upstream call failed (connect, timeout, transport).
    pub const UPSTREAM_ERROR: Reason = Reason::from_static("upstream_error");
    /// No catalogued operation matches the request.
    pub const UNKNOWN_OPERATION: Reason = Reason::from_static("unknown_operation");
    /// Alert: too many reveals by one tool in an hour.
    pub const ALERT_REVEALS: Reason = Reason::from_static("reveals_per_tool_per_hour");
    /// Alert: a tool asked for a seller it may not use.
    pub const ALERT_SELLER_DENIALS: Reason = Reason::from_static("seller_denials");
    /// Alert: a burst of denials.
    pub const ALERT_DENIAL_BURST: Reason = Reason::from_static("denial_burst");
    /// Alert: a role received a PII category it never received before.
    pub const ALERT_NEW_PII_CATEGORY: Reason = Reason::from_static("new_pii_category");
    /// A document download's start record (written durably before its first byte; the
    /// download's own record follows when the stream ends).
    pub const DOWNLOAD_STARTED: Reason = Reason::from_static("download_started");
    /// The answer this record describes was not delivered: its record was not known to be
    /// written in time, so the client got 503 and none of the PII (see
    /// [`Record::withhold`]).
    pub const ANSWER_WITHHELD: Reason = Reason::from_static("answer_withheld");
    /// Records adopted after an abrupt stop (`AuditStarted`).
    pub const RECOVERED: Reason = Reason::from_static("recovered_after_abrupt_stop");

    /// A reason code from the code itself. Keep to `[a-z0-9_]`.
    pub const fn from_static(code: &'static str) -> Reason {
        Reason(Cow::Borrowed(code))
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Reason, D::Error> {
        let s = String::deserialize(d)?;
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(Reason(Cow::Owned(s)))
        } else {
            Err(serde::de::Error::custom("not a valid audit reason code"))
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// === impl Kind ===

impl Kind {
    /// The name written in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::KeyCreated => "key_created",
            Kind::KeyRevoked => "key_revoked",
            Kind::SellerAuthorized => "seller_authorized",
            Kind::SellerDeauthorized => "seller_deauthorized",
            Kind::Reload => "reload",
            Kind::Reveal => "reveal",
            Kind::Export => "export",
            Kind::Erase => "erase",
            Kind::DeletionRun => "deletion_run",
            Kind::LegalHold => "legal_hold",
            Kind::Delivery => "delivery",
            Kind::Alert => "alert",
            Kind::AuditStarted => "audit_started",
            Kind::AuditStopped => "audit_stopped",
            Kind::AuditRetention => "audit_retention",
            Kind::Gap => "gap",
            Kind::Unauthenticated => "unauthenticated",
            Kind::Tunnel => "tunnel",
            Kind::CompatSwitch => "compat_switch",
            Kind::InviteCreated => "invite_created",
            Kind::SignIn => "sign_in",
        }
    }
}

// === impl Decision, TokenKind ===

impl Decision {
    /// The name written in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Admitted => "admitted",
            Decision::Waited => "waited",
            Decision::Rejected => "rejected",
        }
    }
}

impl TokenKind {
    /// The name written in records.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Lwa => "lwa",
            TokenKind::Rdt => "rdt",
            TokenKind::Grantless => "grantless",
        }
    }
}

/// The config name of an action.
pub fn action_str(action: Action) -> &'static str {
    match action {
        Action::Pass => "pass",
        Action::Mask => "mask",
        Action::Pseudonymize => "pseudonymize",
        Action::Encrypt => "encrypt",
        Action::Drop => "drop",
    }
}

mod category_name {
    use super::Category;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(c: &Category, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(c.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Category, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse()
            .map_err(|_| serde::de::Error::custom("unknown PII category"))
    }
}

mod action_name {
    use super::Action;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(a: &Action, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(super::action_str(*a))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Action, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse()
            .map_err(|_| serde::de::Error::custom("unknown PII action"))
    }
}

// === impl Record ===

impl Record {
    /// A record of this kind with every other field empty.
    pub fn new(kind: Kind) -> Record {
        Record {
            kind,
            request_id: None,
            tool: None,
            actor: None,
            role: None,
            seller: None,
            operation: None,
            method: None,
            path: None,
            translated_to: None,
            unconverted: None,
            status: None,
            latency_us: None,
            limiter: None,
            token: None,
            gateway_rdt: None,
            pii: Vec::new(),
            safety_net_hits: None,
            upstream_request_id: None,
            shared_from: None,
            reason: None,
            order_id: None,
            client_id: None,
            count: None,
            window_secs: None,
            outcome: None,
            upstream_called: None,
            document_id: None,
            bytes: None,
            completed: None,
            source: None,
            gap_from: None,
            gap_to: None,
            host: None,
        }
    }

    /// A forward-proxy tunnel accepted for `host` from `source`.
    pub fn tunnel(source: std::net::IpAddr, host: &str) -> Record {
        Record {
            method: Some(Name::lossy("CONNECT")),
            status: Some(200),
            source: Some(source),
            host: Some(Id::lossy(host)),
            ..Record::new(Kind::Tunnel)
        }
    }

    /// A proxied request's record, with its request id.
    pub fn request(request_id: &str) -> Record {
        Record {
            request_id: Some(Id::lossy(request_id)),
            ..Record::new(Kind::Request)
        }
    }

    /// Sets operation key, method and path template from the catalog.
    pub fn with_operation(mut self, op: &crate::catalog::Operation) -> Record {
        self.operation = Some(Id::lossy(op.key));
        self.method = Some(Name::lossy(op.method.as_str()));
        self.path = Some(Template::lossy(op.path));
        self
    }

    /// Sets the tool (an invalid name is recorded as `invalid`).
    pub fn with_tool(mut self, tool: &str) -> Record {
        self.tool = Some(Name::lossy(tool));
        self
    }

    /// Sets the role.
    pub fn with_role(mut self, role: &str) -> Record {
        self.role = Some(Name::lossy(role));
        self
    }

    /// Sets the seller.
    pub fn with_seller(mut self, seller: &str) -> Record {
        self.seller = Some(SellerId::lossy(seller));
        self
    }

    /// Sets the admin actor.
    pub fn with_actor(mut self, actor: &str) -> Record {
        self.actor = Some(Name::lossy(actor));
        self
    }

    /// Sets the status.
    pub fn with_status(mut self, status: u16) -> Record {
        self.status = Some(status);
        self
    }

    /// Sets the reason.
    pub fn with_reason(mut self, reason: Reason) -> Record {
        self.reason = Some(reason);
        self
    }

    /// Whether this is a denied request (401 or 403 to the caller).
    pub fn is_denial(&self) -> bool {
        self.kind == Kind::Request && matches!(self.status, Some(401 | 403))
    }

    /// Rewrites a record whose answer was withheld to what the client got: status 503, reason
    /// `answer_withheld`, no PII categories, no bytes sent (who, what and the upstream call
    /// stay: the request did reach Amazon).
    pub fn withhold(&mut self) {
        self.status = Some(503);
        self.withhold_pii();
    }

    /// Like [`Record::withhold`] for a client that went away while its answer waited for this
    /// record: it got nothing (no status, outcome `client_closed` for a request).
    pub fn withhold_from_gone_client(&mut self) {
        self.status = None;
        if self.outcome.is_some() {
            self.outcome = Some(Outcome::ClientClosed);
        }
        self.withhold_pii();
    }

    fn withhold_pii(&mut self) {
        self.reason = Some(Reason::ANSWER_WITHHELD);
        self.pii.clear();
        self.safety_net_hits = None;
        self.bytes = None;
        self.completed = None;
    }

    /// The follow-up of a record whose answer was withheld after the writer took it: same
    /// kind, request id, tool, seller, operation, order and outcome, with status 503 and
    /// reason `answer_withheld`. It supersedes what the earlier record with that request id says
    /// was delivered.
    pub fn withheld_note(&self) -> Record {
        let mut r = Record {
            request_id: self.request_id.clone(),
            tool: self.tool.clone(),
            seller: self.seller.clone(),
            operation: self.operation.clone(),
            order_id: self.order_id.clone(),
            outcome: self.outcome,
            ..Record::new(self.kind)
        };
        r.withhold();
        r
    }

    /// Whether this is a [`Record::withheld_note`]: a follow-up about a request already
    /// recorded, not a request of its own (the only request record without a latency that
    /// says `answer_withheld`: a record withheld in the queue keeps its latency).
    pub fn is_withheld_note(&self) -> bool {
        self.kind == Kind::Request
            && self.reason == Some(Reason::ANSWER_WITHHELD)
            && self.latency_us.is_none()
    }

    /// Categories the caller received in some form (every action but `drop`).
    pub fn received(&self) -> impl Iterator<Item = Category> + '_ {
        self.pii
            .iter()
            .filter(|p| p.action != Action::Drop)
            .map(|p| p.category)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Synthetic PII and secrets that must never fit any text field of a record.
    const PLANTED: &[&str] = &[
        "Jane Example",
        "jane@example.invalid",
        "+1 206 555 0100",
        "123 Example Street",
        "Atza|IwEBIExampleAccessToken",
        "Atzr|IwEBIExampleRefreshToken",
        "spg_c2VjcmV0LWtleS1ieXRlcw==",
        "spg_Zm9vYmFyYmF6cXV4cXV1eGZvb2JhcmJhenF1eDEy",
        "spgat_Zm9vYmFyYmF6cXV4cXV1eGZvb2JhcmJhenF1eDEy",
        "Zm9vYmFyYmF6cXV4cXV1eGZvb2JhcmJhenF1eDEy",
        "/orders/v0/orders/123-1234567-1234567?buyerEmail=jane%40example.invalid",
        "Bearer abc.def",
        "",
    ];

    #[test]
    fn no_text_field_accepts_a_pii_value_token_or_secret() {
        for planted in PLANTED {
            assert!(Name::new(planted).is_err(), "{planted}");
            assert!(SellerId::new(planted).is_err(), "{planted}");
            assert!(Id::new(planted).is_err(), "{planted}");
            assert!(Template::new(planted).is_err(), "{planted}");
            assert_eq!(Name::lossy(planted).as_str(), "invalid");
        }
        // Nor can they be read back into a record from a file.
        for planted in PLANTED {
            for field in [
                "tool",
                "actor",
                "role",
                "seller",
                "operation",
                "method",
                "path",
                "request_id",
                "upstream_request_id",
                "order_id",
                "client_id",
                "reason",
            ] {
                let json = serde_json::json!({"kind": "request", field: planted});
                assert!(
                    serde_json::from_value::<Record>(json).is_err(),
                    "{field} accepted {planted:?}"
                );
            }
        }
        let json = serde_json::json!({"kind": "request", "buyer_email": "x"});
        assert!(serde_json::from_value::<Record>(json).is_err());
    }

    #[test]
    fn real_identifiers_fit() {
        assert!(Name::new("label-printer_2.0").is_ok());
        assert!(SellerId::new("A2EUQ1WTGCTBG2").is_ok());
        assert!(Id::new("123-1234567-1234567").is_ok());
        assert!(Id::new("8b1c4e2a-0f4e-4c1b-9a53-2f1d2b9e7c10").is_ok());
        assert!(Id::new("ordersV0.getOrderAddress").is_ok());
        assert!(Template::new("/orders/v0/orders/{orderId}/address").is_ok());
        assert!(Name::new("accounting-export-for-european-marketplaces").is_ok());
        assert!(Id::new("amzn1.sp.solution.9f4a6c2e-1b3d-4e5f-8a7b-6c5d4e3f2a1b").is_ok());
    }

    #[test]
    fn a_record_round_trips_and_writes_only_what_is_set() {
        let op = crate::catalog::Catalog::builtin()
            .by_key("ordersV0.getOrderAddress")
            .unwrap();
        let mut r = Record::request("a1b2c3-0000000001")
            .with_operation(op)
            .with_tool("labels")
            .with_role("shipping")
            .with_seller("A1TESTSELLER01")
            .with_status(200);
        r.limiter = Some(Limiter {
            decision: Decision::Waited,
            wait_ms: 12,
        });
        r.token = Some(TokenKind::Rdt);
        r.pii = vec![
            PiiUse {
                category: Category::Address,
                action: Action::Pass,
            },
            PiiUse {
                category: Category::Phone,
                action: Action::Drop,
            },
        ];
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"kind":"request","request_id":"a1b2c3-0000000001","tool":"labels","role":"shipping","seller":"A1TESTSELLER01","operation":"ordersV0.getOrderAddress","method":"GET","path":"/orders/v0/orders/{orderId}/address","status":200,"limiter":{"decision":"waited","wait_ms":12},"token":"rdt","pii":[{"category":"address","action":"pass"},{"category":"phone","action":"drop"}]}"#
        );
        assert_eq!(serde_json::from_str::<Record>(&text).unwrap(), r);
        assert_eq!(r.received().collect::<Vec<_>>(), vec![Category::Address]);
    }
}
