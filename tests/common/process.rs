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
