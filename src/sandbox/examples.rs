//! The static `x-amzn-api-sandbox` examples from Amazon's models, and matching requests to them.
//!
//! `fixtures/sandbox-examples.json` holds 913 request/response pairs. An example matches a request
//! when each path parameter, query parameter and body it names matches; parameters it does not
//! name are ignored. Scalars compare as strings (numbers also numerically, so `500` matches
//! `500.0`); array query values match a comma-separated value or repeated keys, in order. A body
//! matches when the request body parses as JSON equal to the example's.
//!
//! When several examples match, the most specific one (most parameters named, the body counting
//! as one) wins; among equally specific ones, the first in file order. So an example that adds a
//! parameter to another's (e.g. the `400` case with `sortBy=TEST` next to the catch-all `200`)
//! stays reachable. Two examples with identical requests cannot both be: the later is shadowed.

use std::collections::HashMap;
use std::sync::LazyLock;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::catalog::{Catalog, Operation};

/// The examples as compiled into the binary.
static EXAMPLES_JSON: &str = include_str!("../../fixtures/sandbox-examples.json");

static EXAMPLES: LazyLock<Examples> = LazyLock::new(|| {
    // The data is fixed at compile time and the tests prove it parses, so this cannot fail in a
    // binary whose tests passed.
    let examples = Examples::parse(EXAMPLES_JSON)
        .expect("fixtures/sandbox-examples.json is valid (checked by tests)");
    tracing::debug!(
        loaded = examples.len,
        skipped = examples.unknown_ops,
        "sandbox: static examples loaded"
    );
    examples
});

/// One example as stored in the file.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct RawExample {
    /// Catalog key of the operation.
    pub(super) op: String,
    /// Response status.
    pub(super) status: u16,
    /// What the request must carry.
    pub(super) request: RawRequest,
    /// Response body; `null` for none.
    pub(super) response: Option<Value>,
}

/// The request side of a stored example.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct RawRequest {
    /// Path parameters by name.
    #[serde(default)]
    pub(super) path: Map<String, Value>,
    /// Query parameters by name (strings, numbers, booleans or arrays).
    #[serde(default)]
    pub(super) query: Map<String, Value>,
    /// The JSON body, or `null` when the example does not constrain it.
    #[serde(default)]
    pub(super) body: Option<Value>,
}

/// An operation and its path parameters, for a path the examples route themselves.
type ExtraRoute = (&'static Operation, Vec<(&'static str, String)>);

/// Concrete example paths the catalog router does not accept, by (method, path).
type ExtraRoutes = HashMap<(Method, String), ExtraRoute>;

/// What a query parameter must be.
#[derive(Debug)]
enum QueryValue {
    Scalar(String),
    List(Vec<String>),
}

/// A parsed example, ready to match.
#[derive(Debug)]
pub(super) struct Example {
    /// Position in the file (0-based).
    pub(super) index: usize,
    /// The response status.
    pub(super) status: StatusCode,
    /// The response body (empty for `null` responses and 204s).
    pub(super) response: Bytes,
    path: Vec<(String, String)>,
    query: Vec<(String, QueryValue)>,
    body: Option<Value>,
}

impl Example {
    /// How many parameters the example names (the body counts as one).
    fn specificity(&self) -> usize {
        self.path.len() + self.query.len() + usize::from(self.body.is_some())
    }

    fn matches(&self, request: &RequestView<'_>) -> bool {
        let path_ok = self.path.iter().all(|(name, value)| {
            request
                .params
                .iter()
                .any(|(n, v)| *n == name.as_str() && v == value)
        });
        path_ok
            && self
                .query
                .iter()
                .all(|(name, expected)| query_matches(request.query, name, expected))
            && self
                .body
                .as_ref()
                .is_none_or(|expected| request.body == Some(expected))
    }
}

fn query_matches(query: &[(String, String)], name: &str, expected: &QueryValue) -> bool {
    let mut values = query
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str());
    match expected {
        QueryValue::Scalar(expected) => {
            let actual: Vec<&str> = values.collect();
            if actual.is_empty() {
                return false;
            }
            let actual = actual.join(",");
            actual == *expected || numbers_equal(&actual, expected)
        }
        QueryValue::List(expected) => {
            let Some(first) = values.next() else {
                return false;
            };
            let actual = std::iter::once(first)
                .chain(values)
                .flat_map(|v| v.split(','));
            actual.eq(expected.iter().map(String::as_str))
        }
    }
}

fn numbers_equal(a: &str, b: &str) -> bool {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(a), Ok(b)) => a == b && a.is_finite(),
        _ => false,
    }
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The parts of a request examples match on.
#[derive(Debug)]
pub(super) struct RequestView<'a> {
    /// Decoded path parameters.
    pub(super) params: &'a [(&'a str, String)],
    /// Decoded query pairs, repeated keys kept.
    pub(super) query: &'a [(String, String)],
    /// The request body as JSON, when it parsed (and was at most 1 MiB).
    pub(super) body: Option<&'a Value>,
}

