//! Alert rules evaluated on the audit stream, in the writer (off the request path).
//!
//! Rules (see [`AlertRules`]): more than N reveals by one tool within an hour; any request for a
//! seller the tool may not use; a burst of denials (401/403) by one tool; a role receiving a PII
//! category it never received before. Each alert becomes a `tracing` warning, a counter, an
//! `alert` record in the chain and, when configured, a webhook POST of a small JSON body.
//! Alerts carry names, ids, categories and counts, never a value.
//!
//! "Never received before" is remembered per instance in `audit-<instance>.seen`, MACed with
//! the audit key (a file that does not verify is ignored with a warning, so every category
//! alerts once more: noisy, never silent). A new instance starts with nothing seen, so the first
//! responses of each role raise one alert per category: a bounded, one-time list of what each
//! role receives.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ring::hmac;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::config::AlertRules;
use super::record::{Kind, Name, PiiUse, Reason, Record, SellerId};
use crate::pii::{Action, Category};

/// One alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// The rule, e.g. `denial_burst`.
    pub rule: Reason,
    /// The tool concerned.
    pub tool: Option<Name>,
    /// The role concerned.
    pub role: Option<Name>,
    /// The seller concerned.
    pub seller: Option<SellerId>,
    /// The PII category concerned.
    pub category: Option<Category>,
    /// Events counted.
    pub count: u64,
    /// Within this window (seconds).
    pub window_secs: u64,
}

/// The state of the rules.
pub(crate) struct Alerts {
    rules: AlertRules,
    reveals: HashMap<String, VecDeque<OffsetDateTime>>,
    denials: HashMap<String, VecDeque<OffsetDateTime>>,
    seen: BTreeMap<String, BTreeSet<String>>,
    last_fired: HashMap<(&'static str, String), OffsetDateTime>,
    seen_file: Option<(PathBuf, hmac::Key)>,
}

#[derive(Serialize, Deserialize)]
struct SeenFile {
    roles: BTreeMap<String, BTreeSet<String>>,
    mac: String,
}

const HOUR: Duration = Duration::from_secs(3600);

// === impl Alert ===

impl Alert {
    /// The `alert` record written to the chain.
    pub fn to_record(&self) -> Record {
        let mut r = Record::new(Kind::Alert).with_reason(self.rule.clone());
        r.tool = self.tool.clone();
        r.role = self.role.clone();
        r.seller = self.seller.clone();
        r.count = Some(self.count);
        r.window_secs = Some(self.window_secs);
        if let Some(category) = self.category {
            r.pii = vec![PiiUse {
                category,
                action: Action::Pass,
            }];
        }
        r
    }

    /// The webhook's JSON body.
    pub fn webhook_body(&self, instance: &str, at: OffsetDateTime) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "rule": self.rule.as_str(),
            "instance": instance,
            "time": at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            "tool": self.tool.as_ref().map(Name::as_str),
            "role": self.role.as_ref().map(Name::as_str),
            "seller": self.seller.as_ref().map(SellerId::as_str),
            "category": self.category.map(Category::as_str),
            "count": self.count,
            "window_secs": self.window_secs,
        }))
        .unwrap_or_default()
    }

    /// Logs the alert (no value, only names and counts).
    pub fn emit(&self) {
        tracing::warn!(
            rule = %self.rule,
            tool = self.tool.as_ref().map(Name::as_str),
            role = self.role.as_ref().map(Name::as_str),
            seller = self.seller.as_ref().map(SellerId::as_str),
            category = self.category.map(Category::as_str),
            count = self.count,
            window_secs = self.window_secs,
            "Audit alert."
        );
    }
}

// === impl Alerts ===

impl Alerts {
    /// Rules with empty state; `seen_file` (path and audit key) persists the categories seen.
    pub(crate) fn new(rules: AlertRules, seen_file: Option<(PathBuf, &[u8])>) -> Alerts {
        let seen_file = seen_file.map(|(p, k)| (p, hmac::Key::new(hmac::HMAC_SHA256, k)));
        let mut alerts = Alerts {
            rules,
            reveals: HashMap::new(),
            denials: HashMap::new(),
            seen: BTreeMap::new(),
            last_fired: HashMap::new(),
            seen_file,
        };
        alerts.load_seen();
        alerts
    }

