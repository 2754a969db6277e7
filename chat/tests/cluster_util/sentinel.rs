//! A Sentinel-managed Redis for the failover tests: a primary, one replica and three
//! sentinels on private free ports in a temp dir, started by `scripts/cluster.sh
//! sentinel-start` and killed (processes, dir) when dropped — also when the test
//! panics. The machine's shared Redis is never touched.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{alive, free_port_run, poll, redis_con, script, signal, unique};

/// What to run when redis-sentinel is missing.
const HINT: &str = "run `bash scripts/ensure-services.sh` (as root) to install it";

/// A running primary + replica + three sentinels.
pub struct SentinelRedis {
    /// `$CLUSTER_DIR` of the script; the processes live in its `sentinel/`.
    dir: PathBuf,
    /// The primary's port; the replica is on +1, the sentinels on +2..+4.
    pub base_port: u16,
    /// The master's name in the sentinels.
    pub name: String,
    /// `redis+sentinel://…/name`, for `--redis`.
    pub url: String,
    /// The sentinels' down-after.
    pub down_after: Duration,
}

impl SentinelRedis {
    /// Starts them with a sentinel down-after of `down_after`; returns once the
    /// replica is in sync and the sentinels know each other (the script waits).
    pub fn start(down_after: Duration) -> SentinelRedis {
        let ok = Command::new("redis-sentinel")
            .arg("--version")
            .stdout(Stdio::null())
            .status();
        if !ok.is_ok_and(|s| s.success()) {
            panic!("the failover tests need the redis-sentinel binary; {HINT}");
        }
        let mut s = SentinelRedis {
            dir: std::env::temp_dir().join(format!("chat_sentinel_{}", unique())),
            base_port: 0,
            name: "chatmaster".into(),
            url: String::new(),
            down_after,
        };
        for attempt in 1..=3 {
            s.base_port = free_port_run(5);
            let out = s.run(&["sentinel-start"], s.down_after);
            if out.status.success() {
                s.url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                assert!(s.url.starts_with("redis+sentinel://"), "url {:?}", s.url);
                return s;
            }
            let _ = s.run(&["sentinel-stop"], s.down_after);
            let logs = s.logs();
            if attempt < 3 && logs.contains("Address already in use") {
                eprintln!("sentinel start lost a port race (attempt {attempt}); retrying");
                continue;
            }
            panic!(
                "cluster.sh sentinel-start failed: {}\n{logs}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        unreachable!("the last attempt returns or panics")
    }

    fn run(&self, args: &[&str], down_after: Duration) -> std::process::Output {
        Command::new("bash")
            .arg(script())
            .args(args)
            .env("CLUSTER_DIR", &self.dir)
            .env("SENTINEL_BASE_PORT", self.base_port.to_string())
            .env("SENTINEL_MASTER", &self.name)
            .env("SENTINEL_DOWN_AFTER_MS", down_after.as_millis().to_string())
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/cluster.sh")
    }

    fn pid(&self, what: &str) -> u32 {
        let f = self.dir.join("sentinel").join(format!("{what}.pid"));
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        text.trim().parse().expect("a pid")
    }

    /// The port the sentinels name as master now.
    pub fn master_port(&self) -> u16 {
        let url = format!("redis://127.0.0.1:{}", self.base_port + 2);
        let addr: Vec<String> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.name)
            .query(&mut redis_con(&url).expect("a sentinel"))
            .expect("SENTINEL get-master-addr-by-name");
        addr[1].parse().expect("a port")
    }

    /// Cuts the replica off the primary for good: it reconnects as a user that the
    /// primary then deletes (which drops the link and fails every reconnect), so
    /// writes from now on exist only on the primary — what a failover loses.
    pub fn cut_replica(&self) {
        let url = |port: u16| format!("redis://127.0.0.1:{port}");
        let mut primary = redis_con(&url(self.base_port)).expect("the primary");
        let mut replica = redis_con(&url(self.base_port + 1)).expect("the replica");
        let link = |replica: &mut redis::Connection| -> String {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(replica)
                .expect("INFO replication");
            info.lines()
                .find_map(|l| l.strip_prefix("master_link_status:"))
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let q = |con: &mut redis::Connection, args: &[&str]| {
            redis::cmd(args[0])
                .arg(&args[1..])
                .query::<redis::Value>(con)
                .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        };
        q(
            &mut primary,
            &["ACL", "SETUSER", "cut", "on", ">cut", "~*", "&*", "+@all"],
        );
        q(&mut replica, &["CONFIG", "SET", "masteruser", "cut"]);
        q(&mut replica, &["CONFIG", "SET", "masterauth", "cut"]);
        q(&mut primary, &["CLIENT", "KILL", "TYPE", "replica"]);
        // Wait until the replica is back, as `cut`, then delete `cut`.
        poll(
            Duration::from_secs(10),
            "replica relinks as user cut",
            || {
                let users: String = redis::cmd("CLIENT")
                    .arg("LIST")
                    .arg("TYPE")
                    .arg("replica")
                    .query(&mut primary)
                    .ok()?;
                (users.contains("user=cut") && link(&mut replica) == "up").then_some(())
            },
        );
        q(&mut primary, &["ACL", "DELUSER", "cut"]);
        poll(Duration::from_secs(10), "replica link down", || {
            (link(&mut replica) == "down").then_some(())
        });
    }

    /// Swaps the roles behind the nodes' backs, as a partition healing late can:
    /// the replica becomes master, the primary its replica (its clients stay
    /// connected and get READONLY), and the sentinels are told to monitor the new
    /// master (no sentinel failover, so nobody kills the old master's clients).
    pub fn swap_quietly(&self) {
        let url = |port: u16| format!("redis://127.0.0.1:{port}");
        let (old, new) = (self.base_port, self.base_port + 1);
        let run = |port: u16, args: &[&str]| {
            redis::cmd(args[0])
                .arg(&args[1..])
                .query::<redis::Value>(&mut redis_con(&url(port)).expect("a Redis"))
                .unwrap_or_else(|e| panic!(":{port} {args:?}: {e}"));
        };
        let new_s = new.to_string();
        let down = self.down_after.as_millis().to_string();
        for s in self.base_port + 2..=self.base_port + 4 {
            run(s, &["SENTINEL", "REMOVE", &self.name]);
        }
        run(new, &["REPLICAOF", "NO", "ONE"]);
        run(old, &["REPLICAOF", "127.0.0.1", &new_s]);
        for s in self.base_port + 2..=self.base_port + 4 {
            run(
                s,
                &["SENTINEL", "MONITOR", &self.name, "127.0.0.1", &new_s, "2"],
            );
            run(
                s,
                &[
                    "SENTINEL",
                    "SET",
                    &self.name,
                    "down-after-milliseconds",
                    &down,
                ],
            );
        }
    }

    /// SIGSTOPs the primary: its connections stay open but nothing answers, as
    /// with a partition. (Stopped processes are still SIGKILLed by the drop.)
    pub fn freeze_primary(&self) {
        signal(self.pid("primary"), "-STOP");
    }

    /// SIGKILLs the primary (what it had not replicated is gone); returns when it is.
    pub fn kill_primary(&self) {
        let pid = self.pid("primary");
        signal(pid, "-9");
        poll(Duration::from_secs(10), "killed primary exits", || {
            (!alive(pid)).then_some(())
        });
    }

    /// The tails of the Redis and sentinel logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["primary", "replica", "sentinel1", "sentinel2", "sentinel3"] {
            let f = self.dir.join("sentinel").join(format!("{name}.log"));
            let text = std::fs::read_to_string(f).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            out.push_str(&format!("--- {name}.log\n{}\n", tail.join("\n")));
        }
        out
    }
}

impl Drop for SentinelRedis {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("sentinel set at failure:\n{}", self.logs());
        }
        let _ = self.run(&["sentinel-stop"], self.down_after);
        if !std::thread::panicking() && std::env::var_os("CLUSTER_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
