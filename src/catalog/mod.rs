//! Every SP-API operation in Amazon's models, compiled into the binary.
//!
//! The rows come from `data/operations.tsv`, which `tools/gen-data.py` derives from Amazon's
//! models (usage plans from each operation's "Usage Plan" table, the restricted list and the PII
//! map index from `pii-fields.md`). `tests/catalog.rs` checks the file against the models when
//! they are present. Routing goes through one radix tree per HTTP method ([`matchit`]), so finding
//! the operation for a request never scans the 370 templates.

use std::collections::HashMap;
use std::fmt;
use std::sync::LazyLock;

use http::Method;

mod app_limits;

pub use app_limits::{kind_from_query, BadCallKind, CallKind};

/// The catalog as compiled into the binary.
static OPERATIONS_TSV: &str = include_str!("../../data/operations.tsv");

/// Amazon's application-wide limits, compiled into the binary.
static APP_LIMITS_TSV: &str = include_str!("../../data/app-rate-limits.tsv");

static BUILTIN: LazyLock<Catalog> = LazyLock::new(|| {
    // The data is fixed at compile time and `builtin_catalog_loads` proves it parses, so this
    // cannot fail in a binary whose tests passed.
    Catalog::parse(OPERATIONS_TSV)
        .and_then(|c| c.with_app_limits(APP_LIMITS_TSV))
        .expect("data/operations.tsv and data/app-rate-limits.tsv are valid (checked by tests)")
});

/// One SP-API operation, as Amazon's model describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    /// Unique key: `<model>.<operationId>`, e.g. `ordersV0.getOrderAddress`.
    pub key: &'static str,
    /// The API family, e.g. `orders` (the models' folder name without `-api-model`).
    pub api: &'static str,
    /// The model file's stem, which names the API version, e.g. `ordersV0`.
    pub model: &'static str,
    /// The operationId from the model.
    pub operation_id: &'static str,
    /// HTTP method.
    pub method: Method,
    /// Path template with `{param}` segments, e.g. `/orders/v0/orders/{orderId}/address`.
    pub path: &'static str,
    /// Amazon's published usage plan; `None` where Amazon publishes none.
    pub usage_plan: Option<UsagePlan>,
    /// Amazon's limit for this operation per application, across all its sellers; `None` where
    /// Amazon publishes none.
    pub app_plan: Option<UsagePlan>,
    /// Amazon's application-wide sub-limits for kinds of calls of this operation (in addition
    /// to `app_plan`).
    pub app_sub_limits: &'static [(CallKind, UsagePlan)],
    /// Whether Amazon requires a Restricted Data Token for this operation.
    pub restricted: bool,
    /// The LWA scope for grantless operations (client_credentials grant); `None` otherwise.
    pub grantless_scope: Option<&'static str>,
    /// Reference to this operation's buyer-PII field map, when its responses carry buyer PII.
    pub pii_map: Option<&'static str>,
    /// The model file this operation came from, relative to the models directory.
    pub model_file: &'static str,
}

/// A token bucket as Amazon publishes it: `rate` tokens per second, up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UsagePlan {
    /// Tokens added per second (may be below 1, e.g. 0.0167 for one a minute).
    pub rate_per_second: f64,
    /// Bucket size: how many requests may be made at once from a full bucket.
    pub burst: u32,
}

/// A request matched to its operation, with the decoded path parameters.
#[derive(Debug)]
pub struct Route<'c> {
    /// The operation the request names.
    pub operation: &'c Operation,
    /// Path parameters in template order, percent-decoded.
    pub params: Vec<(&'c str, String)>,
}

/// Why the catalog data could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A row does not have the expected columns or values.
    #[error("operations.tsv line {line}: {reason}")]
    BadRow {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Two operations claim the same method and path shape.
    #[error("operations.tsv: route {method} {path} conflicts: {source}")]
    Conflict {
        /// HTTP method.
        method: String,
        /// Path template.
        path: String,
        /// The router's explanation.
        source: matchit::InsertError,
    },
}