    fn seen_mac(key: &hmac::Key, roles: &BTreeMap<String, BTreeSet<String>>) -> String {
        let bytes = serde_json::to_vec(roles).unwrap_or_default();
        crate::crypto::hex(hmac::sign(key, &bytes).as_ref())
    }

    fn load_seen(&mut self) {
        let Some((path, key)) = &self.seen_file else {
            return;
        };
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        match serde_json::from_str::<SeenFile>(&text) {
            Ok(f) if f.mac == Alerts::seen_mac(key, &f.roles) => self.seen = f.roles,
            _ => tracing::warn!(
                file = %path.display(),
                "The audit alert state does not verify; every PII category will alert once more."
            ),
        }
    }

    fn save_seen(&self) {
        let Some((path, key)) = &self.seen_file else {
            return;
        };
        let file = SeenFile {
            mac: Alerts::seen_mac(key, &self.seen),
            roles: self.seen.clone(),
        };
        let tmp = path.with_extension("seen.tmp");
        let written = super::chain::private_file()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .and_then(|mut f| {
                std::io::Write::write_all(&mut f, &serde_json::to_vec(&file).unwrap_or_default())
            })
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::error!(error = %e, "Could not save the audit alert state.");
        }
    }

    /// Whether the rule may fire again for this key now (and marks it fired).
    fn cool(&mut self, rule: &'static str, key: String, at: OffsetDateTime) -> bool {
        let cooldown = self.rules.cooldown;
        match self.last_fired.get(&(rule, key.clone())) {
            Some(last) if at - *last < cooldown => false,
            _ => {
                self.last_fired.insert((rule, key), at);
                true
            }
        }
    }

    /// Feeds one record; returns the alerts it raises.
    pub(crate) fn observe(&mut self, r: &Record, at: OffsetDateTime) -> Vec<Alert> {
        let mut out = Vec::new();
        let tool_key = r.tool.as_ref().map_or("-", Name::as_str).to_string();
        let alert = |rule: Reason, count: u64, window: Duration| Alert {
            rule,
            tool: r.tool.clone(),
            role: r.role.clone(),
            seller: r.seller.clone(),
            category: None,
            count,
            window_secs: window.as_secs(),
        };
        if let (Some(limit), Kind::Reveal) = (self.rules.reveals_per_tool_per_hour, r.kind) {
            let n = push_window(&mut self.reveals, &tool_key, at, HOUR);
            if n > limit as usize && self.cool("reveals", tool_key.clone(), at) {
                out.push(alert(Reason::ALERT_REVEALS, n as u64, HOUR));
            }
        }
        if self.rules.seller_denials
            && r.kind == Kind::Request
            && r.reason == Some(Reason::SELLER_NOT_ALLOWED)
        {
            let key = format!(
                "{tool_key}/{}",
                r.seller.as_ref().map_or("-", |s| s.as_str())
            );
            if self.cool("seller", key, at) {
                out.push(alert(Reason::ALERT_SELLER_DENIALS, 1, self.rules.cooldown));
            }
        }
        if let (Some(burst), true) = (self.rules.denial_burst, r.is_denial()) {
            let n = push_window(&mut self.denials, &tool_key, at, burst.window);
            if n >= burst.count as usize && self.cool("burst", tool_key.clone(), at) {
                let mut a = alert(Reason::ALERT_DENIAL_BURST, n as u64, burst.window);
                a.seller = None;
                out.push(a);
            }
        }
        if self.rules.new_pii_category {
            if let Some(role) = &r.role {
                let mut changed = false;
                for category in r.received() {
                    if self
                        .seen
                        .get(role.as_str())
                        .is_some_and(|seen| seen.contains(category.as_str()))
                    {
                        continue;
                    }
                    let seen = self.seen.entry(role.as_str().to_string()).or_default();
                    if seen.insert(category.as_str().to_string()) {
                        changed = true;
                        let mut a = alert(Reason::ALERT_NEW_PII_CATEGORY, 1, Duration::ZERO);
                        a.category = Some(category);
                        a.seller = None;
                        out.push(a);
                    }
                }
                if changed {
                    self.save_seen();
                }
            }
        }
        out
    }
}

