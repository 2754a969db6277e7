//! A private MariaDB for one test: its own data directory, port and socket, run as a
//! child process so the test can kill it (SIGKILL, as a crash) and start it again on
//! the same data. The machine's shared MariaDB is never touched.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ::mysql::prelude::Queryable;

use super::{free_port, require_binary, unique};

/// Options of both the bootstrap and the server: small InnoDB files so that the
/// bootstrap writes ~25 MiB instead of ~115 MiB.
const SMALL: [&str; 3] = [
    "--innodb-log-file-size=8M",
    "--innodb-buffer-pool-size=32M",
    "--skip-name-resolve",
];

/// A `mariadbd` child on 127.0.0.1 with root and no password.
pub struct MariaDb {
    dir: PathBuf,
    /// The TCP port, kept across restarts.
    pub port: u16,
    mariadbd: PathBuf,
    child: Option<Child>,
}

impl MariaDb {
    /// Creates a data directory with `mariadb-install-db` and starts the server;
    /// returns once it answers `SELECT 1`. Panics if a binary is missing or it does
    /// not come up.
    pub fn start() -> MariaDb {
        let install = require_binary("mariadb-install-db");
        let mariadbd = require_binary("mariadbd");
        let dir = std::env::temp_dir().join(format!("chat_hard_mariadb_{}", unique()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the MariaDB directory");
        let mut db = MariaDb {
            port: free_port(),
            dir,
            mariadbd,
            child: None,
        };
        let out = Command::new(&install)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", db.datadir().display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .args(root_user())
            .args(SMALL)
            .stdin(Stdio::null())
            .output()
            .expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        db.spawn();
        db
    }

    fn datadir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `mysql://root@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{db}", self.port)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mariadbd.log"))
            .expect("open the MariaDB log");
        let child = Command::new(&self.mariadbd)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", self.datadir().display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--socket={}", self.dir.join("sock").display()))
            .arg(format!("--pid-file={}", self.dir.join("pid").display()))
            .args(["--bind-address=127.0.0.1", "--skip-log-bin"])
            .args(root_user())
            .args(SMALL)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup the log"))
            .stderr(log)
            .spawn()
            .expect("start mariadbd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.ping().is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("mariadbd exited at start ({status}):\n{}", self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "private mariadbd did not answer within 30 s:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `SELECT 1` on a fresh connection.
    pub fn ping(&self) -> Result<(), ::mysql::Error> {
        let opts = ::mysql::OptsBuilder::new()
            .ip_or_hostname(Some("127.0.0.1"))
            .tcp_port(self.port)
            .user(Some("root"))
            .tcp_connect_timeout(Some(Duration::from_secs(2)))
            .read_timeout(Some(Duration::from_secs(5)));
        let mut c = ::mysql::Conn::new(opts)?;
        c.query_drop("SELECT 1")
    }

    /// Kills it with SIGKILL (a crash) and waits for the exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same data directory and port; returns once it answers.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("mariadbd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// mariadbd refuses to run as root unless told to; as another user it needs nothing.
fn root_user() -> Vec<&'static str> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        vec!["--user=root"]
    } else {
        Vec::new()
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("private mariadbd log tail:\n{}", self.log_tail());
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
