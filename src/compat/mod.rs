//! Orders v0 compatibility (issue 18): the six Orders v0 read operations answered from Orders
//! 2026-01-01, for tools that still call v0 after Amazon removes it (after March 27, 2027).
//!
//! - [`request`]: a v0 request becomes its 2026 call (`searchOrders`, or `getOrder` with
//!   `includedData`), every v0 parameter mapped or refused.
//! - [`map`]: `data/orders-v0-map.tsv`, every v0 response field produced from a named 2026 field
//!   with its conversion, or listed as unavailable with the reason; the engine that applies it.
//! - [`token`]: `NextToken`s that wrap the 2026 `paginationToken`.
//!
//! [`Compat`] decides per tool whether a v0 call is translated (`[compat] orders_v0` and
//! `[tools.<name>] orders_v0`) and builds the v0 answer. It does no I/O: the pipeline sends the
//! 2026 call through the usual phases (credentials, the 2026 operation's rate limit) and puts
//! the v0-shaped answer through the v0 operation's PII policy.

pub mod map;
pub mod request;
pub mod token;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::ConfigIssue;
use crate::crypto::MasterKey;
use crate::store::Region;
use map::{FieldMap, Report, Scope};
pub use request::{Caller, Kind, Plan};

/// Errors of translating a v0 call. Answered in v0's error shape by `proxy::rescue`; none
/// carries a value from the request or the answer, only fixed names.
#[derive(Debug, thiserror::Error)]
pub enum CompatError {
    /// A v0 query parameter Orders 2026-01-01 has no counterpart for (400).
    #[error("the Orders v0 parameter {0} cannot be translated to Orders 2026-01-01")]
    Untranslatable(&'static str),
    /// A v0 query parameter is missing, unknown or has a value v0 does not define (400).
    #[error("the Orders v0 parameter {0} is missing or invalid")]
    BadParameter(&'static str),
    /// A filter sent with a `NextToken` differs from the first page's, which the token
    /// continues (400; the v0 parameter's name).
    #[error("the Orders v0 parameter {0} sent with a NextToken differs from the first page's")]
    NextTokenFilter(&'static str),
    /// A `NextToken` the gateway did not issue for this tool and seller (400).
    #[error("the NextToken is not one the gateway issued for this tool and seller")]
    TokenInvalid,
    /// A `NextToken` older than the 2026 token it wraps may be (400).
    #[error("the NextToken has expired")]
    TokenExpired,
    /// A `NextToken` could not be sealed (500).
    #[error("the NextToken could not be sealed")]
    TokenSeal,
    /// The 2026 answer is not the JSON its model describes (502).
    #[error("the Orders 2026-01-01 answer does not have the model's shape: {0}")]
    UpstreamShape(&'static str),
    /// A defect of the gateway (500).
    #[error("orders v0 translation failed: {0}")]
    Internal(&'static str),
}

/// How v0 Orders calls are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Sent to Amazon's v0 as they are.
    Passthrough,
    /// Always answered from Orders 2026-01-01.
    Translate,
    /// Passed through until the removal date or until Amazon answers a v0 call as removed,
    /// translated from then on.
    Auto,
}

impl Mode {
    fn parse(text: &str) -> Option<Mode> {
        match text {
            "passthrough" => Some(Mode::Passthrough),
            "translate" => Some(Mode::Translate),
            "auto" => Some(Mode::Auto),
            _ => None,
        }
    }

    /// The mode's name in the config.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Passthrough => "passthrough",
            Mode::Translate => "translate",
            Mode::Auto => "auto",
        }
    }
}

/// When `auto` starts translating: the first instant after March 27, 2027 (UTC), the last day
/// Amazon's migration notice gives (`FACTS.md` (k)).
pub const REMOVAL_UNIX: i64 = 1_806_192_000; // 2027-03-28T00:00:00Z

/// `[compat]`.
#[derive(Debug, Default, Deserialize)]
pub struct RawCompat {
    /// `passthrough` | `translate` | `auto` (default `auto`).
    pub orders_v0: Option<String>,
    /// How many different sellers of one region Amazon must answer a v0 call as removed
    /// before `auto` translates that region's calls (default 3, at least 2): one seller's
    /// answer, whatever it means for that seller, never switches everyone.
    pub auto_removal_sellers: Option<u32>,
}

/// The default of `[compat] auto_removal_sellers`.
pub const DEFAULT_REMOVAL_SELLERS: u32 = 3;

/// The validated `[compat]` section with the tools' overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompatConfig {
    /// The mode of tools without an override.
    pub orders_v0: Mode,
    /// `[tools.<name>] orders_v0`.
    pub tools: BTreeMap<String, Mode>,
    /// `auto_removal_sellers`: different sellers of a region answered as removed before
    /// `auto` translates that region.
    pub removal_sellers: u32,
}

impl CompatConfig {
    /// `auto` for every tool.
    pub fn defaults() -> CompatConfig {
        CompatConfig {
            orders_v0: Mode::Auto,
            tools: BTreeMap::new(),
            removal_sellers: DEFAULT_REMOVAL_SELLERS,
        }
    }