/// Adds an event to a per-key sliding window; returns how many it now holds.
fn push_window(
    windows: &mut HashMap<String, VecDeque<OffsetDateTime>>,
    key: &str,
    at: OffsetDateTime,
    window: Duration,
) -> usize {
    if !windows.contains_key(key) {
        windows.insert(key.to_string(), VecDeque::new());
    }
    let Some(q) = windows.get_mut(key) else {
        return 0;
    };
    q.push_back(at);
    while q.front().is_some_and(|t| at - *t >= window) {
        q.pop_front();
    }
    q.len()
}

// === webhook ===

/// POSTs alerts to a URL (http or https), at most 8 at a time, each within a timeout, with the
/// control-plane client (no redirects: an alert goes only where configured).
pub(crate) struct Webhook {
    client: reqwest::Client,
    url: reqwest::Url,
    timeout: Duration,
    permits: Arc<tokio::sync::Semaphore>,
    runtime: tokio::runtime::Handle,
    failures: Arc<AtomicU64>,
}

impl Webhook {
    /// A sender for `url` on `runtime`; `failures` counts posts that failed or were skipped.
    pub(crate) fn new(
        url: &crate::secret::Secret<String>,
        timeout: Duration,
        runtime: tokio::runtime::Handle,
        failures: Arc<AtomicU64>,
    ) -> Option<Webhook> {
        let url = reqwest::Url::parse(url.expose()).ok()?;
        let client = crate::auth::control_plane::client(timeout).ok()?;
        Some(Webhook {
            client,
            url,
            timeout,
            permits: Arc::new(tokio::sync::Semaphore::new(8)),
            runtime,
            failures,
        })
    }

