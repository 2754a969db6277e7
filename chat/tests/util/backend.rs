//! A fresh database per test on either backend, removed afterwards (also on panic), and a
//! look at what is stored in it.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ::mysql::prelude::Queryable;
use chat::server::ServerOptions;
use chat::server_thread::ServerThread;

use super::TIMEOUT;

/// Distinguishes the databases and files of tests running in parallel.
fn unique_suffix() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{}_{n}", std::process::id())
}

/// A fresh, empty database for one test, removed when dropped (also on panic).
pub enum Backend {
    /// An SQLite file in the temp directory; the file and its WAL companions are deleted.
    Sqlite {
        /// The database file.
        path: PathBuf,
    },
    /// A database on the test MySQL server; it is dropped.
    Mysql {
        /// The server URL without a database.
        server: String,
        /// `chat_it_<pid>_<n>`.
        name: String,
    },
}

impl Backend {
    /// A fresh SQLite database (the file is created by the server).
    pub fn sqlite() -> Backend {
        let path = std::env::temp_dir().join(format!("chat_it_{}.db", unique_suffix()));
        Backend::Sqlite { path }
    }

    /// A fresh MySQL database (created by the server). Panics when MySQL is unreachable:
    /// a MySQL test never reports ok without MySQL.
    pub fn mysql() -> Backend {
        let server = mysql_server();
        if let Err(err) = mysql_conn(&server) {
            panic!("MySQL at {server} is unreachable: {err} (run scripts/ensure-services.sh)");
        }
        Backend::Mysql {
            server,
            name: format!("chat_it_{}", unique_suffix()),
        }
    }

    /// The URL to give the server.
    pub fn url(&self) -> String {
        match self {
            Backend::Sqlite { path } => format!("sqlite:{}", path.display()),
            Backend::Mysql { server, name } => format!("{server}/{name}"),
        }
    }

    /// Whether this is the SQLite backend.
    pub fn is_sqlite(&self) -> bool {
        matches!(self, Backend::Sqlite { .. })
    }

    /// How many offline messages are stored for `user` right now, read straight from the
    /// table (without taking them): shows which path a message took.
    pub fn stored_for(&self, user: i64) -> usize {
        stored_rows(&self.url(), user)
    }

    /// Writes a user straight into the `user` table (of a server started on this
    /// database), as an older server did: any name, even one REG now refuses, and a
    /// plaintext password (which LOGIN still accepts, as it does the legacy server's).
    /// Returns its id.
    pub fn legacy_user(&self, name: &str, password: &str) -> i64 {
        let sql = "INSERT INTO user (name, password, state) VALUES (?, ?, 'offline')";
        match self {
            Backend::Sqlite { path } => {
                let conn = rusqlite::Connection::open(path).expect("open sqlite");
                conn.busy_timeout(TIMEOUT).unwrap();
                conn.execute(sql, (name, password)).expect("insert a user");
                conn.last_insert_rowid()
            }
            Backend::Mysql { .. } => {
                let opts = ::mysql::Opts::from_url(&self.url()).expect("a MySQL URL");
                let mut conn = ::mysql::Conn::new(opts).expect("connect to MySQL");
                conn.exec_drop(sql, (name, password))
                    .expect("insert a user");
                conn.last_insert_id() as i64
            }
        }
    }

    /// Starts a server with default options on this database.
    pub fn start(&self) -> ServerThread {
        self.start_with(ServerOptions::default())
    }

    /// Starts a server with `opts` on this database.
    pub fn start_with(&self, opts: ServerOptions) -> ServerThread {
        ServerThread::start("127.0.0.1:0".parse().unwrap(), &self.url(), opts)
            .unwrap_or_else(|e| panic!("server on {} did not start: {e}", self.url()))
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        match self {
            Backend::Sqlite { path } => {
                for suffix in ["", "-wal", "-shm", "-journal"] {
                    let mut p = path.clone().into_os_string();
                    p.push(suffix);
                    let _ = std::fs::remove_file(p);
                }
            }
            Backend::Mysql { server, name } => {
                let dropped = mysql_conn(server)
                    .and_then(|mut c| c.query_drop(format!("DROP DATABASE IF EXISTS `{name}`")));
                if let Err(err) = dropped {
                    eprintln!("could not drop test database {name}: {err}");
                }
            }
        }
    }
}

/// The number of rows of `user` in the `offlinemessage` table of the database at `url`
/// (`sqlite:PATH` or a MySQL URL), counted without taking them.
pub fn stored_rows(url: &str, user: i64) -> usize {
    let sql = "SELECT COUNT(*) FROM offlinemessage WHERE userid = ?";
    let n: i64 = match url.strip_prefix("sqlite:") {
        Some(path) => {
            let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
            let conn = rusqlite::Connection::open_with_flags(path, flags).expect("open sqlite");
            conn.busy_timeout(TIMEOUT).unwrap();
            conn.query_row(sql, [user], |row| row.get(0))
                .expect("count stored rows")
        }
        None => {
            let opts = ::mysql::Opts::from_url(url).expect("a MySQL URL");
            let mut conn = ::mysql::Conn::new(opts).expect("connect to MySQL");
            conn.exec_first(sql, (user,))
                .expect("count stored rows")
                .expect("a count")
        }
    };
    usize::try_from(n).unwrap()
}

/// The MySQL server the tests use, without a trailing slash.
fn mysql_server() -> String {
    std::env::var("CHAT_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// A connection to the test MySQL server, no database selected.
fn mysql_conn(server: &str) -> Result<::mysql::Conn, ::mysql::Error> {
    let opts = ::mysql::Opts::from_url(server).expect("CHAT_TEST_MYSQL_URL is not a URL");
    let opts = ::mysql::OptsBuilder::from_opts(opts)
        .tcp_connect_timeout(Some(Duration::from_secs(3)))
        .read_timeout(Some(Duration::from_secs(30)));
    ::mysql::Conn::new(opts)
}

/// Runs each listed scenario `fn name(b: &Backend)` as `sqlite::name` and `mysql::name`.
#[macro_export]
macro_rules! both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $scenario() {
                let b = $crate::util::Backend::sqlite();
                super::$scenario(&b);
            })*
        }
        mod mysql {
            $(#[test]
            fn $scenario() {
                let b = $crate::util::Backend::mysql();
                super::$scenario(&b);
            })*
        }
    };
}
