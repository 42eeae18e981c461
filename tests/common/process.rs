//! Real `spgate` processes for the tests that drive the binary: a free port, a child started
//! until it says it is ready (its output drained so it never blocks on a full pipe), a one-shot
//! command that must succeed, and a reaper that kills what is left when the test ends.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_spgate");

/// How long a child may take to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A TCP port free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child processes when the test ends, however it ends.
pub struct Reaper(pub Vec<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `cmd` and waits until a line of its stdout or stderr contains `ready`; its output is
/// read (and dropped) for as long as it runs. Panics (after killing it) if it is not ready
/// within 20 s.
pub fn spawn_ready(mut cmd: Command, ready: &str) -> Child {
    let (mut child, rx) = spawn_piped(&mut cmd);
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
            if line.contains(ready) {
                return child;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{} did not start", args(&cmd));
}

/// Starts `cmd` with its stdout and stderr read line by line, for as long as it runs, into the
/// channel returned.
fn spawn_piped(cmd: &mut Command) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let pipes: [Box<dyn std::io::Read + Send>; 2] = [
        Box::new(child.stdout.take().unwrap()),
        Box::new(child.stderr.take().unwrap()),
    ];
    for pipe in pipes {
        let tx = tx.clone();
        // Keeps reading after `rx` is gone, so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            BufReader::new(pipe)
                .lines()
                .map_while(Result::ok)
                .for_each(|l| drop(tx.send(l)))
        });
    }
    (child, rx)
}

/// Starts `cmd` with stdout and stderr into `log` and waits until `port` on 127.0.0.1 accepts.
pub fn spawn_listening(mut cmd: Command, port: u16, log: &std::path::Path) -> Child {
    let file = std::fs::File::create(log).unwrap();
    let mut child = cmd
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + START_TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} did not start", args(&cmd));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Runs `cmd` to the end and returns its stdout; panics with its stderr if it fails.
pub fn output_ok(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        args(&cmd),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The command's arguments, for messages (its environment holds keys: never printed).
fn args(cmd: &Command) -> String {
    let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
    format!("{args:?}")
}

/// A running child whose output lines can be awaited and counted (every line is kept).
pub struct Logged {
    /// The process.
    pub child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: std::cell::RefCell<Vec<String>>,
}

impl Logged {
    /// Starts `cmd` and waits (60 s at most) until a line contains `ready`.
    pub fn spawn(mut cmd: Command, ready: &str) -> Logged {
        let (child, lines) = spawn_piped(&mut cmd);
        let logged = Logged {
            child,
            lines,
            seen: std::cell::RefCell::new(Vec::new()),
        };
        logged.wait_for(ready, Duration::from_secs(60));
        logged
    }

    /// Waits until a line (read now or before) contains `needle`; panics after `timeout`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.seen.borrow().iter().any(|l| l.contains(needle)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no line containing {needle:?}:\n{}",
                self.seen.borrow().join("\n")
            );
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(50)) {
                self.seen.borrow_mut().push(line);
            }
        }
    }

    /// Lines read so far that contain `needle` (reading what is waiting first).
    pub fn count(&self, needle: &str) -> usize {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.borrow_mut().push(line);
        }
        self.seen
            .borrow()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// SIGKILL, and waits for the process to end.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The part of a `spgate serve` config that points it at a sandbox and lets ops in: the admin
/// listener on `admin` with an ops token from `SPGATE_TEST_OPS`, every region's SP-API and LWA at
/// `upstream`, LWA client `client_id` with its secret from `SPGATE_LWA_CLIENT_SECRET`.
pub fn sandbox_and_ops_toml(admin: u16, upstream: &str, client_id: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"
[[admin.tokens]]
name = "ops-oncall"
role = "ops"
token = {{ env = "SPGATE_TEST_OPS" }}
[upstream.endpoints]
na = "{upstream}"
eu = "{upstream}"
fe = "{upstream}"
[lwa]
token_url = "{upstream}/auth/o2/token"
client_id = "{client_id}"
client_secret = {{ env = "SPGATE_LWA_CLIENT_SECRET" }}
"#
    )
}
