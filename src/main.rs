//! The `spgate` binary: command line, config loading, logging, signals. Everything else is in the
//! library; `anyhow` is used only here.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use spgate::auth::caller;
use spgate::catalog::Catalog;
use spgate::config::{self, Config, LogFormat, ProcessEnv};
use spgate::secret::Secret;
use spgate::store::{Region, SellerRecord, SellerStatus};

#[derive(Parser)]
#[command(
    name = "spgate",
    version,
    about = "A gateway between seller tools and Amazon's Selling Partner API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the gateway against the built-in sandbox: no Amazon account, no config.
    Demo(spgate::demo::DemoArgs),
    /// Check a config file and report every problem with its key path.
    Check {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Exit 0 when the admin listener answers `/healthz` with 200 (the image's HEALTHCHECK).
    Health {
        /// The admin listener's health URL (plain HTTP).
        #[arg(long, default_value = "http://127.0.0.1:9090/healthz")]
        url: String,
    },
    /// List every SP-API operation the gateway knows.
    Catalog {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Manage seller tools' API keys.
    Clients {
        /// Config file.
        #[arg(long, short, global = true, default_value = "config/spgate.toml")]
        config: PathBuf,
        #[command(subcommand)]
        action: ClientsAction,
    },
    /// Manage onboarded sellers.
    Sellers {
        /// Config file.
        #[arg(long, short, global = true, default_value = "config/spgate.toml")]
        config: PathBuf,
        #[command(subcommand)]
        action: SellersAction,
    },
    /// Run the fake SP-API + LWA on its own (open enrollment: any `Atzr|` refresh token works).
    Sandbox(spgate::demo::SandboxArgs),
    /// The forward proxy's certificate authority.
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
    /// Review the audit log: verify the chains, query records, report per tool.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Move durable state between stores.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Buyer PII the gateway holds: data-subject requests and retention evidence.
    Vault {
        /// Config file.
        #[arg(long, short, global = true, default_value = "config/spgate.toml")]
        config: PathBuf,
        #[command(subcommand)]
        action: VaultAction,
    },
}

#[derive(Subcommand)]
enum StoreAction {
    /// Copy an embedded store into PostgreSQL (idempotent; verifies the counts).
    Copy {
        /// Config of the source (its [store] is read).
        #[arg(long)]
        from: PathBuf,
        /// Config of the target (its [store] must be type = "postgres").
        #[arg(long)]
        to: PathBuf,
    },
}

#[derive(Subcommand)]
enum VaultAction {
    /// Export what the gateway holds on a buyer, decrypted, for the controller (audited).
    Export {
        /// An order id (every seller holding it).
        #[arg(
            long,
            required_unless_present = "pseudonym",
            conflicts_with = "pseudonym"
        )]
        order: Option<String>,
        /// A buyer e-mail pseudonym (`psn_...`): every order linked to it.
        #[arg(long)]
        pseudonym: Option<String>,
        /// Write the JSON here (created with mode 0600) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Erase what the gateway holds on a buyer now: cached PII and the order's data key
    /// (audited; refused while a legal hold runs).
    Erase {
        /// An order id.
        #[arg(
            long,
            required_unless_present = "pseudonym",
            conflicts_with = "pseudonym"
        )]
        order: Option<String>,
        /// Only this seller's record of the order (default: every seller).
        #[arg(long, requires = "order")]
        seller: Option<String>,
        /// A buyer e-mail pseudonym (`psn_...`): every order linked to it.
        #[arg(long)]
        pseudonym: Option<String>,
        /// An operator's decision rather than a data-subject request.
        #[arg(long)]
        operator: bool,
    },
    /// Retention evidence: counts by state, the next deletions, and how many are overdue.
    Report {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ClientsAction {
    /// Create a tool's API key. The key is printed once and never stored.
    Add {
        /// The tool's name.
        #[arg(long)]
        tool: String,
        /// Its role.
        #[arg(long)]
        role: String,
        /// A seller it may act for (repeat; `*` for all).
        #[arg(long = "seller", required = true)]
        sellers: Vec<String>,
        /// Also create drop-in LWA credentials (client id, secret, refresh token) for an
        /// unmodified SP-API SDK; needs exactly one seller.
        #[arg(long)]
        drop_in: bool,
    },
    /// List tools and their keys' prefixes.
    List,
    /// Revoke a key at once.
    Revoke {
        /// The client id (`cli_...`).
        id: String,
    },
}

#[derive(Subcommand)]
enum SellersAction {
    /// Import a self-authorized seller from its refresh token.
    Add {
        /// Selling partner id.
        #[arg(long)]
        id: String,
        /// Region: na, eu or fe.
        #[arg(long)]
        region: Region,
        /// File holding the LWA refresh token (so it never appears in shell history).
        #[arg(long)]
        refresh_token_file: PathBuf,
        /// Marketplace ids (repeat).
        #[arg(long = "marketplace")]
        marketplaces: Vec<String>,
    },
    /// Create a signed one-time link a seller opens to authorize the application.
    Invite {
        /// Region the seller authorizes in: na, eu or fe.
        #[arg(long)]
        region: Region,
        /// Re-authorization of this existing seller (only this seller may use the link).
        /// Without it, the link can only connect a seller that is not connected yet.
        #[arg(long)]
        seller: Option<String>,
    },
    /// List sellers.
    List,
    /// Remove a seller.
    Remove {
        /// Selling partner id.
        id: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async_main(cli))
}

async fn async_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let config_path = config;
            let config = load(&config_path)?;
            init_logs(config.log.format, &config.log.level);
            let listener = tokio::net::TcpListener::bind(config.server.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.server.listen))?;
            let admin = match &config.admin {
                Some(a) => Some(
                    tokio::net::TcpListener::bind(a.listen)
                        .await
                        .with_context(|| format!("cannot listen on {} (admin)", a.listen))?,
                ),
                None => None,
            };
            let listeners = spgate::Listeners {
                proxy: listener,
                admin,
            };
            spgate::run(config, Some(config_path), listeners, shutdown_signal()).await?;
            tracing::info!("spgate stopped.");
            Ok(())
        }
        Command::Demo(args) => {
            init_logs(LogFormat::Pretty, "warn");
            spgate::demo::run_demo(args, shutdown_signal()).await?;
            Ok(())
        }
        Command::Sandbox(args) => {
            init_logs(LogFormat::Pretty, "info");
            spgate::demo::run_sandbox(args, shutdown_signal()).await?;
            Ok(())
        }
        Command::Check { config } => {
            let issues = config::check(&config, &ProcessEnv);
            if issues.is_empty() {
                println!("{}: OK", config.display());
                return Ok(());
            }
            for i in &issues {
                if i.path.is_empty() {
                    println!("{}: {}", config.display(), i.message);
                } else {
                    println!("{}: {}: {}", config.display(), i.path, i.message);
                }
            }
            bail!("{} problem(s) found", issues.len())
        }
        Command::Health { url } => health(&url).await,
        Command::Catalog { json } => {
            print_catalog(json)?;
            Ok(())
        }
        Command::Clients { config, action } => clients(&load(&config)?, action).await,
        Command::Sellers { config, action } => sellers(&load(&config)?, action).await,
        Command::Audit { action } => audit(action),
        Command::Ca {
            action: CaAction::Init { out },
        } => ca_init(&out),
        Command::Vault { config, action } => vault(load(&config)?, action).await,
        Command::Store {
            action: StoreAction::Copy { from, to },
        } => {
            let report = spgate::store::copy::run(&load(&from)?, &load(&to)?).await?;
            print!("{report}");
            println!("copied: every source row is in the target");
            Ok(())
        }
    }
}