/// Every SP-API operation, indexed for routing.
pub struct Catalog {
    operations: Vec<Operation>,
    by_key: HashMap<&'static str, usize>,
    routers: Vec<(Method, matchit::Router<usize>)>,
}

// === impl Catalog ===

impl Catalog {
    /// The catalog compiled into the binary.
    pub fn builtin() -> &'static Catalog {
        &BUILTIN
    }

    /// Parses the catalog TSV (header line, then one operation per line; `#` lines are comments).
    pub fn parse(tsv: &'static str) -> Result<Catalog, CatalogError> {
        let mut operations = Vec::new();
        let mut header_seen = false;
        for (i, line) in tsv.lines().enumerate() {
            let line_no = i + 1;
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if !header_seen {
                header_seen = true;
                continue;
            }
            operations.push(parse_row(line, line_no)?);
        }
        let mut by_key = HashMap::with_capacity(operations.len());
        let mut routers: Vec<(Method, matchit::Router<usize>)> = Vec::new();
        for (idx, op) in operations.iter().enumerate() {
            if by_key.insert(op.key, idx).is_some() {
                return Err(CatalogError::BadRow {
                    line: 0,
                    reason: format!("duplicate operation key {}", op.key),
                });
            }
            let router = match routers.iter_mut().find(|(m, _)| *m == op.method) {
                Some((_, r)) => r,
                None => {
                    routers.push((op.method.clone(), matchit::Router::new()));
                    &mut routers.last_mut().expect("just pushed").1
                }
            };
            router
                .insert(op.path, idx)
                .map_err(|source| CatalogError::Conflict {
                    method: op.method.to_string(),
                    path: op.path.to_string(),
                    source,
                })?;
        }
        Ok(Catalog {
            operations,
            by_key,
            routers,
        })
    }

    /// Adds Amazon's application-wide limits (`data/app-rate-limits.tsv`) to the operations
    /// they name; a row naming no operation, or a limit given twice, is an error.
    pub fn with_app_limits(mut self, tsv: &'static str) -> Result<Catalog, CatalogError> {
        let rows = app_limits::parse(tsv)?;
        let mut subs: HashMap<usize, Vec<(CallKind, UsagePlan)>> = HashMap::new();
        for row in rows {
            let bad = |reason: String| CatalogError::BadRow { line: 0, reason };
            let idx = *self.by_key.get(row.key).ok_or_else(|| {
                bad(format!(
                    "app-rate-limits.tsv names unknown operation {}",
                    row.key
                ))
            })?;
            match row.kind {
                None if self.operations[idx].app_plan.is_some() => {
                    return Err(bad(format!("two application limits for {}", row.key)));
                }
                None => self.operations[idx].app_plan = Some(row.plan),
                Some(kind) => {
                    let list = subs.entry(idx).or_default();
                    if list.iter().any(|(k, _)| *k == kind) {
                        return Err(bad(format!("two {kind} limits for {}", row.key)));
                    }
                    list.push((kind, row.plan));
                }
            }
        }
        for (idx, list) in subs {
            // Once per operation for the process's catalog: the slices live as long as it.
            self.operations[idx].app_sub_limits = Box::leak(list.into_boxed_slice());
        }
        Ok(self)
    }

    /// All operations, in model order.
    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    /// The operation with this key (`<model>.<operationId>`).
    pub fn by_key(&self, key: &str) -> Option<&Operation> {
        self.by_key.get(key).map(|&i| &self.operations[i])
    }

    /// Finds the operation for a method and a request path (without the query string).
    ///
    /// Returns `None` for a path no operation has, or a method the path does not accept.
    pub fn route(&self, method: &Method, path: &str) -> Option<Route<'_>> {
        let (_, router) = self.routers.iter().find(|(m, _)| m == method)?;
        let matched = router.at(path).ok()?;
        let operation = &self.operations[*matched.value];
        let mut params = Vec::with_capacity(matched.params.len());
        for (name, raw) in matched.params.iter() {
            // An empty segment never names a resource (`/orders/v0/orders//address`).
            if raw.is_empty() {
                return None;
            }
            let decoded = percent_encoding::percent_decode_str(raw)
                .decode_utf8()
                .ok()?
                .into_owned();
            // A dot segment names no resource, and a normalising hop could turn it into
            // another operation than the one authorized here.
            if decoded == "." || decoded == ".." {
                return None;
            }
            // The template's own parameter name, so it outlives the request.
            let name = template_param(operation.path, name)?;
            params.push((name, decoded));
        }
        Some(Route { operation, params })
    }
}

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Catalog")
            .field("operations", &self.operations.len())
            .finish()
    }
}

