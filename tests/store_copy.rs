//! `spgate store copy` with the real binary: an embedded store of 1,000 sellers and 10,000
//! retention records (1,000 with a data key, cached responses and pseudonyms) moves into
//! PostgreSQL (the machine's server on 127.0.0.1:5432, a schema of the test's own), is verified
//! by counts, copies again as a no-op, and is then read back by the binary from PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::Command;

use spgate::store::embedded::EmbeddedStore;
use spgate::store::postgres::{PostgresOptions, PostgresStore};
use spgate::store::{
    ClientRecord, Region, RetentionRecord, RetentionState, SellerRecord, SellerStatus, Store,
};

const BIN: &str = env!("CARGO_BIN_EXE_spgate");
const MASTER: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const SELLERS: usize = 1_000;
const RECORDS: usize = 10_000;
const KEYED: usize = 1_000;

/// A schema of the test's own, dropped at the end (also when the test fails).
struct Schema(String);

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                URL,
                "-qAtc",
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0),
            ])
            .output();
    }
}

fn seller(i: usize) -> SellerRecord {
    SellerRecord {
        selling_partner_id: format!("A{i:05}SYNTH"),
        region: [Region::Na, Region::Eu, Region::Fe][i % 3],
        marketplaces: vec!["ATVPDKIKX0DER".into()],
        refresh_token_sealed: format!("v1:k1:sealed-synthetic-{i}"),
        authorized_at: 1_700_000_000 + i as i64,
        reauthorize_by: 1_731_536_000 + i as i64,
        status: if i.is_multiple_of(10) {
            SellerStatus::Deauthorized
        } else {
            SellerStatus::Active
        },
    }
}

fn record(i: usize) -> RetentionRecord {
    RetentionRecord {
        seller: seller(i % SELLERS).selling_partner_id,
        order_id: format!("902-{i:07}-0000001"),
        version: 1 + (i % 3) as u64,
        state: match i % 5 {
            0 => RetentionState::Deleted,
            1 => RetentionState::Held,
            _ => RetentionState::Active,
        },
        key_id: (i < KEYED).then(|| format!("k{i:016x}")),
        first_seen: 1_000,
        status: Some("Shipped".into()),
        latest_delivery: Some(2_000),
        delivered_at: None,
        delivery_source: None,
        cancelled_at: None,
        due_at: 5_000 + i as i64,
        hold: None,
        deleted_at: None,
        deletion_reason: None,
    }
}

