//! TLS to PostgreSQL with the real binary: a private cluster this test starts (initdb + pg_ctl
//! on a free port) with `ssl = on`, a certificate for `localhost` from a CA made here with
//! rcgen, and only `hostssl` connections allowed. `sslmode=verify-full` with the CA file works;
//! a wrong CA, a host name the certificate does not name, and plain TCP are refused with an
//! error that says why.

mod common;
mod pki;

use std::path::Path;
use std::process::Command;

use common::pg::Cluster;
use common::process::{output_ok, BIN};
use pki::Ca;

const MASTER: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn config(dir: &Path, name: &str, url: &str, ca: Option<&Path>) -> std::path::PathBuf {
    let ca = ca.map_or(String::new(), |p| {
        format!("ca_file = {:?}\n", p.display().to_string())
    });
    let text = format!(
        "[lwa]\nclient_id = \"amzn1.application-oa2-client.tls\"\nclient_secret = {{ env = \"SPGATE_LWA_CLIENT_SECRET\" }}\n\
         [keys]\nmaster_key = {{ env = \"SPGATE_MASTER_KEY\" }}\n\
         [store]\ntype = \"postgres\"\nurl = \"{url}\"\nschema = \"spgate_tls\"\n{ca}"
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn spgate(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("SPGATE_LWA_CLIENT_SECRET", "synthetic-secret")
        .env("SPGATE_MASTER_KEY", MASTER);
    cmd
}

/// `spgate sellers list` on `config`: its stderr when it fails, `None` when it works.
fn refused(config: &Path) -> Option<String> {
    let out = spgate(&["sellers", "--config", config.to_str().unwrap(), "list"])
        .output()
        .unwrap();
    (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn verify_full_with_the_ca_file_connects_and_a_wrong_ca_host_or_plain_tcp_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "pg-ca");
    let other = Ca::new(dir.path(), "other-ca");
    let server = ca.server_for(dir.path(), "server", &["localhost"]);
    let cluster = Cluster::start(
        &[
            "ssl = on".into(),
            "ssl_cert_file = 'server.crt'".into(),
            "ssl_key_file = 'server.key'".into(),
        ],
        &[
            ("server.crt", server.cert_pem.as_bytes()),
            ("server.key", server.key_pem.as_bytes()),
            // TLS connections only, over TCP.
            ("pg_hba.conf", b"local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n"),
        ],
    );
    let port = cluster.port;

    // verify-full, the right CA, the certificate's host name: works, and the seller added
    // through it is read back through it.
    let good = config(
        dir.path(),
        "good",
        &format!("postgres://postgres@localhost:{port}/postgres?sslmode=verify-full"),
        Some(&ca.cert_file),
    );
    let token = dir.path().join("rt");
    std::fs::write(&token, "Atzr|tls-synthetic").unwrap();
    output_ok(spgate(&[
        "sellers",
        "--config",
        good.to_str().unwrap(),
        "add",
        "--id",
        "A1TLSSELLER",
        "--region",
        "eu",
        "--refresh-token-file",
        token.to_str().unwrap(),
    ]));
    let listed = output_ok(spgate(&[
        "sellers",
        "--config",
        good.to_str().unwrap(),
        "list",
    ]));
    assert!(listed.contains("A1TLSSELLER"), "{listed}");

    // A CA that did not issue the server's certificate.
    let wrong_ca = config(
        dir.path(),
        "wrong-ca",
        &format!("postgres://postgres@localhost:{port}/postgres?sslmode=verify-full"),
        Some(&other.cert_file),
    );
    let err = refused(&wrong_ca).expect("a certificate from another CA is refused");
    eprintln!("wrong CA: {err}");
    assert!(
        err.contains("certificate") && err.contains("UnknownIssuer"),
        "{err}"
    );

    // The right CA, but a host name (here an address) the certificate does not name.
    let wrong_host = config(
        dir.path(),
        "wrong-host",
        &format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=verify-full"),
        Some(&ca.cert_file),
    );
    let err = refused(&wrong_host).expect("a certificate for another name is refused");
    eprintln!("wrong host: {err}");
    assert!(
        err.contains("certificate") && err.contains("NotValidForName"),
        "{err}"
    );

    // Plain TCP: the server allows TLS only, so a working connection above was TLS.
    let plain = config(
        dir.path(),
        "plain",
        &format!("postgres://postgres@localhost:{port}/postgres"),
        None,
    );
    let err = refused(&plain).expect("plain TCP is refused by this server");
    assert!(err.contains("28000"), "pg_hba refuses it: {err}");
}