    /// The mode of `tool`.
    pub fn mode_for(&self, tool: &str) -> Mode {
        self.tools.get(tool).copied().unwrap_or(self.orders_v0)
    }
}

impl RawCompat {
    /// Validates `[compat]` and the tools' `orders_v0` (given as (tool, value)).
    pub fn resolve<'a>(
        &self,
        tools: impl Iterator<Item = (&'a String, Option<&'a String>)>,
    ) -> Result<CompatConfig, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let mut check = |path: String, value: &str| {
            let mode = Mode::parse(value);
            if mode.is_none() {
                issues.push(ConfigIssue {
                    path,
                    message: format!(
                        "{value:?} is not a mode: use \"passthrough\", \"translate\" or \"auto\""
                    ),
                });
            }
            mode
        };
        let orders_v0 = match &self.orders_v0 {
            Some(v) => check("compat.orders_v0".into(), v).unwrap_or(Mode::Auto),
            None => Mode::Auto,
        };
        let mut per_tool = BTreeMap::new();
        for (tool, value) in tools {
            if let Some(value) = value {
                if let Some(mode) = check(format!("tools.{tool}.orders_v0"), value) {
                    per_tool.insert(tool.clone(), mode);
                }
            }
        }
        let removal_sellers = self.auto_removal_sellers.unwrap_or(DEFAULT_REMOVAL_SELLERS);
        if !(2..=1000).contains(&removal_sellers) {
            issues.push(ConfigIssue {
                path: "compat.auto_removal_sellers".into(),
                message: format!(
                    "{removal_sellers} is out of range: at least 2 sellers (one seller's answer never switches everyone), at most 1000"
                ),
            });
        }
        if issues.is_empty() {
            Ok(CompatConfig {
                orders_v0,
                tools: per_tool,
                removal_sellers,
            })
        } else {
            Err(issues)
        }
    }
}

/// The translator: the mode per tool, per region whether Amazon was seen answering v0 as
/// removed, the field map, and counters.
#[derive(Debug)]
pub struct Compat {
    config: RwLock<CompatConfig>,
    /// Per region: the sellers Amazon answered a v0 call as removed for, and since when `auto`
    /// translates the region's calls.
    removal: Mutex<HashMap<Region, Removal>>,
    map: FieldMap,
    translated: AtomicU64,
    unconverted: AtomicU64,
    removal_seen: AtomicU64,
    /// Locks found poisoned (a panic while one was held); recovered, logged and counted.
    poisoned: AtomicU64,
}

/// What `auto` knows of one region.
#[derive(Debug, Default, Clone)]
struct Removal {
    /// Different sellers whose v0 calls Amazon answered as removed, since the region's last
    /// successful v0 answer.
    sellers: BTreeSet<String>,
    /// When `auto` started translating the region (unix seconds).
    since: Option<i64>,
}

/// `auto` switched a region to translation: enough different sellers were answered as removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switched {
    /// The region.
    pub region: Region,
    /// How many different sellers were answered as removed.
    pub sellers: usize,
}

/// One region's state for the admin listener.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RegionStatus {
    /// The region.
    pub region: Region,
    /// Whether `auto` translates this region's calls (the removal date aside).
    pub translating: bool,
    /// Since when (unix seconds).
    pub since: Option<i64>,
    /// Different sellers answered as removed so far.
    pub sellers_answered_removed: usize,
    /// How many it takes.
    pub threshold: u32,
}

