//! Redis over TLS (`rediss://` with a CA file) and Redis ACL users, for the store and the
//! limiter, against `redis-server` processes this test starts on free ports: one with TLS only
//! (certificates from a CA made here with rcgen), one whose `default` user is turned off.

mod pki;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pki::Ca;
use spgate::config::{Config, MapEnv, StoreConfig};
use spgate::ratelimit::{Acquire, Limiter, Priority};
use spgate::store::ClientRecord;

/// A `redis-server` owned by the test; killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether this machine's redis-server was built with TLS (Debian's is): one built without it
/// refuses `tls-port` as an unknown directive; one with it fails only on the missing
/// certificate files.
fn redis_server_has_tls(dir: &Path) -> bool {
    let probe = Command::new("redis-server")
        .args(["--port", "0", "--tls-port", "1", "--save", ""])
        .args([
            "--tls-cert-file",
            "/nonexistent",
            "--tls-key-file",
            "/nonexistent",
        ])
        .arg("--dir")
        .arg(dir)
        .output();
    let Ok(out) = probe else {
        return false;
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    !text.contains("Bad directive") && text.contains("TLS")
}

fn start(dir: &Path, args: &[String]) -> Server {
    let port = free_port();
    let mut cmd = Command::new("redis-server");
    cmd.args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .args(["--loglevel", "warning", "--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .args(args.iter().map(|a| a.replace("{port}", &port.to_string())))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Owned at once, so it is killed and reaped however the test ends.
    let server = Server {
        child: cmd.spawn().expect("redis-server runs"),
        port,
    };
    // Wait (bounded) until the port accepts connections.
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return server;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server did not listen on {port}");
}

fn env_with(files: &[&Path], vars: &[(&str, &str)]) -> MapEnv {
    let mut env = MapEnv::default();
    for f in files {
        env.files
            .insert(f.to_path_buf(), std::fs::read_to_string(f).unwrap());
    }
    for (k, v) in vars {
        env.vars.insert((*k).into(), (*v).into());
    }
    env.vars.insert("S".into(), "lwa-secret-synthetic".into());
    env.vars.insert(
        "M".into(),
        spgate::crypto::MasterKey::generate_base64()
            .unwrap()
            .expose()
            .clone(),
    );
    env
}

fn config(redis_toml: &str, env: &MapEnv) -> Config {
    let toml = format!(
        "[lwa]\nclient_id = \"x\"\nclient_secret = {{ env = \"S\" }}\n[keys]\nmaster_key = {{ env = \"M\" }}\n{redis_toml}"
    );
    Config::from_toml(&toml, env).unwrap_or_else(|e| panic!("{e}"))
}

fn client_record(id: &str) -> ClientRecord {
    ClientRecord {
        id: id.into(),
        tool: "label-printer".into(),
        role: "labels".into(),
        sellers: vec!["A1SYNTHETIC".into()],
        key_hash: format!("hash-{id}"),
        key_prefix: "spg_abcdef".into(),
        created_at: 1_700_000_000,
        revoked_at: None,
    }
}

/// The store writes and reads through `config`'s `[store]`, and the limiter's decision lands in
/// the same server (no Redis error counted).
async fn store_and_limiter_work(config: Config) {
    let opened = spgate::open_store(&config).await.unwrap();
    opened
        .store
        .insert_client(&client_record("cli_tls1"))
        .await
        .unwrap();
    let back = opened.store.client("cli_tls1").await.unwrap().unwrap();
    assert_eq!(back.tool, "label-printer");
    let settings = config.ratelimit.redis.clone().expect("[ratelimit.redis]");
    let limiter = Limiter::redis(config.ratelimit.limiter.clone(), settings)
        .await
        .unwrap();
    let op = spgate::catalog::Catalog::builtin()
        .by_key("ordersV0.getOrder")
        .unwrap();
    limiter
        .acquire(Acquire {
            seller: "A1SYNTHETIC",
            operation: op,
            tool: "cli_tls1",
            plan: None,
            priority: Priority::Normal,
            max_wait: None,
        })
        .await
        .unwrap();
    assert_eq!(limiter.metrics().redis_errors, 0, "the limiter fell back");
}

/// A TLS-only redis-server with a certificate from a CA made in `dir`, and `extra` arguments;
/// `None` (a notice) where redis-server lacks TLS, except under CI, where that is a failure.
fn start_tls(dir: &Path, extra: &[String]) -> Option<(Server, Ca)> {
    if !redis_server_has_tls(dir) {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server lacks TLS support, and CI must run this test (.ci/run installs Debian's)"
        );
        eprintln!("notice: redis-server lacks TLS support here; .ci/run installs Debian's, which has it. Skipping.");
        return None;
    }
    let ca = Ca::new(dir, "ca");
    let cert = ca.server(dir, "redis");
    let mut args: Vec<String> = vec![
        "--port".into(),
        "0".into(),
        "--tls-port".into(),
        "{port}".into(),
        "--tls-cert-file".into(),
        cert.cert_file.display().to_string(),
        "--tls-key-file".into(),
        cert.key_file.display().to_string(),
        "--tls-ca-cert-file".into(),
        ca.cert_file.display().to_string(),
        "--tls-auth-clients".into(),
        "no".into(),
    ];
    args.extend_from_slice(extra);
    Some((start(dir, &args), ca))
}

#[tokio::test]
async fn the_store_and_the_limiter_speak_tls_to_redis_with_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let Some((server, ca)) = start_tls(dir.path(), &[]) else {
        return;
    };
    let port = server.port;
    let env = env_with(&[&ca.cert_file], &[]);
    let toml = format!(
        "[store]\ntype = \"redis\"\nurl = \"rediss://localhost:{port}\"\nkey_prefix = \"t1:\"\nca_file = {ca:?}\n[ratelimit.redis]\nurl = \"rediss://localhost:{port}\"\nkey_prefix = \"t1rl:\"\nca_file = {ca:?}\ntimeout_ms = 2000\n",
        ca = ca.cert_file
    );
    store_and_limiter_work(config(&toml, &env)).await;

    // The same server refuses plain connections, and a client without the CA refuses the server.
    let url = format!("redis://127.0.0.1:{port}");
    assert!(spgate::store::redis::RedisStore::connect(&url, "t1:")
        .await
        .is_err());
    let url = format!("rediss://localhost:{port}");
    assert!(spgate::store::redis::RedisStore::connect(&url, "t1:")
        .await
        .is_err());
}

#[tokio::test]
async fn an_acl_user_with_a_password_from_the_environment_is_used_by_store_and_limiter() {
    let dir = tempfile::tempdir().unwrap();
    let password = "acl-password-synthetic-7f3a";
    // A password only over TLS (the config refuses one with redis://).
    let users = [
        "--user".to_string(),
        "spgate".into(),
        "on".into(),
        format!(">{password}"),
        "~*".into(),
        "&*".into(),
        "+@all".into(),
        "--user".into(),
        "default".into(),
        "off".into(),
    ];
    let Some((server, ca)) = start_tls(dir.path(), &users) else {
        return;
    };
    let port = server.port;
    let env = env_with(&[&ca.cert_file], &[("REDIS_PASSWORD", password)]);
    let section = |prefix: &str| {
        format!(
            "url = \"rediss://localhost:{port}\"\nkey_prefix = \"{prefix}\"\nca_file = {ca:?}\nusername = \"spgate\"\npassword = {{ env = \"REDIS_PASSWORD\" }}\n",
            ca = ca.cert_file
        )
    };
    let toml = format!(
        "[store]\ntype = \"redis\"\n{}[ratelimit.redis]\n{}timeout_ms = 2000\n",
        section("t2:"),
        section("t2rl:")
    );
    let config = config(&toml, &env);
    let StoreConfig::Redis { access, .. } = &config.store else {
        panic!("not a redis store");
    };
    assert!(!format!("{access:?}").contains(password));
    store_and_limiter_work(config).await;

    // Without the user (the `default` user is off) or with a wrong password: refused, and the
    // error names neither password.
    let no_user = format!(
        "[store]\ntype = \"redis\"\nurl = \"rediss://localhost:{port}\"\nkey_prefix = \"t2:\"\nca_file = {ca:?}\n",
        ca = ca.cert_file
    );
    let anonymous = self::config(&no_user, &env);
    assert!(spgate::open_store(&anonymous).await.is_err());
    let wrong = env_with(
        &[&ca.cert_file],
        &[("REDIS_PASSWORD", "wrong-password-synthetic")],
    );
    let config = self::config(&toml, &wrong);
    let err = spgate::open_store(&config).await.err().expect("refused");
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains("wrong-password-synthetic") && !text.contains(password),
        "{text}"
    );
}

#[test]
fn a_password_or_a_ca_file_with_a_plain_redis_url_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let env = env_with(&[&ca.cert_file], &[("REDIS_PASSWORD", "pw-synthetic")]);
    for (section, setting) in [
        (
            "store",
            "password = { env = \"REDIS_PASSWORD\" }".to_string(),
        ),
        ("store", format!("ca_file = {:?}", ca.cert_file)),
        (
            "ratelimit.redis",
            "password = { env = \"REDIS_PASSWORD\" }".to_string(),
        ),
        ("ratelimit.redis", format!("ca_file = {:?}", ca.cert_file)),
    ] {
        let kind = if section == "store" {
            "type = \"redis\"\n"
        } else {
            ""
        };
        let toml = format!(
            "[lwa]\nclient_id = \"x\"\nclient_secret = {{ env = \"S\" }}\n[keys]\nmaster_key = {{ env = \"M\" }}\n[{section}]\n{kind}url = \"redis://127.0.0.1:6379\"\n{setting}\n"
        );
        let Err(err) = Config::from_toml(&toml, &env) else {
            panic!("{section} {setting}: accepted with redis://");
        };
        let text = err.to_string();
        assert!(
            text.contains(&format!("{section}.url")) && text.contains("rediss://"),
            "{section} {setting}: {text}"
        );
        assert!(!text.contains("pw-synthetic"), "{text}");
        // The same over rediss:// is accepted.
        let toml = toml.replace("redis://", "rediss://");
        assert!(
            Config::from_toml(&toml, &env).is_ok(),
            "{section} {setting}"
        );
    }
}