#[derive(Subcommand)]
enum CaAction {
    /// Write a new CA for `[forward_proxy]`: its key (mode 0600) and certificate (0644) in
    /// `--out`; existing files are never overwritten. The CA is valid for two years and may
    /// issue only for Amazon's hosts (name constraints).
    Init {
        /// Directory to write `spgate-forward-ca.pem` and `spgate-forward-ca.key` into.
        #[arg(long)]
        out: PathBuf,
    },
}

fn ca_init(out: &std::path::Path) -> anyhow::Result<()> {
    let (cert, key) = spgate::server::mint::ca_init(out)?;
    let days = spgate::server::mint::CA_VALIDITY_DAYS;
    let until = time::OffsetDateTime::now_utc() + time::Duration::days(days as i64);
    println!("CA certificate: {}", cert.display());
    println!("CA key (0600, keep it secret): {}", key.display());
    println!(
        "It expires in {days} days ({}-{:02}-{:02}); the gateway warns 30 days before \
         (spgate_forward_ca_expiry_timestamp_seconds). It may issue only for Amazon's SP-API and \
         Login with Amazon hosts.",
        until.year(),
        u8::from(until.month()),
        until.day()
    );
    println!();
    println!("Enable the forward proxy in the gateway's config:");
    println!("  [forward_proxy]");
    println!("  enabled = true");
    println!("  ca_cert_file = {:?}", cert.display().to_string());
    println!("  ca_key_file = {:?}", key.display().to_string());
    println!("and let the tools trust the certificate, e.g. for node:");
    println!(
        "  HTTPS_PROXY=http://<gateway host:port> NODE_EXTRA_CA_CERTS={}",
        cert.display()
    );
    Ok(())
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(path, &ProcessEnv).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The audit log of command-line actions: its own chain (`cli-<instance>`) beside the
/// gateway's, when `[audit]` is configured. Parallel commands take turns: each waits for the
/// chain's lock, so every one is recorded.
fn cli_auditor(config: &Config) -> anyhow::Result<spgate::audit::Auditor> {
    Ok(match &config.audit {
        Some(cfg) => {
            let mut cfg = cfg.clone();
            cfg.instance = format!("cli-{}", cfg.instance);
            spgate::audit::Auditor::start_waiting(&cfg)
                .context("cannot open the audit log for command-line actions")?
        }
        None => spgate::audit::Auditor::disabled(),
    })
    .and_then(|auditor| {
        if auditor.available() {
            Ok(auditor)
        } else {
            // What cannot be recorded is not done.
            bail!("the audit log cannot be written: no change is made")
        }
    })
}

/// Shuts the command's audit log down (flushed); the command fails if any of its records
/// could not be written.
async fn close_cli_auditor(
    auditor: &spgate::audit::Auditor,
    result: anyhow::Result<()>,
) -> anyhow::Result<()> {
    let unwritten = auditor.shutdown().await;
    result?;
    if unwritten > 0 {
        bail!("{unwritten} audit record(s) of this command could not be written");
    }
    Ok(())
}

async fn clients(config: &Config, action: ClientsAction) -> anyhow::Result<()> {
    // Opened before anything changes, so no change goes unaudited; shut down (flushed) however
    // the command ends.
    let auditor = cli_auditor(config)?;
    let result = clients_audited(config, action, &auditor).await;
    close_cli_auditor(&auditor, result).await
}

async fn clients_audited(
    config: &Config,
    action: ClientsAction,
    auditor: &spgate::audit::Auditor,
) -> anyhow::Result<()> {
    let store = spgate::open_store(config).await?.store;
    match action {
        ClientsAction::Add {
            tool,
            role,
            sellers,
            drop_in,
        } => {
            if drop_in && (sellers.len() != 1 || sellers[0] == "*") {
                bail!("--drop-in credentials stand for exactly one seller: give one --seller");
            }
            let new = caller::create_client(&*store, &tool, &role, sellers.clone(), now()).await?;
            let mut record = spgate::audit::Record::new(spgate::audit::Kind::KeyCreated)
                .with_tool(&tool)
                .with_role(&role);
            record.client_id = Some(spgate::audit::record::Id::lossy(&new.client.id));
            auditor.record(record.with_actor("cli"));
            println!("client id: {}", new.client.id);
            println!("tool:      {}", new.client.tool);
            println!("role:      {}", new.client.role);
            println!("sellers:   {}", new.client.sellers.join(","));
            println!("api key:   {}", new.key.expose());
            if drop_in {
                let creds =
                    spgate::auth::drop_in::create(&*store, &new.client.id, &sellers[0]).await?;
                println!("drop-in LWA client id:     {}", creds.lwa_client_id);
                println!(
                    "drop-in LWA client secret: {}",
                    creds.client_secret.expose()
                );
                println!(
                    "drop-in refresh token:     {}",
                    creds.refresh_token.expose()
                );
                println!("(point the SDK's LWA token URL at <gateway>/auth/o2/token and its endpoint at <gateway>)");
            }
            println!("(secrets are shown once; only their hashes are stored)");
        }
        ClientsAction::List => {
            println!(
                "{:<16} {:<20} {:<12} {:<12} {:<24} status",
                "id", "tool", "role", "key", "sellers"
            );
            for c in store.clients().await? {
                let status = if c.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!(
                    "{:<16} {:<20} {:<12} {:<12} {:<24} {status}",
                    c.id,
                    c.tool,
                    c.role,
                    format!("{}…", c.key_prefix),
                    c.sellers.join(",")
                );
            }
        }
        ClientsAction::Revoke { id } => {
            if !store.revoke_client(&id, now()).await? {
                bail!("no active client {id}");
            }
            let mut record = spgate::audit::Record::new(spgate::audit::Kind::KeyRevoked);
            record.client_id = Some(spgate::audit::record::Id::lossy(&id));
            auditor.record(record.with_actor("cli"));
            println!("revoked {id}");
        }
    }
    Ok(())
}

async fn sellers(config: &Config, action: SellersAction) -> anyhow::Result<()> {
    let auditor = cli_auditor(config)?;
    let result = sellers_audited(config, action, &auditor).await;
    close_cli_auditor(&auditor, result).await
}

async fn sellers_audited(
    config: &Config,
    action: SellersAction,
    auditor: &spgate::audit::Auditor,
) -> anyhow::Result<()> {
    let store = spgate::open_store(config).await?.store;
    match action {
        SellersAction::Add {
            id,
            region,
            refresh_token_file,
            marketplaces,
        } => {
            let token = std::fs::read_to_string(&refresh_token_file)
                .with_context(|| format!("cannot read {}", refresh_token_file.display()))?;
            let token = Secret::new(token.trim().to_string());
            if !token.expose().starts_with("Atzr|") {
                bail!(
                    "{} does not hold an LWA refresh token (Atzr|...)",
                    refresh_token_file.display()
                );
            }
            let sealed = config
                .master_key
                .seal_str(&token, format!("refresh_token:{id}").as_bytes())?;
            let now = now();
            store
                .put_seller(&SellerRecord {
                    selling_partner_id: id.clone(),
                    region,
                    marketplaces,
                    refresh_token_sealed: sealed,
                    authorized_at: now,
                    reauthorize_by: now + 365 * 86_400,
                    status: SellerStatus::Active,
                })
                .await?;
            auditor.record(
                spgate::audit::Record::new(spgate::audit::Kind::SellerAuthorized)
                    .with_seller(&id)
                    .with_actor("cli"),
            );
            println!("seller {id} added ({region})");
        }
        SellersAction::Invite { region, seller } => {
            let Some(onboarding) = &config.onboarding else {
                bail!("seller onboarding is not configured: add an [onboarding] section");
            };
            let link = spgate::auth::onboarding::create_invite(
                &*store,
                &config.master_key,
                onboarding,
                region,
                seller.as_deref(),
                now(),
            )
            .await?;
            auditor.record(spgate::audit::events::invite_record(
                region,
                seller.as_deref(),
                "cli",
            ));
            println!("{link}");
            println!(
                "(one use; valid {} hours)",
                onboarding.invite_ttl.as_secs() / 3600
            );
        }
        SellersAction::List => {
            println!(
                "{:<20} {:<6} {:<14} {:<12} marketplaces",
                "seller", "region", "status", "reauth by"
            );
            for s in store.sellers().await? {
                let due = time::OffsetDateTime::from_unix_timestamp(s.reauthorize_by)
                    .map(|t| t.date().to_string())
                    .unwrap_or_default();
                println!(
                    "{:<20} {:<6} {:<14} {:<12} {}",
                    s.selling_partner_id,
                    s.region,
                    s.status.as_str(),
                    due,
                    s.marketplaces.join(",")
                );
            }
        }
        SellersAction::Remove { id } => {
            if !store.remove_seller(&id).await? {
                bail!("no seller {id}");
            }
            auditor.record(
                spgate::audit::Record::new(spgate::audit::Kind::SellerDeauthorized)
                    .with_seller(&id)
                    .with_reason(spgate::audit::Reason::from_static("removed_by_operator"))
                    .with_actor("cli"),
            );
            println!("removed {id}");
        }
    }
    Ok(())
}

async fn vault(config: Config, action: VaultAction) -> anyhow::Result<()> {
    use spgate::vault::{EraseReason, Vault};
    init_logs(config.log.format, &config.log.level);
    let store = spgate::open_store(&config).await?.store;
    let auditor = cli_auditor(&config)?;
    let sink_auditor = auditor.clone();
    let vault = Vault::new(
        store,
        std::sync::Arc::new(config.master_key),
        config.retention.clone(),
        std::sync::Arc::new(spgate::vault::SystemClock),
        std::sync::Arc::new(move |event: spgate::vault::VaultEvent| {
            let record = spgate::audit::events::vault_record(&event);
            // Exports and erasures name their actor themselves.
            let record = match record.actor {
                Some(_) => record,
                None => record.with_actor("cli"),
            };
            sink_auditor.record(record);
        }),
    );
    let result: anyhow::Result<()> = async {
        match action {
            VaultAction::Export {
                order,
                pseudonym,
                out,
            } => {
                let export = match (order, pseudonym) {
                    (Some(order), _) => vault.export(&order, "cli").await?,
                    (None, Some(psn)) => vault.export_pseudonym(&psn, "cli").await?,
                    (None, None) => bail!("give --order or --pseudonym"),
                };
                let text = serde_json::to_string_pretty(&export)?;
                match out {
                    Some(path) => {
                        write_private(&path, text.as_bytes())?;
                        eprintln!(
                            "exported {} order record(s) to {}",
                            export.orders.len(),
                            path.display()
                        );
                    }
                    None => println!("{text}"),
                }
            }
            VaultAction::Erase {
                order,
                seller,
                pseudonym,
                operator,
            } => {
                let reason = if operator {
                    EraseReason::Operator
                } else {
                    EraseReason::DataSubjectRequest
                };
                let erased = match (order, pseudonym) {
                    (Some(order), _) => {
                        vault
                            .erase(seller.as_deref(), &order, reason, "cli")
                            .await?
                    }
                    (None, Some(psn)) => vault.erase_pseudonym(&psn, reason, "cli").await?,
                    (None, None) => bail!("give --order or --pseudonym"),
                };
                for e in &erased {
                    println!(
                        "erased {} {} (key {}, {} cached response(s))",
                        e.seller,
                        e.order_id,
                        e.key_id.as_deref().unwrap_or("-"),
                        e.cache_entries
                    );
                }
                if erased.is_empty() {
                    println!("nothing left to erase (already deleted)");
                }
            }
            VaultAction::Report { json } => {
                let report = vault.report().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{}", report.render());
                }
            }
        }
        Ok(())
    }
    .await;
    close_cli_auditor(&auditor, result).await
}