/// Every region, in a fixed order (metrics, status).
const REGIONS: [Region; 3] = [Region::Na, Region::Eu, Region::Fe];

impl Compat {
    /// A translator with the embedded field map.
    pub fn new(config: CompatConfig) -> Result<Compat, CompatError> {
        let map = FieldMap::parse(map::MAP_TSV)
            .map_err(|_| CompatError::Internal("data/orders-v0-map.tsv does not parse"))?;
        Ok(Compat {
            config: RwLock::new(config),
            removal: Mutex::new(HashMap::new()),
            map,
            translated: AtomicU64::new(0),
            unconverted: AtomicU64::new(0),
            removal_seen: AtomicU64::new(0),
            poisoned: AtomicU64::new(0),
        })
    }

    /// Replaces the modes and the threshold (SIGHUP reload). What `auto` has seen stays: use
    /// [`Compat::reset_removal`] to forget it.
    pub fn reload(&self, config: CompatConfig) {
        *self.config_mut() = config;
    }

    /// The field map.
    pub fn map(&self) -> &FieldMap {
        &self.map
    }

    /// The v0 operation's kind when this call of `tool` for a seller of `region` is to be
    /// translated, at unix time `now`.
    pub fn translates(&self, op_key: &str, tool: &str, region: Region, now: i64) -> Option<Kind> {
        let kind = Kind::of(op_key)?;
        let mode = self.config().mode_for(tool);
        let on = match mode {
            Mode::Passthrough => false,
            Mode::Translate => true,
            Mode::Auto => now >= REMOVAL_UNIX || self.region_translating(region),
        };
        on.then_some(kind)
    }

    /// Looks at Amazon's answer to a v0 call for `seller` (of `region`) that was passed
    /// through. An answer saying the API is removed ([`answers_removed`]) counts the seller;
    /// once `auto_removal_sellers` different sellers of the region were answered so, `auto`
    /// translates the region's calls from `now` on, and the switch is returned (the caller
    /// audits it). A successful v0 answer forgets the sellers counted (v0 is there), unless the
    /// region already switched.
    pub fn observe_v0(
        &self,
        kind: Kind,
        status: http::StatusCode,
        (region, seller): (Region, &str),
        now: i64,
    ) -> Option<Switched> {
        let removed = answers_removed(kind, status);
        if !removed && !status.is_success() {
            return None;
        }
        let threshold = self.config().removal_sellers;
        let mut all = self.removal();
        let state = all.entry(region).or_default();
        if state.since.is_some() {
            if removed {
                self.removal_seen.fetch_add(1, Ordering::Relaxed);
            }
            return None;
        }
        if !removed {
            state.sellers.clear();
            return None;
        }
        self.removal_seen.fetch_add(1, Ordering::Relaxed);
        state.sellers.insert(seller.to_string());
        let sellers = state.sellers.len();
        if sellers < threshold as usize {
            tracing::info!(
                operation = kind.v0_key(),
                status = status.as_u16(),
                region = region.as_str(),
                sellers,
                threshold,
                "Amazon answered an Orders v0 call as removed; auto translates the region once enough different sellers are answered so."
            );
            return None;
        }
        state.since = Some(now);
        tracing::warn!(
            operation = kind.v0_key(),
            status = status.as_u16(),
            region = region.as_str(),
            sellers,
            "Amazon answered Orders v0 calls of enough different sellers as removed; tools in compat mode auto are translated to Orders 2026-01-01 in this region from now on."
        );
        Some(Switched { region, sellers })
    }

    /// Forgets what `auto` saw in `region` (every region for `None`): its calls pass through
    /// again until the removal date or new removed answers. Returns the regions that were
    /// translating.
    pub fn reset_removal(&self, region: Option<Region>) -> Vec<Region> {
        let mut all = self.removal();
        let mut was = Vec::new();
        for r in REGIONS {
            if region.is_none_or(|only| only == r) {
                if let Some(state) = all.remove(&r) {
                    if state.since.is_some() {
                        was.push(r);
                    }
                }
            }
        }
        tracing::warn!(
            regions = ?region.map_or("all", Region::as_str),
            "What compat mode auto saw of Orders v0's removal was reset."
        );
        was
    }

    /// Whether `auto` translates `region`'s calls because of removed answers.
    pub fn region_translating(&self, region: Region) -> bool {
        self.removal()
            .get(&region)
            .is_some_and(|s| s.since.is_some())
    }

