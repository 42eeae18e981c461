//! PostgreSQL and Redis for the tests that run gateways on them: a schema of the test's own on
//! the machine's shared server (127.0.0.1:5432, dropped at the end), a private PostgreSQL
//! cluster (initdb + pg_ctl in a temporary directory, on a free port, optionally with TLS), a
//! private `redis-server` (so a test may FLUSHALL it), and a TCP proxy the test can cut to make
//! a database outage without touching a server other tests share.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::process::free_port;

/// The machine's shared server (trust authentication on 127.0.0.1).
pub const SHARED_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Where Debian's PostgreSQL 15 server binaries live.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A schema of the test's own on the shared server, dropped at the end (also when the test
/// fails).
pub struct Schema(pub String);

impl Schema {
    /// A fresh schema name (created by the first gateway or store that connects).
    pub fn new(tag: &str) -> Schema {
        Schema(format!(
            "t_{tag}_{}",
            spgate::crypto::random_token::<6>()
                .unwrap()
                .to_ascii_lowercase()
                .replace('-', "_")
        ))
    }

    /// Runs one SQL statement on the shared server and returns its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        psql(SHARED_URL, &format!("SET search_path = {}; {sql}", self.0))
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                SHARED_URL,
                "-qAtc",
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0),
            ])
            .output();
    }
}

/// Runs `sql` with psql on `url`; panics with psql's error if it fails.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-qAtc", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A private PostgreSQL cluster in a temporary directory on a free port, stopped (immediately)
/// and removed when dropped. Run as the `postgres` user when the test runs as root (the server
/// refuses to run as root).
pub struct Cluster {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// initdb (trust authentication) and start; `conf` lines are appended to postgresql.conf and
    /// `files` written into the data directory first (e.g. a certificate and its key).
    pub fn start(conf: &[String], files: &[(&str, &[u8])]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let root = as_root();
        if root {
            chown_postgres(dir.path());
        }
        run_pg(
            root,
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "--no-instructions",
            ],
        );
        for (name, bytes) in files {
            let path = data.join(name);
            std::fs::write(&path, bytes).unwrap();
            set_mode(&path, 0o600);
        }
        let mut text = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        for line in conf {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(data.join("postgresql.conf"), text).unwrap();
        if root {
            chown_postgres(dir.path());
        }
        let port = free_port();
        let cluster = Cluster { port, dir };
        cluster.pg_ctl_start();
        cluster
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl_start(&self) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("server.log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        run_pg(
            as_root(),
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let mut cmd = pg_command(as_root(), "pg_ctl");
        let _ = cmd
            .args(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn chown_postgres(path: &Path) {
    let ok = Command::new("chown")
        .args(["-R", "postgres:postgres", path.to_str().unwrap()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "chown to the postgres user");
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn pg_command(root: bool, tool: &str) -> Command {
    let bin = PathBuf::from(PG_BIN).join(tool);
    if root {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(bin);
        cmd
    } else {
        Command::new(bin)
    }
}

fn run_pg(root: bool, tool: &str, args: &[&str]) {
    let out = pg_command(root, tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{PG_BIN}/{tool} cannot run ({e}): install postgresql-15"));
    assert!(
        out.status.success(),
        "{tool}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private `redis-server` on a free port keeping nothing on disk, killed when dropped.
pub struct PrivateRedis {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Child,
}

impl PrivateRedis {
    /// Starts it and waits until it answers.
    pub fn start() -> PrivateRedis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        let redis = PrivateRedis { port, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while redis.command(&["PING"]).as_deref() != Some("+PONG") {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends one command in RESP and returns the first line of the answer.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        conn.write_all(req.as_bytes()).ok()?;
        let mut buf = [0u8; 512];
        let n = conn.read(&mut buf).ok()?;
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .map(str::to_string)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy on a free port of 127.0.0.1 to `upstream`, which the test can cut (every open
/// connection closed, new ones closed at accept) and restore: a database outage for the
/// processes behind it only.
pub struct Proxy {
    /// Its port on 127.0.0.1.
    pub port: u16,
    state: Arc<ProxyState>,
}

struct ProxyState {
    up: AtomicBool,
    stopped: AtomicBool,
    open: Mutex<Vec<TcpStream>>,
}

impl Proxy {
    /// Starts forwarding to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState {
            up: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
        });
        let upstream = upstream.to_string();
        let s = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if !s.up.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                {
                    let mut open = s.open.lock().unwrap();
                    open.push(client.try_clone().unwrap());
                    open.push(server.try_clone().unwrap());
                }
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Proxy { port, state }
    }

    /// Closes every open connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.state.up.store(false, Ordering::SeqCst);
        for s in self.state.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.state.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        self.cut();
        // Wakes the accept loop so it sees `stopped`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies `from` to `to` on a thread until either side closes.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
