//! The acceptor under descriptor exhaustion, in a child process whose
//! RLIMIT_NOFILE is lowered so the test runner itself is not starved.

mod util;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use net::{EventLoop, TcpServer};
use util::{echo, set_fd_limit, wait_until, TIMEOUT};

/// Selects the child role when the test binary re-executes itself.
const CHILD_ENV: &str = "NET_TEST_EMFILE_CHILD";
/// The child's descriptor limit.
const CHILD_FD_LIMIT: libc::rlim_t = 64;
/// How long the server may take to answer one connection, either way.
const PROMPT: Duration = Duration::from_secs(2);

/// What happened to one client connection.
#[derive(Debug)]
enum Outcome {
    /// The server accepted it and echoed.
    Echoed(TcpStream),
    /// The server closed it (EOF or reset) without echoing.
    Refused,
}

/// Kills the child when dropped, so a failing assertion does not leave it running.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn accept_survives_descriptor_exhaustion() {
    if std::env::var_os(CHILD_ENV).is_some() {
        run_child();
    }
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "accept_survives_descriptor_exhaustion",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let mut child = ChildGuard(child);
    let pid = child.0.id();
    let addr = read_child_addr(&mut child.0);

    // Fill the server up: connections are echoed until it runs out of descriptors.
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..4 * CHILD_FD_LIMIT {
        let started = Instant::now();
        match try_echo(addr) {
            Outcome::Echoed(s) => {
                assert_eq!(refused, 0, "accepted again after a refusal");
                accepted.push(s);
            }
            Outcome::Refused => {
                refused += 1;
                if refused == 10 {
                    break;
                }
            }
        }
        assert!(started.elapsed() < PROMPT, "server answered slowly");
    }
    assert_eq!(refused, 10, "the server never ran out of descriptors");
    assert!(
        accepted.len() > 20 && accepted.len() < CHILD_FD_LIMIT as usize,
        "{} connections accepted under a limit of {CHILD_FD_LIMIT}",
        accepted.len()
    );

    // Still exhausted: the server must sleep, not spin.
    let cpu_before = cpu_ticks(pid);
    for _ in 0..5 {
        assert!(matches!(try_echo(addr), Outcome::Refused));
        thread::sleep(Duration::from_millis(100));
    }
    let spent = cpu_ticks(pid) - cpu_before;
    // SAFETY: sysconf only reads a configuration value.
    let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    assert!(
        spent * 5 < ticks_per_sec,
        "server burnt {spent} ticks in half a second while out of descriptors"
    );

    // The old connections still work; free a few and new ones are served again.
    for s in accepted.iter_mut().take(3) {
        util::assert_echo(s, b"still up");
    }
    accepted.truncate(accepted.len() - 5);
    let mut fresh = Vec::new();
    assert!(
        wait_until(TIMEOUT, || {
            if let Outcome::Echoed(s) = try_echo(addr) {
                fresh.push(s);
            }
            fresh.len() == 3
        }),
        "no new connection was accepted after freeing descriptors"
    );
    drop(child);
}

/// Opens a connection and tries one echo.
fn try_echo(addr: SocketAddr) -> Outcome {
    let mut s = TcpStream::connect_timeout(&addr, PROMPT).expect("connect");
    s.set_read_timeout(Some(PROMPT)).unwrap();
    let mut got = [0u8; 4];
    let result = s.write_all(b"ping").and_then(|()| s.read_exact(&mut got));
    match result {
        Ok(()) if &got == b"ping" => Outcome::Echoed(s),
        Err(e) if is_closed(&e) => Outcome::Refused,
        other => panic!("neither echo nor close: {other:?}"),
    }
}

/// EOF or a reset: the server closed the connection.
fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// Reads the child's stdout until it prints its address; keeps draining it after.
fn read_child_addr(child: &mut Child) -> SocketAddr {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // The test harness may have printed on the same line first.
            if let Some(at) = line.find("ADDR ") {
                let _ = tx.send(line[at + 5..].trim().parse::<SocketAddr>().unwrap());
            }
        }
    });
    rx.recv_timeout(TIMEOUT).expect("child did not start")
}

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The child: an echo server under a low descriptor limit, until killed.
fn run_child() -> ! {
    set_fd_limit(CHILD_FD_LIMIT);
    let lp = EventLoop::new().unwrap();
    let server = TcpServer::new(&lp, "127.0.0.1:0".parse().unwrap(), "emfile").unwrap();
    server.set_thread_num(1);
    echo(&server);
    server.start().unwrap();
    println!("ADDR {}", server.local_addr());
    io::stdout().flush().unwrap();
    lp.run();
    unreachable!("the child's loop is never asked to quit");
}