/// Writes a file only its owner can read (it holds buyer PII).
fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

fn print_catalog(json: bool) -> anyhow::Result<()> {
    let catalog = Catalog::builtin();
    if json {
        let rows: Vec<_> = catalog
            .operations()
            .iter()
            .map(|op| {
                serde_json::json!({
                    "key": op.key, "api": op.api, "model": op.model, "operation_id": op.operation_id,
                    "method": op.method.as_str(), "path": op.path,
                    "rate_per_second": op.usage_plan.map(|p| p.rate_per_second),
                    "burst": op.usage_plan.map(|p| p.burst),
                    "application": op.app_plan.map(|p| serde_json::json!({
                        "rate_per_second": p.rate_per_second, "burst": p.burst,
                        "sub_limits": op.app_sub_limits.iter().map(|(kind, p)| (kind.to_string(),
                            serde_json::json!({"rate_per_second": p.rate_per_second, "burst": p.burst})))
                            .collect::<serde_json::Map<_, _>>(),
                    })),
                    "restricted": op.restricted, "grantless_scope": op.grantless_scope,
                    "pii_map": op.pii_map,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<58} {:<7} {:>8} {:>5}  flags  path",
        "operation", "method", "rate/s", "burst"
    );
    for op in catalog.operations() {
        let (rate, burst) = match op.usage_plan {
            Some(p) => (format!("{}", p.rate_per_second), p.burst.to_string()),
            None => ("-".into(), "-".into()),
        };
        let flags = format!(
            "{}{}{}",
            if op.restricted { "R" } else { "" },
            if op.grantless_scope.is_some() {
                "G"
            } else {
                ""
            },
            if op.pii_map.is_some() { "P" } else { "" }
        );
        println!(
            "{:<58} {:<7} {:>8} {:>5}  {:<5}  {}",
            op.key, op.method, rate, burst, flags, op.path
        );
    }
    println!(
        "\n{} operations. Flags: R restricted (RDT), G grantless, P buyer PII in responses.",
        catalog.operations().len()
    );
    Ok(())
}

fn init_logs(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

/// Completes on SIGTERM or Ctrl-C. The handlers are installed when this is called (before
/// the listeners serve), not on the future's first poll: a SIGTERM that arrives early must
/// drain, never take the default action (exit by signal).
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    if let Err(e) = &term {
        tracing::error!(error = %e, "Cannot install the SIGTERM handler.");
    }
    if let Err(e) = &int {
        tracing::error!(error = %e, "Cannot install the SIGINT handler.");
    }
    async move {
        let term = async {
            match term {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        let int = async {
            match int {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = term => {},
            () = int => {},
        }
        tracing::info!("Shutdown requested; draining.");
    }
}

/// Completes on Ctrl-C (installed when called).
#[cfg(not(unix))]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    let ctrl_c = tokio::signal::ctrl_c();
    async move {
        let _ = ctrl_c.await;
        tracing::info!("Shutdown requested; draining.");
    }
}

#[derive(Subcommand)]
enum AuditAction {
    /// Check every instance's chain: exits non-zero naming the first edited, removed,
    /// inserted or reordered record, or a cut tail, and on gap records (lost records, with
    /// count and span) unless --allow-gaps. The key (base64) comes from --key-file or
    /// SPGATE_AUDIT_KEY.
    Verify {
        /// The audit directory.
        dir: PathBuf,
        /// File holding the audit key (base64).
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Exit 0 even if a chain reports gaps (records lost, each reported with its count and
        /// span).
        #[arg(long)]
        allow_gaps: bool,
    },
    /// Records of every instance in time order (a table, or the stored JSON lines).
    Query {
        /// The audit directory.
        dir: PathBuf,
        /// Only this tool.
        #[arg(long)]
        tool: Option<String>,
        /// Only this seller.
        #[arg(long)]
        seller: Option<String>,
        /// Only this operation key, e.g. ordersV0.getOrder.
        #[arg(long)]
        operation: Option<String>,
        /// Only this kind of record, e.g. request, reveal, key_revoked, alert.
        #[arg(long)]
        kind: Option<String>,
        /// Only this status (403) or class (4xx).
        #[arg(long)]
        status: Option<String>,
        /// Only records where this PII category was returned (not dropped).
        #[arg(long)]
        pii: Option<String>,
        /// From: YYYY-MM-DD, RFC 3339, or back from now (90m, 24h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Before: same forms as --since.
        #[arg(long)]
        until: Option<String>,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Per tool: requests, denials, 429s, PII categories received, reveals.
    Report {
        /// The audit directory.
        dir: PathBuf,
        /// From: YYYY-MM-DD, RFC 3339, or back from now (90m, 24h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Before: same forms as --since.
        #[arg(long)]
        until: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn audit(action: AuditAction) -> anyhow::Result<()> {
    use spgate::audit::{cli, query};
    use std::io::Write;
    let now = time::OffsetDateTime::now_utc();
    let when = |t: Option<String>| t.map(|t| query::parse_time(&t, now)).transpose();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match action {
        AuditAction::Verify {
            dir,
            key_file,
            allow_gaps,
        } => {
            let key = match key_file {
                Some(path) => std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                None => std::env::var("SPGATE_AUDIT_KEY")
                    .context("give --key-file or set SPGATE_AUDIT_KEY (the audit key, base64)")?,
            };
            let ok = cli::verify(&dir, &Secret::new(key), allow_gaps, &mut out)?;
            out.flush()?;
            if !ok {
                bail!("audit verification failed");
            }
        }
        AuditAction::Query {
            dir,
            tool,
            seller,
            operation,
            kind,
            status,
            pii,
            since,
            until,
            json,
        } => {
            let kind = kind
                .map(|k| serde_json::from_value(serde_json::Value::String(k.clone())))
                .transpose()
                .map_err(|_| anyhow::anyhow!("unknown record kind"))?;
            let filters = query::Filters {
                tool,
                seller,
                operation,
                kind,
                status: status.as_deref().map(query::parse_status).transpose()?,
                pii: pii
                    .as_deref()
                    .map(str::parse)
                    .transpose()
                    .map_err(|e: String| anyhow::anyhow!(e))?,
                since: when(since)?,
                until: when(until)?,
            };
            cli::query(&dir, &filters, json, &mut out)?;
        }
        AuditAction::Report {
            dir,
            since,
            until,
            json,
        } => cli::report(&dir, when(since)?, when(until)?, json, &mut out)?,
    }
    out.flush()?;
    Ok(())
}

/// `spgate health`: one GET within 5 s; any answer but 200 is a failure.
async fn health(url: &str) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    let uri: http::Uri = url.parse().context("--url is not a URL")?;
    if uri.scheme_str() != Some("http") {
        bail!("--url must be a plain http:// URL (the admin listener inside the container)");
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let resp = tokio::time::timeout(std::time::Duration::from_secs(5), client.get(uri))
        .await
        .context("no answer within 5 s")?
        .context("the admin listener did not answer")?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    if status != http::StatusCode::OK {
        bail!("{url} answered {status}");
    }
    println!("{url}: {status}");
    Ok(())
}