fn config(dir: &Path, name: &str, store: &str) -> PathBuf {
    let text = include_str!("../config/spgate.example.toml")
        .replace(
            "type = \"embedded\"\n# Data directory of the embedded backend (created with mode 0700).\ndata_dir = \"data\"",
            store,
        )
        .replace(
            "dir = \"data/audit\"",
            &format!("dir = {:?}", dir.join("audit").display().to_string()),
        );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn spgate(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("SPGATE_LWA_CLIENT_SECRET", "synthetic-secret")
        .env("SPGATE_MASTER_KEY", MASTER)
        .env(
            "SPGATE_AUDIT_KEY",
            "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tr",
        )
        .output()
        .expect("spgate runs")
}

/// Fills an embedded store in a few transactions (one per kind, not one fsync per row).
async fn fill(data_dir: &Path) {
    let store = EmbeddedStore::open(data_dir).unwrap();
    store
        .insert_client(&ClientRecord {
            id: "cli_copy".into(),
            tool: "label-printer".into(),
            role: "orders".into(),
            sellers: vec!["*".into()],
            key_hash: "ab".repeat(32),
            key_prefix: "spg_copy".into(),
            created_at: 1_700_000_000,
            revoked_at: None,
        })
        .await
        .unwrap();
    let mut db = rusqlite::Connection::open(store.path()).unwrap();
    let tx = db.transaction().unwrap();
    for i in 0..SELLERS {
        let s = seller(i);
        tx.execute(
            "INSERT INTO sellers (selling_partner_id, region, marketplaces, refresh_token,
                 authorized_at, reauthorize_by, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            rusqlite::params![
                s.selling_partner_id,
                s.region.as_str(),
                s.marketplaces.join(","),
                s.refresh_token_sealed,
                s.authorized_at,
                s.reauthorize_by,
                s.status.as_str()
            ],
        )
        .unwrap();
    }
    for i in 0..RECORDS {
        let r = record(i);
        tx.execute(
            "INSERT INTO retention (seller, order_id, version, state, purge_at, record)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![
                r.seller,
                r.order_id,
                r.version as i64,
                r.state.as_str(),
                r.purge_at(),
                serde_json::to_string(&r).unwrap()
            ],
        )
        .unwrap();
        if let Some(key_id) = &r.key_id {
            tx.execute(
                "INSERT INTO order_keys (key_id, seller, order_id, wrapped, created_at)
                 VALUES (?1, ?2, ?3, ?4, 1000)",
                rusqlite::params![key_id, r.seller, r.order_id, format!("v1:k1:wrapped-{i}")],
            )
            .unwrap();
            tx.execute(
                "INSERT INTO pii_cache (seller, cache_id, order_id, key_id, sealed, stored_at,
                     expires_at) VALUES (?1, ?2, ?3, ?4, ?5, 1000, 9000000000)",
                rusqlite::params![
                    r.seller,
                    format!("c{i}"),
                    r.order_id,
                    key_id,
                    vec![i as u8, 0, 255]
                ],
            )
            .unwrap();
            tx.execute(
                "INSERT INTO pseudonyms (pseudonym, seller, order_id) VALUES (?1, ?2, ?3)",
                rusqlite::params![format!("psn_{i}"), r.seller, r.order_id],
            )
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

/// The `in target` column of a kind in the command's table.
fn in_target(stdout: &str, kind: &str) -> (u64, u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} line in:\n{stdout}"));
    let n: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    (n[0], n[1], n[2])
}

#[tokio::test(flavor = "multi_thread")]
async fn an_embedded_store_of_a_thousand_sellers_moves_into_postgres_and_is_served_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fill(&data).await;
    let token = spgate::crypto::random_token::<9>().unwrap();
    let schema = Schema(format!(
        "spgate_copy_{}",
        token
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            })
            .collect::<String>()
    ));
    let from = config(
        dir.path(),
        "embedded.toml",
        &format!(
            "type = \"embedded\"\ndata_dir = {:?}",
            data.display().to_string()
        ),
    );
    let to = config(
        dir.path(),
        "postgres.toml",
        &format!(
            "type = \"postgres\"\nurl = {URL:?}\nschema = {:?}",
            schema.0
        ),
    );
    let check = spgate(&["check", "--config", to.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let started = std::time::Instant::now();
    let first = spgate(&[
        "store",
        "copy",
        "--from",
        from.to_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
    ]);
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(
        first.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&first.stderr)
    );
    eprintln!("store copy of {SELLERS} sellers and {RECORDS} records took {took:?}");
    let keyed = KEYED as u64;
    for (kind, n) in [
        ("sellers", SELLERS as u64),
        ("clients", 1),
        ("order_keys", keyed),
        ("retention", RECORDS as u64),
        ("pii_cache", keyed),
        ("pseudonyms", keyed),
    ] {
        assert_eq!(in_target(&stdout, kind), (n, n, n), "{kind}:\n{stdout}");
    }

    // Again: idempotent, nothing inserted, everything found.
    let again = spgate(&[
        "store",
        "copy",
        "--from",
        from.to_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(again.status.success(), "{stdout}");
    assert_eq!(
        in_target(&stdout, "retention"),
        (RECORDS as u64, 0, RECORDS as u64)
    );

    // What the gateway reads from PostgreSQL is what the embedded store held.
    let pg = PostgresStore::connect(&PostgresOptions {
        url: URL.into(),
        schema: schema.0.clone(),
        pool_size: 2,
        statement_timeout: std::time::Duration::from_secs(30),
        ca_pem: None,
    })
    .await
    .unwrap();
    let source = EmbeddedStore::open(&data).unwrap();
    assert_eq!(pg.sellers().await.unwrap(), source.sellers().await.unwrap());
    assert_eq!(pg.clients().await.unwrap(), source.clients().await.unwrap());
    for i in (0..RECORDS).step_by(97) {
        let r = record(i);
        assert_eq!(
            pg.retention(&r.seller, &r.order_id).await.unwrap(),
            Some(r.clone()),
            "versions and states as they were"
        );
        assert_eq!(
            pg.order_key(&r.seller, &r.order_id).await.unwrap(),
            source.order_key(&r.seller, &r.order_id).await.unwrap()
        );
    }
    let (a, b) = (
        pg.retention_stats(0, 0).await.unwrap(),
        source.retention_stats(0, 0).await.unwrap(),
    );
    assert_eq!(
        (a.active, a.held, a.deleted, a.keys),
        (b.active, b.held, b.deleted, b.keys)
    );

    // The binary on the postgres config lists every seller.
    let listed = spgate(&["sellers", "list", "--config", to.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    for i in 0..SELLERS {
        assert!(
            text.contains(&seller(i).selling_partner_id),
            "seller {i} missing"
        );
    }
}

#[test]
fn a_copy_into_a_store_that_is_not_postgres_or_under_another_master_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let from = config(
        dir.path(),
        "a.toml",
        &format!(
            "type = \"embedded\"\ndata_dir = {:?}",
            dir.path().join("a").display().to_string()
        ),
    );
    let to = config(
        dir.path(),
        "b.toml",
        &format!(
            "type = \"embedded\"\ndata_dir = {:?}",
            dir.path().join("b").display().to_string()
        ),
    );
    let out = spgate(&[
        "store",
        "copy",
        "--from",
        from.to_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must be type = \"postgres\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