// === impl Operation ===

impl Operation {
    /// What the gateway knows about this operation's buyer PII: mapped, declared to carry none
    /// (with the reason), or unclassified (refused before sending).
    pub fn pii_class(&self) -> crate::pii::Classification<'static> {
        crate::pii::Classifier::builtin().classify(self.key)
    }

    /// The application-wide sub-limit for a kind of call, if Amazon has one.
    pub fn app_sub_limit(&self, kind: CallKind) -> Option<UsagePlan> {
        self.app_sub_limits
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, p)| *p)
    }

    /// Builds the concrete path for this operation from parameter values (percent-encoded).
    pub fn expand_path(&self, params: &[(&str, &str)]) -> String {
        let mut out = String::with_capacity(self.path.len() + 16);
        for seg in self.path.split('/').skip(1) {
            out.push('/');
            match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => {
                    let value = params
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, v)| *v)
                        .unwrap_or("");
                    out.extend(percent_encoding::utf8_percent_encode(value, SEGMENT));
                }
                None => out.push_str(seg),
            }
        }
        out
    }
}

/// Characters percent-encoded inside one path segment.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn template_param(template: &'static str, name: &str) -> Option<&'static str> {
    template
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .find(|p| *p == name)
}

fn parse_row(line: &'static str, line_no: usize) -> Result<Operation, CatalogError> {
    let bad = |reason: String| CatalogError::BadRow {
        line: line_no,
        reason,
    };
    let cols: Vec<&'static str> = line.split('\t').collect();
    let [key, api, model, operation_id, method, path, rate, burst, restricted, grantless, pii, model_file] =
        cols[..]
    else {
        return Err(bad(format!("expected 12 columns, found {}", cols.len())));
    };
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|_| bad(format!("bad method {method}")))?;
    let usage_plan = match (rate, burst) {
        ("", "") => None,
        (r, b) => {
            let rate_per_second: f64 = r.parse().map_err(|_| bad(format!("bad rate {r}")))?;
            let burst: u32 = b.parse().map_err(|_| bad(format!("bad burst {b}")))?;
            if !rate_per_second.is_finite() || rate_per_second <= 0.0 || burst == 0 {
                return Err(bad(format!("usage plan must be positive: {r}/{b}")));
            }
            Some(UsagePlan {
                rate_per_second,
                burst,
            })
        }
    };
    let restricted = match restricted {
        "1" => true,
        "0" => false,
        other => return Err(bad(format!("bad restricted flag {other}"))),
    };
    let opt = |s: &'static str| (!s.is_empty()).then_some(s);
    if !path.starts_with('/') {
        return Err(bad(format!("path must start with /: {path}")));
    }
    Ok(Operation {
        key,
        api,
        model,
        operation_id,
        method,
        path,
        usage_plan,
        app_plan: None,
        app_sub_limits: &[],
        restricted,
        grantless_scope: opt(grantless),
        pii_map: opt(pii),
        model_file,
    })
}

#[cfg(test)]
mod tests;