    /// Sends one body in the background (never blocks the writer).
    pub(crate) fn send(&self, body: Vec<u8>) {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("Audit alert webhook skipped: too many posts in flight.");
            return;
        };
        let request = self
            .client
            .post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "spgate-audit-alerts")
            .body(body);
        let timeout = self.timeout;
        let failures = self.failures.clone();
        self.runtime.spawn(async move {
            let _permit = permit;
            // The client's own timeout covers the exchange; this bounds the task regardless.
            let outcome = tokio::time::timeout(timeout, request.send()).await;
            let ok = matches!(&outcome, Ok(Ok(resp)) if resp.status().is_success());
            if !ok {
                failures.fetch_add(1, Ordering::Relaxed);
                let status = match &outcome {
                    Ok(Ok(resp)) => resp.status().as_u16().to_string(),
                    Ok(Err(e)) if e.is_timeout() => "timed out".into(),
                    Ok(Err(_)) => "connection failed".into(),
                    Err(_) => "timed out".into(),
                };
                // The URL is not logged: it usually carries a token.
                tracing::warn!(outcome = %status, "Audit alert webhook failed.");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::config::DenialBurst;
    use time::macros::datetime;

    fn rules() -> AlertRules {
        AlertRules {
            reveals_per_tool_per_hour: Some(2),
            seller_denials: true,
            denial_burst: Some(DenialBurst {
                count: 3,
                window: Duration::from_secs(60),
            }),
            new_pii_category: true,
            cooldown: Duration::from_secs(600),
            webhook: None,
            webhook_timeout: Duration::from_secs(1),
        }
    }

    fn rule_names(alerts: &[Alert]) -> Vec<&str> {
        alerts.iter().map(|a| a.rule.as_str()).collect()
    }

    #[test]
    fn reveals_above_the_hourly_limit_alert_once_per_cooldown() {
        let mut a = Alerts::new(rules(), None);
        let reveal = Record::new(Kind::Reveal).with_tool("crm");
        let t0 = datetime!(2026-03-01 10:00 UTC);
        let mut fired = Vec::new();
        for minute in 0..5 {
            fired.push(a.observe(&reveal, t0 + time::Duration::minutes(minute)));
        }
        let counts: Vec<usize> = fired.iter().map(Vec::len).collect();
        assert_eq!(
            counts,
            [0, 0, 1, 0, 0],
            "third reveal in the hour alerts, then quiet"
        );
        assert_eq!(fired[2][0].count, 3);
        assert_eq!(fired[2][0].tool.as_ref().unwrap().as_str(), "crm");
        // Another tool has its own window; an hour later the first one starts over.
        let other = Record::new(Kind::Reveal).with_tool("labels");
        assert!(a.observe(&other, t0).is_empty());
        let later = t0 + time::Duration::minutes(70);
        assert!(a.observe(&reveal, later).is_empty());
    }

    #[test]
    fn a_request_for_a_forbidden_seller_alerts_and_denial_bursts_alert_at_the_count() {
        let mut a = Alerts::new(rules(), None);
        let t0 = datetime!(2026-03-01 10:00 UTC);
        let denied = Record::request("r1")
            .with_tool("repricer")
            .with_seller("A2OTHERSELLER")
            .with_status(403)
            .with_reason(Reason::SELLER_NOT_ALLOWED);
        assert_eq!(rule_names(&a.observe(&denied, t0)), ["seller_denials"]);
        assert!(a
            .observe(&denied, t0 + time::Duration::seconds(1))
            .is_empty());
        assert_eq!(
            rule_names(&a.observe(&denied, t0 + time::Duration::seconds(2))),
            ["denial_burst"]
        );
        // Denials spread wider than the window do not add up.
        let mut b = Alerts::new(rules(), None);
        let unauth = Record::request("r2").with_status(401);
        for i in 0..6 {
            assert!(b
                .observe(&unauth, t0 + time::Duration::seconds(40 * i))
                .is_empty());
        }
        // A success is no denial.
        assert!(b
            .observe(&Record::request("r3").with_status(200), t0)
            .is_empty());
    }

    #[test]
    fn a_role_receiving_a_category_for_the_first_time_alerts_and_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("audit-gw1.seen");
        let key = b"synthetic-audit-key-0123456789abcdef".as_slice();
        let mut r = Record::request("r1")
            .with_tool("labels")
            .with_role("shipping");
        r.pii = vec![
            PiiUse {
                category: Category::Address,
                action: Action::Pass,
            },
            PiiUse {
                category: Category::Email,
                action: Action::Drop,
            },
        ];
        let t0 = datetime!(2026-03-01 10:00 UTC);
        let mut a = Alerts::new(rules(), Some((file.clone(), key)));
        let fired = a.observe(&r, t0);
        assert_eq!(rule_names(&fired), ["new_pii_category"]);
        assert_eq!(fired[0].category, Some(Category::Address));
        assert!(a.observe(&r, t0).is_empty());
        // A restart remembers; a forged state file is ignored (and alerts again).
        let mut again = Alerts::new(rules(), Some((file.clone(), key)));
        assert!(again.observe(&r, t0).is_empty());
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, text.replace("address", "phone")).unwrap();
        let mut forged = Alerts::new(rules(), Some((file, key)));
        assert_eq!(forged.observe(&r, t0).len(), 1);
        // The alert's record and webhook body name the category, never a value.
        let record = serde_json::to_string(&fired[0].to_record()).unwrap();
        assert!(
            record.contains("\"reason\":\"new_pii_category\""),
            "{record}"
        );
        let body: serde_json::Value =
            serde_json::from_slice(&fired[0].webhook_body("gw1", t0)).unwrap();
        assert_eq!(body["category"], "address");
        assert_eq!(body["role"], "shipping");
    }
}