/// Why the examples file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub(super) enum ExamplesError {
    /// Not the expected JSON.
    #[error("sandbox-examples.json: {0}")]
    Json(#[from] serde_json::Error),
    /// An example with a value the sandbox cannot match on.
    #[error("sandbox-examples.json example {index}: {reason}")]
    Bad {
        /// 0-based position.
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Every example, indexed for lookup.
#[derive(Debug)]
pub(super) struct Examples {
    /// Per operation key: examples, most specific first, then in file order.
    by_op: HashMap<String, Vec<Example>>,
    /// Concrete paths that examples use but the catalog router does not accept (an empty path
    /// parameter): (method, path) -> (operation key, path parameters).
    extra_routes: ExtraRoutes,
    /// How many examples name an operation the catalog does not have (they are skipped).
    pub(super) unknown_ops: usize,
    /// How many examples were loaded.
    pub(super) len: usize,
}

impl Examples {
    /// Parses the examples file.
    pub(super) fn parse(json: &str) -> Result<Examples, ExamplesError> {
        let raw: Vec<RawExample> = serde_json::from_str(json)?;
        let catalog = Catalog::builtin();
        let mut by_op: HashMap<String, Vec<Example>> = HashMap::new();
        let mut extra_routes = HashMap::new();
        let mut unknown_ops = 0;
        let len = raw.len();
        for (index, raw) in raw.into_iter().enumerate() {
            let bad = |reason: String| ExamplesError::Bad { index, reason };
            let Some(op) = catalog.by_key(&raw.op) else {
                unknown_ops += 1;
                continue;
            };
            let status = StatusCode::from_u16(raw.status)
                .map_err(|_| bad(format!("status {}", raw.status)))?;
            let path = raw
                .request
                .path
                .iter()
                .map(|(k, v)| {
                    scalar(v)
                        .map(|v| (k.clone(), v))
                        .ok_or_else(|| bad(format!("path parameter {k} is not a scalar")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let query = raw
                .request
                .query
                .iter()
                .map(|(k, v)| {
                    let value = match v {
                        Value::Array(items) => items
                            .iter()
                            .map(scalar)
                            .collect::<Option<Vec<_>>>()
                            .map(QueryValue::List),
                        other => scalar(other).map(QueryValue::Scalar),
                    };
                    value
                        .map(|value| (k.clone(), value))
                        .ok_or_else(|| bad(format!("query parameter {k} is not a scalar or list")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let response = match (&raw.response, status) {
                (_, StatusCode::NO_CONTENT) | (None, _) => Bytes::new(),
                (Some(value), _) => Bytes::from(serde_json::to_vec(value)?),
            };
            register_extra_route(op, &path, &mut extra_routes);
            by_op.entry(raw.op).or_default().push(Example {
                index,
                status,
                response,
                path,
                query,
                body: raw.request.body,
            });
        }
        for examples in by_op.values_mut() {
            // Stable: equally specific examples keep file order.
            examples.sort_by_key(|e| std::cmp::Reverse(e.specificity()));
        }
        Ok(Examples {
            by_op,
            extra_routes,
            unknown_ops,
            len,
        })
    }

    /// The (method, path) pairs routed by the examples themselves (for tests).
    #[cfg(test)]
    pub(super) fn extra_route_paths(&self) -> impl Iterator<Item = (&Method, &str)> {
        self.extra_routes.keys().map(|(m, p)| (m, p.as_str()))
    }

    /// The example answering a request to `op_key`, if any.
    pub(super) fn find(&self, op_key: &str, request: &RequestView<'_>) -> Option<&Example> {
        self.by_op.get(op_key)?.iter().find(|e| e.matches(request))
    }
}

/// Remembers the example's concrete path when it names every path parameter but the catalog
/// router cannot route it (e.g. an empty `asin`), so the example stays reachable.
fn register_extra_route(
    op: &'static Operation,
    path: &[(String, String)],
    extra_routes: &mut ExtraRoutes,
) {
    let names: Vec<&'static str> = op
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect();
    let mut params = Vec::with_capacity(names.len());
    for name in &names {
        match path.iter().find(|(n, _)| n == name) {
            Some((_, value)) => params.push((*name, value.clone())),
            None => return,
        }
    }
    let pairs: Vec<(&str, &str)> = params.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let concrete = op.expand_path(&pairs);
    let routed = Catalog::builtin()
        .route(&op.method, &concrete)
        .is_some_and(|r| r.operation.key == op.key);
    if !routed {
        extra_routes.insert((op.method.clone(), concrete), (op, params));
    }
}

/// The loaded examples.
pub(super) fn examples() -> &'static Examples {
    &EXAMPLES
}

/// The example answering a request to `op_key`, if any.
pub(super) fn find(op_key: &str, request: &RequestView<'_>) -> Option<&'static Example> {
    examples().find(op_key, request)
}

/// The operation and path parameters for a concrete example path the catalog does not route.
pub(super) fn extra_route(method: &Method, path: &str) -> Option<ExtraRoute> {
    examples()
        .extra_routes
        .get(&(method.clone(), path.to_owned()))
        .cloned()
}

/// The raw examples, in file order (for tests).
#[cfg(test)]
pub(super) fn raw() -> Vec<RawExample> {
    serde_json::from_str(EXAMPLES_JSON).unwrap_or_default()
}