    /// Every region's state (the admin listener).
    pub fn status(&self) -> Vec<RegionStatus> {
        let threshold = self.config().removal_sellers;
        let all = self.removal();
        REGIONS
            .into_iter()
            .map(|region| {
                let state = all.get(&region).cloned().unwrap_or_default();
                RegionStatus {
                    region,
                    translating: state.since.is_some(),
                    since: state.since,
                    sellers_answered_removed: state.sellers.len(),
                    threshold,
                }
            })
            .collect()
    }

    /// The config, read. A poisoned lock is recovered (see `poisoned`).
    fn config(&self) -> std::sync::RwLockReadGuard<'_, CompatConfig> {
        self.config.read().unwrap_or_else(|p| {
            self.poisoned("config");
            self.config.clear_poison();
            p.into_inner()
        })
    }

    /// The config, to replace.
    fn config_mut(&self) -> std::sync::RwLockWriteGuard<'_, CompatConfig> {
        self.config.write().unwrap_or_else(|p| {
            self.poisoned("config");
            self.config.clear_poison();
            p.into_inner()
        })
    }

    /// What `auto` saw, per region.
    fn removal(&self) -> std::sync::MutexGuard<'_, HashMap<Region, Removal>> {
        self.removal.lock().unwrap_or_else(|p| {
            self.poisoned("removal");
            self.removal.clear_poison();
            p.into_inner()
        })
    }

    /// A lock was found poisoned (a panic while it was held): its data is whole (every write
    /// under these locks is one assignment or insertion), so it is used and the poison cleared;
    /// logged and counted once per poisoning, never silent.
    fn poisoned(&self, which: &'static str) {
        self.poisoned.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            lock = which,
            "A compat lock was poisoned by a panic elsewhere; its data is used as it was."
        );
    }

    /// Builds the v0 answer of `plan` from the 2026 operation's successful JSON answer, with
    /// how many v0 fields were left out because their 2026 value could not be converted (each
    /// counted in `spgate_compat_orders_v0_unconverted_total` and logged by name, never value).
    pub fn answer(
        &self,
        plan: &Plan,
        body: &[u8],
        caller: &Caller<'_>,
        key: &MasterKey,
    ) -> Result<(Vec<u8>, u32), CompatError> {
        let root: Value =
            serde_json::from_slice(body).map_err(|_| CompatError::UpstreamShape("not JSON"))?;
        let mut report = Report::default();
        let mut wrap = |t: &str| {
            token::wrap(
                key,
                caller.tool,
                caller.seller,
                t,
                &plan.search_query,
                caller.now,
            )
        };
        let payload = build_payload(&self.map, plan.kind, &root, &mut wrap, &mut report)?;
        self.translated.fetch_add(1, Ordering::Relaxed);
        if !report.unconverted.is_empty() {
            self.unconverted
                .fetch_add(report.unconverted.len() as u64, Ordering::Relaxed);
            for (scope, field) in &report.unconverted {
                tracing::warn!(
                    operation = plan.kind.v0_key(),
                    scope,
                    field = field.as_str(),
                    "An Orders 2026-01-01 value could not be converted to its v0 field (not the model's type, or no v0 counterpart); the v0 field was left out."
                );
            }
        }
        let mut out = Map::new();
        out.insert("payload".into(), Value::Object(payload));
        let bytes = serde_json::to_vec(&Value::Object(out))
            .map_err(|_| CompatError::Internal("serializing the v0 answer"))?;
        Ok((
            bytes,
            u32::try_from(report.unconverted.len()).unwrap_or(u32::MAX),
        ))
    }

    /// The counters in Prometheus' text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP spgate_compat_orders_v0_translated_total Orders v0 calls answered from Orders 2026-01-01.\n# TYPE spgate_compat_orders_v0_translated_total counter\nspgate_compat_orders_v0_translated_total {}\n# HELP spgate_compat_orders_v0_unconverted_total v0 fields left out of translated answers because the 2026 value could not be converted.\n# TYPE spgate_compat_orders_v0_unconverted_total counter\nspgate_compat_orders_v0_unconverted_total {}\n# HELP spgate_compat_orders_v0_removed_answers_total Orders v0 calls Amazon answered as removed.\n# TYPE spgate_compat_orders_v0_removed_answers_total counter\nspgate_compat_orders_v0_removed_answers_total {}\n# HELP spgate_compat_lock_poisoned_total Compat locks found poisoned (recovered).\n# TYPE spgate_compat_lock_poisoned_total counter\nspgate_compat_lock_poisoned_total {}",
            self.translated.load(Ordering::Relaxed),
            self.unconverted.load(Ordering::Relaxed),
            self.removal_seen.load(Ordering::Relaxed),
            self.poisoned.load(Ordering::Relaxed),
        );
        let status = self.status();
        let _ = writeln!(
            out,
            "# HELP spgate_compat_orders_v0_auto_translating Whether compat mode auto translates a region's Orders v0 calls because Amazon answered them as removed.\n# TYPE spgate_compat_orders_v0_auto_translating gauge"
        );
        for s in &status {
            let _ = writeln!(
                out,
                "spgate_compat_orders_v0_auto_translating{{region=\"{}\"}} {}",
                s.region.as_str(),
                u8::from(s.translating),
            );
        }
        let _ = writeln!(
            out,
            "# HELP spgate_compat_orders_v0_removed_sellers Different sellers of a region whose Orders v0 calls Amazon answered as removed (auto switches at auto_removal_sellers).\n# TYPE spgate_compat_orders_v0_removed_sellers gauge"
        );
        for s in &status {
            let _ = writeln!(
                out,
                "spgate_compat_orders_v0_removed_sellers{{region=\"{}\"}} {}",
                s.region.as_str(),
                s.sellers_answered_removed,
            );
        }
    }
}

