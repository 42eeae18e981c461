//! Config tests: one `check` helper, TOML in, the exact issues out.

use super::*;
use crate::pii::Category;

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes, base64

fn env() -> MapEnv {
    let mut env = MapEnv::default();
    env.vars
        .insert("LWA_SECRET".into(), "amzn1.oa2-cs.v1.synthetic".into());
    env.vars.insert("MASTER".into(), KEY.into());
    env.files
        .insert(PathBuf::from("/run/master"), format!("{KEY}\n"));
    env
}

const MINIMAL: &str = r#"
[lwa]
client_id = "amzn1.application-oa2-client.synthetic"
client_secret = { env = "LWA_SECRET" }
[keys]
master_key = { env = "MASTER" }
"#;

/// Resolves `toml` and compares the issues as `path: message-fragment` pairs.
fn check(toml: &str, expect: &[(&str, &str)]) {
    let issues = match Config::from_toml(toml, &env()) {
        Ok(_) => Vec::new(),
        Err(ConfigError(issues)) => issues,
    };
    assert_eq!(issues.len(), expect.len(), "{issues:#?}");
    for (path, fragment) in expect {
        assert!(
            issues
                .iter()
                .any(|i| i.path == *path && i.message.contains(fragment)),
            "no issue {path}: {fragment} in {issues:#?}"
        );
    }
}

