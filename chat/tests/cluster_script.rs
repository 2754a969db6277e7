//! `scripts/cluster.sh`: `start` refuses to run when a port it needs is taken (so
//! nginx never sends clients to an unrelated process), and fails with a clear line
//! when a node dies at start. Runs the real script with the built ChatServer.

mod cluster_util;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cluster_util::free_port;

/// Runs `cluster.sh ARGS` with a private state directory; kills it after `limit`.
/// Each call gets a directory of its own (`tag`): the tests run in parallel.
fn cluster_sh(
    tag: &str,
    args: &[&str],
    env: &[(&str, String)],
    limit: Duration,
) -> (Output, PathBuf) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::temp_dir().join(format!("chat-cluster-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("scripts/cluster.sh"))
        .args(args)
        .env("CLUSTER_DIR", &dir)
        .env("CHAT_BIN", env!("CARGO_BIN_EXE_ChatServer"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run cluster.sh");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait for cluster.sh").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cluster.sh {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (child.wait_with_output().expect("cluster.sh output"), dir)
}

#[test]
fn start_fails_with_a_clear_line_when_a_port_is_taken() {
    let held = TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let taken = held.local_addr().unwrap().port();
    let env = [
        ("BASE_PORT", taken.to_string()),
        ("LB_PORT", free_port().to_string()),
        ("WS_BASE_PORT", free_port().to_string()),
        ("WEB_PORT", free_port().to_string()),
    ];
    let (out, dir) = cluster_sh("taken", &["start", "1"], &env, Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "start succeeded: {err}");
    assert!(
        err.contains(&format!("port {taken} is taken")),
        "no clear line about port {taken}: {err}"
    );
    assert!(!dir.join("node1.pid").exists(), "a node was started anyway");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn help_describes_the_commands() {
    let (out, _) = cluster_sh("help", &["--help"], &[], Duration::from_secs(10));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "start [N]",
        "stop",
        "status",
        "BASE_PORT",
        "ADMIN_BASE_PORT",
        "WS_BASE_PORT",
        "WEB_PORT",
    ] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
}

#[test]
fn start_fails_with_a_clear_line_when_a_node_dies_at_start() {
    let port = free_port();
    let env = [
        ("BASE_PORT", port.to_string()),
        ("LB_PORT", free_port().to_string()),
        ("WS_BASE_PORT", free_port().to_string()),
        ("WEB_PORT", free_port().to_string()),
        ("NODE_ARGS", "--no-such-option".to_owned()),
    ];
    let (out, dir) = cluster_sh("dies", &["start", "1"], &env, Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "start succeeded: {err}");
    assert!(
        err.contains(&format!("node 1 (port {port}) died at start")),
        "no clear line about the dead node: {err}"
    );
    assert!(!dir.join("nginx.pid").exists(), "nginx was started anyway");
    let _ = std::fs::remove_dir_all(dir);
}