/// Whether Amazon's answer to a v0 call says the v0 API is gone: `410 Gone` for any of the six
/// operations, or `404` for `getOrders` (its path names a collection, never a missing order,
/// so a 404 can only mean the API itself is not there).
pub fn answers_removed(kind: Kind, status: http::StatusCode) -> bool {
    status == http::StatusCode::GONE
        || (kind == Kind::Orders && status == http::StatusCode::NOT_FOUND)
}

/// The v0 `payload` of `kind` from the 2026 answer `root`.
pub fn build_payload(
    map: &FieldMap,
    kind: Kind,
    root: &Value,
    wrap: &mut map::WrapToken<'_>,
    report: &mut Report,
) -> Result<Map<String, Value>, CompatError> {
    match kind {
        Kind::Orders => list(
            map,
            (Scope::Orders, Scope::Order),
            root,
            ("orders", "Orders"),
            wrap,
            report,
        ),
        Kind::Items => list(
            map,
            (Scope::Items, Scope::Item),
            order(root)?,
            ("orderItems", "OrderItems"),
            wrap,
            report,
        ),
        Kind::ItemsBuyerInfo => list(
            map,
            (Scope::ItemsBuyer, Scope::ItemBuyer),
            order(root)?,
            ("orderItems", "OrderItems"),
            wrap,
            report,
        ),
        Kind::Order => map::build(map, Scope::Order, order(root)?, wrap, report),
        Kind::BuyerInfo => map::build(map, Scope::Buyer, order(root)?, wrap, report),
        Kind::Address => map::build(map, Scope::Address, order(root)?, wrap, report),
    }
}

/// The `order` of a 2026 `getOrder` answer.
fn order(root: &Value) -> Result<&Value, CompatError> {
    root.get("order")
        .filter(|o| o.is_object())
        .ok_or(CompatError::UpstreamShape("getOrder answer without order"))
}

/// A v0 list payload: the list scope's own fields and the list of its elements.
fn list(
    map: &FieldMap,
    (scope, element): (Scope, Scope),
    source: &Value,
    (from, to): (&str, &str),
    wrap: &mut map::WrapToken<'_>,
    report: &mut Report,
) -> Result<Map<String, Value>, CompatError> {
    let mut payload = map::build(map, scope, source, wrap, report)?;
    let built = source
        .get(from)
        .and_then(Value::as_array)
        .ok_or(CompatError::UpstreamShape(
            "a list the model requires is missing",
        ))?
        .iter()
        .map(|e| map::build(map, element, e, wrap, report).map(Value::Object))
        .collect::<Result<Vec<_>, _>>()?;
    payload.insert(to.into(), Value::Array(built));
    Ok(payload)
}