#[test]
fn a_minimal_config_is_valid_and_takes_the_documented_defaults() {
    check(MINIMAL, &[]);
    let cfg = Config::resolve(RawConfig::parse(MINIMAL).unwrap(), &env()).unwrap();
    assert_eq!(cfg.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(
        cfg.upstream.endpoints.eu.to_string(),
        "https://sellingpartnerapi-eu.amazon.com/"
    );
    assert_eq!(cfg.lwa.client_secret.expose(), "amzn1.oa2-cs.v1.synthetic");
    assert_eq!(cfg.master_key.current_id(), "k1");
}

#[test]
fn unknown_keys_are_errors_with_their_path() {
    let toml = format!("{MINIMAL}\n[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n[upstream.endpoints]\nxx = \"a\"\n[nope]\n");
    check(
        &toml,
        &[
            ("server.lisen", "unknown key"),
            ("upstream.endpoints.xx", "unknown key"),
            ("nope", "unknown key"),
        ],
    );
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let toml = r#"
[server]
listen = "not an address"
max_connections = 0
[upstream]
connect_timeout_ms = "fast"
[lwa]
client_secret = "literal-secret-in-the-file"
[keys]
master_key = { env = "UNSET_VAR" }
[log]
format = "xml"
"#;
    check(
        toml,
        &[
            ("upstream.connect_timeout_ms", "invalid type"),
            ("server.listen", "not an address"),
            ("server.max_connections", "at least 1"),
            ("lwa.client_id", "required"),
            (
                "lwa.client_secret",
                "must not be written in the config file",
            ),
            ("keys.master_key", "UNSET_VAR is not set"),
            ("log.format", "unknown format"),
        ],
    );
}

#[test]
fn secrets_come_from_env_or_files_never_from_the_file_itself() {
    let from_file = MINIMAL.replace(
        r#"master_key = { env = "MASTER" }"#,
        r#"master_key = { file = "/run/master" }"#,
    );
    check(&from_file, &[]);
    let both = MINIMAL.replace(
        r#"{ env = "MASTER" }"#,
        r#"{ env = "MASTER", file = "/run/master" }"#,
    );
    check(&both, &[("keys.master_key", "exactly one")]);
    let missing_file = MINIMAL.replace(r#"{ env = "MASTER" }"#, r#"{ file = "/nope" }"#);
    check(&missing_file, &[("keys.master_key", "cannot read /nope")]);
    let short_key = MINIMAL.replace(r#"{ env = "MASTER" }"#, r#"{ env = "LWA_SECRET" }"#);
    check(&short_key, &[("keys.master_key", "base64")]);
}

#[test]
fn endpoints_must_be_bare_http_urls() {
    check(
        &format!("{MINIMAL}\n[server]\n[server]\n"),
        &[("", "invalid TOML")],
    );
    let toml = format!("{MINIMAL}\n[upstream.endpoints]\nna = \"ftp://x\"\neu = \"http://127.0.0.1:9/path\"\nfe = \"http://127.0.0.1:9/\"\n");
    check(
        &toml,
        &[
            ("upstream.endpoints.na", "not an http(s) URL"),
            ("upstream.endpoints.eu", "without a path"),
        ],
    );
}

#[test]
fn the_public_url_is_a_bare_http_url_kept_without_its_trailing_slash() {
    let with = |u: &str| format!("{MINIMAL}\n[server]\npublic_url = \"{u}\"\n");
    let cfg = Config::from_toml(&with("https://spgate.example:8443/"), &env()).unwrap();
    assert_eq!(
        cfg.server.public_url.as_deref(),
        Some("https://spgate.example:8443")
    );
    let cfg = Config::from_toml(MINIMAL, &env()).unwrap();
    assert_eq!(cfg.server.public_url, None);
    for (u, fragment) in [
        ("spgate.example", "not an http(s) URL"),
        ("ftp://spgate.example", "not an http(s) URL"),
        ("https://spgate.example/base", "without a path"),
        ("https://spgate.example/?a=b", "without a query"),
        ("https://user:pw@spgate.example", "credentials"),
    ] {
        check(&with(u), &[("server.public_url", fragment)]);
    }
}

#[test]
fn the_example_config_is_valid() {
    let text = include_str!("../config/spgate.example.toml");
    let mut env = env();
    env.vars
        .insert("SPGATE_LWA_CLIENT_SECRET".into(), "synthetic".into());
    env.vars.insert("SPGATE_MASTER_KEY".into(), KEY.into());
    env.vars.insert("SPGATE_AUDIT_KEY".into(), KEY.into());
    let raw = RawConfig::parse(text).unwrap_or_else(|e| panic!("{e}"));
    let cfg = Config::resolve(raw, &env).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.audit.is_some());
    assert_eq!(cfg.retention.max_days, 30);
    assert!(cfg
        .roles
        .get("crm")
        .may_reveal(crate::pii::Category::Address));
}

#[test]
fn roles_grant_categories_and_bad_names_are_reported_with_their_path() {
    let toml = format!("{MINIMAL}\n[roles.labels]\nreveal = [\"address\"]\n[roles.labels.pii]\nname = \"pass\"\naddress = \"mask\"\n[roles.crm.pii]\nemail = \"pseudonymize\"\n");
    let cfg = Config::from_toml(&toml, &env()).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.roles.get("labels").receives(Category::Address));
    assert!(!cfg.roles.get("labels").receives(Category::Email));
    assert!(cfg.roles.get("crm").receives(Category::Email));
    assert!(cfg.roles.get("labels").may_reveal(Category::Address));
    assert!(!cfg.roles.get("labels").may_reveal(Category::Name));
    assert!(!cfg.roles.get("crm").may_reveal(Category::Email));
    let bad = format!("{MINIMAL}\n[roles.labels.pii]\npostcode = \"pass\"\nname = \"show\"\n[roles.x]\nextra = 1\nreveal = [\"postcode\"]\n");
    check(
        &bad,
        &[
            ("roles.labels.pii.postcode", "unknown PII category"),
            ("roles.labels.pii.name", "unknown action"),
            ("roles.x.extra", "unknown key"),
            ("roles.x.reveal[0]", "unknown PII category"),
        ],
    );
}

#[test]
fn the_limiters_redis_url_holds_a_password_only_by_reference_and_never_prints() {
    check(
        &format!("{MINIMAL}\n[ratelimit.redis]\nurl = \"redis://:hunter2@127.0.0.1:6379\"\n"),
        &[("ratelimit.redis.url", "a URL with a password is a secret")],
    );
    let mut env = env();
    env.vars
        .insert("RL_REDIS".into(), "redis://:hunter2@127.0.0.1:6379".into());
    let cfg = Config::from_toml(
        &format!("{MINIMAL}\n[ratelimit.redis]\nurl = {{ env = \"RL_REDIS\" }}\n"),
        &env,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let redis = cfg.ratelimit.redis.expect("redis settings");
    assert_eq!(redis.url.expose(), "redis://:hunter2@127.0.0.1:6379");
    assert!(!format!("{redis:?}").contains("hunter2"));
    check(
        &format!("{MINIMAL}\n[ratelimit.redis]\nurl = \"redis://127.0.0.1:6379\"\n"),
        &[],
    );
}

#[test]
fn pii_settings_refuse_a_pass_safety_net_and_absurd_sizes() {
    let cfg = Config::from_toml(MINIMAL, &env()).unwrap();
    assert_eq!(cfg.pii.safety_net, crate::pii::Action::Drop);
    assert_eq!(cfg.pii.max_response_bytes, 8 * 1024 * 1024);
    let toml = format!("{MINIMAL}\n[pii]\nsafety_net = \"mask\"\nmax_response_bytes = 65536\n");
    let cfg = Config::from_toml(&toml, &env()).unwrap();
    assert_eq!(cfg.pii.safety_net, crate::pii::Action::Mask);
    assert_eq!(cfg.pii.max_response_bytes, 65536);
    check(
        &format!("{MINIMAL}\n[pii]\nsafety_net = \"pass\"\nmax_response_bytes = 10\n"),
        &[
            ("pii.safety_net", "pass would let"),
            ("pii.max_response_bytes", "between"),
        ],
    );
}

#[test]
fn retention_may_be_shorter_than_30_days_never_longer_and_the_audit_key_is_required() {
    let cfg =
        Config::from_toml(&format!("{MINIMAL}\n[retention]\nmax_days = 7\n"), &env()).unwrap();
    assert_eq!(cfg.retention.max_days, 7);
    check(
        &format!("{MINIMAL}\n[retention]\nmax_days = 31\n[audit]\ndir = \"/tmp/a\"\n"),
        &[("retention.max_days", ""), ("audit.key", "required")],
    );
}
