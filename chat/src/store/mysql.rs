//! The MySQL/MariaDB backend: an r2d2 pool, and a schema that upgrades legacy databases.
//!
//! On open the database is created if missing, then every table is checked against
//! [`TABLES`] through `information_schema` and created or upgraded in place: utf8mb4,
//! wider columns, NOT NULL, unique keys (after removing duplicate rows) and an ordering
//! column on `offlinemessage`. The upgrade runs under a named lock, so servers of one
//! cluster that start together do not race it, and is a no-op once the schema conforms.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::mysql::prelude::Queryable;
use ::mysql::{Conn, IsolationLevel, Opts, OptsBuilder, TxOpts};
use r2d2_mysql::MySqlConnectionManager;

use super::{fits, AddFriend, GroupRow, JoinGroup, MemberRow, Role, Store, StoreError, UserRow};
use crate::password;

/// The database used when the URL names none (the one `chat.sql` creates).
pub const DEFAULT_DATABASE: &str = "chat";
/// TCP connect timeout: a dead server gives an error, not a hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Read/write timeout on a connection; longer than any statement of ours should take.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a caller waits for a free pooled connection.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);
/// After a checkout failed (the database is unreachable), further checkouts fail at
/// once for this long: a circuit breaker, so that an outage costs each request an
/// immediate error reply instead of [`POOL_TIMEOUT`] of a worker.
const BREAKER: Duration = Duration::from_secs(1);
/// How long the one checkout that probes an open breaker may wait.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a starting server waits for another one that is upgrading the schema.
const SCHEMA_LOCK_TIMEOUT_SECS: u32 = 120;
/// Attempts of a transaction that InnoDB chose as a deadlock victim.
const DEADLOCK_ATTEMPTS: u32 = 8;
/// Ids per `IN (…)` list in bulk updates.
const IN_CHUNK: usize = 500;

/// Table options of every table: utf8mb4 throughout, binary collation so names compare
/// exactly (as in SQLite) and distinct emoji stay distinct.
pub(super) const TABLE_OPTIONS: &str = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";
/// The collation every text column must have after the upgrade.
const COLLATION: &str = "utf8mb4_bin";

/// One table of the schema: what to create, and what to check an existing table against.
pub(super) struct TableSpec {
    /// The table name (legacy name, unchanged).
    pub(super) name: &'static str,
    /// The column and key definitions of `CREATE TABLE name ( … )`.
    pub(super) body: &'static str,
    /// Columns as `(name, DATA_TYPE, CHARACTER_MAXIMUM_LENGTH)`; all are NOT NULL.
    columns: &'static [(&'static str, &'static str, Option<u64>)],
    /// Unique keys (comma-separated column lists) the table must have.
    unique: &'static [&'static str],
}

/// The schema; `chat.sql` holds the same `CREATE TABLE` statements (a test checks it).
pub(super) const TABLES: [TableSpec; 8] = [
    TableSpec {
        name: "user",
        body: "id INT NOT NULL AUTO_INCREMENT,
  name VARCHAR(50) NOT NULL,
  password VARCHAR(255) NOT NULL,
  state ENUM('online', 'offline') NOT NULL DEFAULT 'offline',
  PRIMARY KEY (id),
  UNIQUE KEY name (name)",
        columns: &[
            ("id", "int", None),
            ("name", "varchar", Some(50)),
            ("password", "varchar", Some(255)),
            ("state", "enum", None),
        ],
        unique: &["id", "name"],
    },
    TableSpec {
        name: "friend",
        body: "userid INT NOT NULL,
  friendid INT NOT NULL,
  PRIMARY KEY (userid, friendid),
  KEY friendid (friendid)",
        columns: &[("userid", "int", None), ("friendid", "int", None)],
        unique: &["userid,friendid"],
    },
    TableSpec {
        name: "allgroup",
        body: "id INT NOT NULL AUTO_INCREMENT,
  groupname VARCHAR(50) NOT NULL,
  groupdesc VARCHAR(200) NOT NULL DEFAULT '',
  PRIMARY KEY (id),
  UNIQUE KEY groupname (groupname)",
        columns: &[
            ("id", "int", None),
            ("groupname", "varchar", Some(50)),
            ("groupdesc", "varchar", Some(200)),
        ],
        unique: &["id", "groupname"],
    },
    TableSpec {
        name: "groupuser",
        body: "groupid INT NOT NULL,
  userid INT NOT NULL,
  grouprole ENUM('creator', 'normal') NOT NULL DEFAULT 'normal',
  PRIMARY KEY (groupid, userid),
  KEY userid (userid)",
        columns: &[
            ("groupid", "int", None),
            ("userid", "int", None),
            ("grouprole", "enum", None),
        ],
        unique: &["groupid,userid"],
    },
    TableSpec {
        name: "offlinemessage",
        body: "id BIGINT NOT NULL AUTO_INCREMENT,
  userid INT NOT NULL,
  message MEDIUMTEXT NOT NULL,
  PRIMARY KEY (id),
  KEY userid (userid, id)",
        columns: &[
            ("id", "bigint", None),
            ("userid", "int", None),
            ("message", "mediumtext", None),
        ],
        unique: &["id"],
    },
    // History (protocol.md §10): a page is one range of the primary key; `ts` serves
    // the retention sweep.
    TableSpec {
        name: "history",
        body: "conv BIGINT NOT NULL,
  seq BIGINT NOT NULL,
  sender INT NOT NULL,
  ts BIGINT NOT NULL,
  message MEDIUMTEXT NOT NULL,
  PRIMARY KEY (conv, seq),
  KEY ts (ts)",
        columns: &[
            ("conv", "bigint", None),
            ("seq", "bigint", None),
            ("sender", "int", None),
            ("ts", "bigint", None),
            ("message", "mediumtext", None),
        ],
        unique: &["conv,seq"],
    },
    TableSpec {
        name: "historyseq",
        body: "conv BIGINT NOT NULL,
  seq BIGINT NOT NULL,
  PRIMARY KEY (conv)",
        columns: &[("conv", "bigint", None), ("seq", "bigint", None)],
        unique: &["conv"],
    },
    TableSpec {
        name: "friendrequest",
        body: "fromid INT NOT NULL,
  toid INT NOT NULL,
  PRIMARY KEY (fromid, toid),
  KEY toid (toid)",
        columns: &[("fromid", "int", None), ("toid", "int", None)],
        unique: &["fromid,toid"],
    },
];

/// `CREATE TABLE [IF NOT EXISTS] name (body) options` for a table of [`TABLES`] (or its
/// temporary copy during an upgrade). `name` is always one of ours, never user data.
pub(super) fn create_table_sql(name: &str, body: &str, if_not_exists: bool) -> String {
    let ine = if if_not_exists { "IF NOT EXISTS " } else { "" };
    format!("CREATE TABLE {ine}{name} (\n  {body}\n) {TABLE_OPTIONS}")
}

/// The MySQL [`Store`]. Cheap to share behind an `Arc`; every method is thread-safe.
pub struct MysqlStore {
    /// Pooled connections to the chat database.
    pool: r2d2::Pool<MySqlConnectionManager>,
    /// Milliseconds since `epoch` until which checkouts fail fast (see [`BREAKER`]);
    /// 0 while the database is reachable.
    down_until: AtomicU64,
    epoch: Instant,
}

/// A pooled connection.
type PooledConn = r2d2::PooledConnection<MySqlConnectionManager>;

impl MysqlStore {
    /// Connects to `url` (`mysql://user:pass@host:port[/db]`, db defaulting to
    /// [`DEFAULT_DATABASE`]), creates the database if missing, creates or upgrades the
    /// tables, and opens a pool of at most `pool_size` connections.
    pub fn open(url: &str, pool_size: u32) -> Result<MysqlStore, StoreError> {
        let opts = Opts::from_url(url).map_err(|e| StoreError::Config(e.to_string()))?;
        let db = opts.get_db_name().unwrap_or(DEFAULT_DATABASE).to_owned();
        if db.is_empty()
            || db.len() > 64
            || !db.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(StoreError::Config(format!(
                "database name {db:?}: use 1 to 64 ASCII letters, digits or '_'"
            )));
        }
        let opts = OptsBuilder::from_opts(opts)
            .tcp_connect_timeout(Some(CONNECT_TIMEOUT))
            .read_timeout(Some(IO_TIMEOUT))
            .write_timeout(Some(IO_TIMEOUT))
            .init(vec!["SET NAMES utf8mb4"]);

        let mut conn = Conn::new(opts.clone().db_name(None::<String>))?;
        // The name was checked above to be a plain identifier: safe to quote and inline.
        conn.query_drop(format!(
            "CREATE DATABASE IF NOT EXISTS `{db}` CHARACTER SET utf8mb4 COLLATE {COLLATION}"
        ))?;
        conn.select_db(&db)?;
        migrate(&mut conn)?;
        drop(conn);

        let manager = MySqlConnectionManager::new(opts.db_name(Some(db)));
        let pool = r2d2::Pool::builder()
            .max_size(pool_size.max(1))
            .connection_timeout(POOL_TIMEOUT)
            .build(manager)?;
        Ok(MysqlStore {
            pool,
            down_until: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// A pooled connection, or `Unavailable` after [`POOL_TIMEOUT`] — or at once
    /// while the breaker is open: then only one caller at a time probes the database
    /// (for at most [`PROBE_TIMEOUT`]) and the others fail fast, so an outage does not
    /// hold every worker for seconds per request.
    pub(super) fn conn(&self) -> Result<PooledConn, StoreError> {
        let until = self.down_until.load(Ordering::Acquire);
        let timeout = if until == 0 {
            POOL_TIMEOUT
        } else {
            let now = self.now_ms();
            if now < until
                || self
                    .down_until
                    .compare_exchange(
                        until,
                        now + ms(BREAKER),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_err()
            {
                return Err(StoreError::Unavailable(
                    "database unreachable (recent failure)".into(),
                ));
            }
            PROBE_TIMEOUT
        };
        match self.pool.get_timeout(timeout) {
            Ok(conn) => {
                if until != 0 {
                    self.down_until.store(0, Ordering::Release);
                }
                Ok(conn)
            }
            Err(e) => {
                // Never 0 (which means closed): `now_ms() + BREAKER` is at least 1000.
                self.down_until
                    .store(self.now_ms() + ms(BREAKER), Ordering::Release);
                Err(e.into())
            }
        }
    }

    fn now_ms(&self) -> u64 {
        ms(self.epoch.elapsed())
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl From<::mysql::Error> for StoreError {
    fn from(err: ::mysql::Error) -> Self {
        use ::mysql::Error as E;
        match err {
            E::IoError(_) | E::CodecError(_) | E::DriverError(_) => {
                StoreError::Unavailable(err.to_string())
            }
            _ => StoreError::Backend(err.to_string()),
        }
    }
}

/// The server error code of `err`, if it is one.
fn server_code(err: &::mysql::Error) -> Option<u16> {
    match err {
        ::mysql::Error::MySqlError(e) => Some(e.code),
        _ => None,
    }
}

/// ER_DUP_ENTRY: a unique key would be violated.
fn is_duplicate(err: &::mysql::Error) -> bool {
    server_code(err) == Some(1062)
}

/// Runs a transaction body again when InnoDB picked it as a deadlock victim (it was
/// rolled back whole, so a retry is safe).
pub(super) fn retry_deadlock<T>(
    mut body: impl FnMut() -> Result<T, ::mysql::Error>,
) -> Result<T, StoreError> {
    let mut attempt = 1;
    loop {
        match body() {
            Err(err) if server_code(&err) == Some(1213) && attempt < DEADLOCK_ATTEMPTS => {
                log::debug!("mysql store: deadlock, retrying ({attempt})");
                attempt += 1;
            }
            result => return Ok(result?),
        }
    }
}

/// Transaction options: REPEATABLE READ, so a locking read also locks the gaps and no
/// row can appear inside a range that was read `FOR UPDATE`.
pub(super) fn tx_opts() -> TxOpts {
    TxOpts::default().set_isolation_level(Some(IsolationLevel::RepeatableRead))
}

/// Creates or upgrades every table of [`TABLES`], holding a named lock meanwhile.
fn migrate(conn: &mut Conn) -> Result<(), StoreError> {
    const LOCK: &str = "LEFT(CONCAT('chat_schema:', DATABASE()), 64)";
    let locked: Option<Option<i64>> = conn.exec_first(
        format!("SELECT GET_LOCK({LOCK}, ?)"),
        (SCHEMA_LOCK_TIMEOUT_SECS,),
    )?;
    if locked.flatten() != Some(1) {
        return Err(StoreError::Unavailable(
            "timed out waiting for another server to upgrade the schema".into(),
        ));
    }
    let result = TABLES
        .iter()
        .try_for_each(|spec| migrate_table(conn, spec))
        .and_then(|()| super::mysql_social::ensure_indexes(conn));
    conn.query_drop(format!("DO RELEASE_LOCK({LOCK})"))?;
    result
}

/// Creates `spec`'s table if missing, or upgrades it if it does not conform.
fn migrate_table(conn: &mut Conn, spec: &TableSpec) -> Result<(), StoreError> {
    let exists: Option<i64> = conn.exec_first(
        "SELECT COUNT(*) FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
        (spec.name,),
    )?;
    if exists.unwrap_or(0) == 0 {
        conn.query_drop(create_table_sql(spec.name, spec.body, true))?;
    }
    if conforms(conn, spec)? {
        return Ok(());
    }
    log::info!("mysql store: upgrading table {} in place", spec.name);
    match spec.name {
        "user" => upgrade_user(conn)?,
        "allgroup" => upgrade_allgroup(conn)?,
        "friend" => rebuild(
            conn,
            spec,
            "INSERT INTO friend__new (userid, friendid) \
             SELECT DISTINCT userid, friendid FROM friend \
             WHERE userid IS NOT NULL AND friendid IS NOT NULL",
        )?,
        // A member listed twice keeps the stronger role ('creator' < 'normal').
        "groupuser" => rebuild(
            conn,
            spec,
            "INSERT INTO groupuser__new (groupid, userid, grouprole) \
             SELECT groupid, userid, MIN(COALESCE(grouprole, 'normal')) FROM groupuser \
             WHERE groupid IS NOT NULL AND userid IS NOT NULL GROUP BY groupid, userid",
        )?,
        "offlinemessage" => {
            // Without an ordering column the legacy rows come out of a scan in insertion
            // order (InnoDB's hidden row id); with one, in its order.
            let copy = if has_column(conn, "offlinemessage", "id")? {
                "INSERT INTO offlinemessage__new (userid, message) \
                 SELECT userid, message FROM offlinemessage \
                 WHERE userid IS NOT NULL AND message IS NOT NULL ORDER BY id"
            } else {
                "INSERT INTO offlinemessage__new (userid, message) \
                 SELECT userid, message FROM offlinemessage \
                 WHERE userid IS NOT NULL AND message IS NOT NULL"
            };
            rebuild(conn, spec, copy)?
        }
        other => unreachable!("no upgrade for table {other}"),
    }
    if !conforms(conn, spec)? {
        return Err(StoreError::Backend(format!(
            "table {} still differs from the schema after the upgrade",
            spec.name
        )));
    }
    Ok(())
}

/// A row of `information_schema.COLUMNS`: name, DATA_TYPE, CHARACTER_MAXIMUM_LENGTH,
/// IS_NULLABLE, COLLATION_NAME.
type ColumnInfo = (String, String, Option<u64>, String, Option<String>);

/// Whether the existing table matches `spec`: utf8mb4_bin everywhere, every column of
/// the spec present with its type and NOT NULL, every unique key present.
pub(super) fn conforms(conn: &mut Conn, spec: &TableSpec) -> Result<bool, StoreError> {
    let collation: Option<Option<String>> = conn.exec_first(
        "SELECT TABLE_COLLATION FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
        (spec.name,),
    )?;
    if collation.flatten().as_deref() != Some(COLLATION) {
        return Ok(false);
    }
    let columns: Vec<ColumnInfo> = conn.exec(
        "SELECT COLUMN_NAME, DATA_TYPE, CHARACTER_MAXIMUM_LENGTH, IS_NULLABLE, COLLATION_NAME \
         FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
        (spec.name,),
    )?;
    if columns
        .iter()
        .any(|c| c.4.as_deref().is_some_and(|coll| coll != COLLATION))
    {
        return Ok(false);
    }
    for &(name, data_type, max_len) in spec.columns {
        let found = columns.iter().find(|c| c.0.eq_ignore_ascii_case(name));
        let ok = found.is_some_and(|c| {
            c.1.eq_ignore_ascii_case(data_type)
                && (max_len.is_none() || c.2 == max_len)
                && c.3 == "NO"
        });
        if !ok {
            return Ok(false);
        }
    }
    let keys = unique_keys(conn, spec.name)?;
    Ok(spec
        .unique
        .iter()
        .all(|want| keys.iter().any(|have| have.eq_ignore_ascii_case(want))))
}

/// The unique keys (PRIMARY included) of `table`, each as its comma-separated columns.
fn unique_keys(conn: &mut Conn, table: &str) -> Result<Vec<String>, StoreError> {
    Ok(conn.exec(
        "SELECT GROUP_CONCAT(COLUMN_NAME ORDER BY SEQ_IN_INDEX SEPARATOR ',') \
         FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND NON_UNIQUE = 0 \
         GROUP BY INDEX_NAME",
        (table,),
    )?)
}

/// Whether `table` has a column named `column`.
fn has_column(conn: &mut Conn, table: &str, column: &str) -> Result<bool, StoreError> {
    let n: Option<i64> = conn.exec_first(
        "SELECT COUNT(*) FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = ?",
        (table, column),
    )?;
    Ok(n.unwrap_or(0) > 0)
}

/// Whether `table` has a unique index on exactly `columns` (comma-separated).
fn has_unique(conn: &mut Conn, table: &str, columns: &str) -> Result<bool, StoreError> {
    let keys = unique_keys(conn, table)?;
    Ok(keys.iter().any(|k| k.eq_ignore_ascii_case(columns)))
}

/// Upgrades a legacy `user` in place (ids and the AUTO_INCREMENT counter are kept):
/// NULLs replaced, utf8mb4, `password` widened for hashes, NOT NULL.
fn upgrade_user(conn: &mut Conn) -> Result<(), StoreError> {
    conn.query_drop("UPDATE user SET name = CONCAT('user', id) WHERE name IS NULL")?;
    conn.query_drop("UPDATE user SET state = 'offline' WHERE state IS NULL")?;
    conn.query_drop(format!(
        "ALTER TABLE user CONVERT TO CHARACTER SET utf8mb4 COLLATE {COLLATION}"
    ))?;
    // Widen first: the hash below does not fit the legacy VARCHAR(50).
    conn.query_drop("ALTER TABLE user MODIFY password VARCHAR(255) NULL")?;
    let no_password: Option<i64> =
        conn.query_first("SELECT COUNT(*) FROM user WHERE password IS NULL")?;
    if no_password.unwrap_or(0) > 0 {
        // A NULL password matched nothing in legacy: store a hash no password matches.
        conn.exec_drop(
            "UPDATE user SET password = ? WHERE password IS NULL",
            (password::unusable(),),
        )?;
    }
    conn.query_drop(
        "ALTER TABLE user MODIFY name VARCHAR(50) NOT NULL, \
         MODIFY password VARCHAR(255) NOT NULL, \
         MODIFY state ENUM('online', 'offline') NOT NULL DEFAULT 'offline'",
    )?;
    if !has_unique(conn, "user", "name")? {
        conn.query_drop("ALTER TABLE user ADD UNIQUE KEY name (name)")?;
    }
    Ok(())
}

/// Upgrades a legacy `allgroup` in place (ids kept): NULLs replaced, utf8mb4, NOT NULL.
fn upgrade_allgroup(conn: &mut Conn) -> Result<(), StoreError> {
    conn.query_drop("UPDATE allgroup SET groupname = CONCAT('group', id) WHERE groupname IS NULL")?;
    conn.query_drop("UPDATE allgroup SET groupdesc = '' WHERE groupdesc IS NULL")?;
    conn.query_drop(format!(
        "ALTER TABLE allgroup CONVERT TO CHARACTER SET utf8mb4 COLLATE {COLLATION}"
    ))?;
    conn.query_drop(
        "ALTER TABLE allgroup MODIFY groupname VARCHAR(50) NOT NULL, \
         MODIFY groupdesc VARCHAR(200) NOT NULL DEFAULT ''",
    )?;
    if !has_unique(conn, "allgroup", "groupname")? {
        conn.query_drop("ALTER TABLE allgroup ADD UNIQUE KEY groupname (groupname)")?;
    }
    Ok(())
}

/// Replaces a table by a copy with the new definition: creates `name__new`, fills it
/// with `copy` (which deduplicates or orders as needed), swaps the two atomically with
/// RENAME TABLE and drops the old one. Stop legacy servers first: rows they write to the
/// old table during the copy are not carried over.
fn rebuild(conn: &mut Conn, spec: &TableSpec, copy: &str) -> Result<(), StoreError> {
    let name = spec.name;
    let (new, old) = (format!("{name}__new"), format!("{name}__old"));
    conn.query_drop(format!("DROP TABLE IF EXISTS {new}"))?;
    conn.query_drop(format!("DROP TABLE IF EXISTS {old}"))?;
    conn.query_drop(create_table_sql(&new, spec.body, false))?;
    conn.query_drop(copy)?;
    conn.query_drop(format!("RENAME TABLE {name} TO {old}, {new} TO {name}"))?;
    conn.query_drop(format!("DROP TABLE {old}"))?;
    Ok(())
}

/// `?, ?, …` with `n` placeholders, for an `IN (…)` list of bound ids.
pub(super) fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

impl Store for MysqlStore {
    fn register(&self, name: &str, password_hash: &str) -> Result<Option<i64>, StoreError> {
        if !fits(name, "") {
            return Ok(None);
        }
        let mut conn = self.conn()?;
        match conn.exec_drop(
            "INSERT INTO user (name, password, state) VALUES (?, ?, 'offline')",
            (name, password_hash),
        ) {
            Ok(()) => Ok(Some(conn.last_insert_id() as i64)),
            Err(err) if is_duplicate(&err) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    fn user(&self, id: i64) -> Result<Option<UserRow>, StoreError> {
        let mut conn = self.conn()?;
        let row: Option<(i64, String, String, String)> = conn.exec_first(
            "SELECT id, name, password, state FROM user WHERE id = ?",
            (id,),
        )?;
        Ok(row.map(|(id, name, password, state)| UserRow {
            id,
            name,
            password,
            online: state == "online",
        }))
    }

    fn set_password(&self, id: i64, password_hash: &str) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        conn.exec_drop(
            "UPDATE user SET password = ? WHERE id = ?",
            (password_hash, id),
        )?;
        Ok(())
    }

    fn set_state(&self, id: i64, online: bool) -> Result<(), StoreError> {
        let state = if online { "online" } else { "offline" };
        let mut conn = self.conn()?;
        conn.exec_drop("UPDATE user SET state = ? WHERE id = ?", (state, id))?;
        Ok(())
    }

    fn set_offline_many(&self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn()?;
        for chunk in ids.chunks(IN_CHUNK) {
            conn.exec_drop(
                format!(
                    "UPDATE user SET state = 'offline' WHERE id IN ({})",
                    placeholders(chunk.len())
                ),
                chunk.to_vec(),
            )?;
        }
        Ok(())
    }

    fn set_all_offline(&self) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        conn.query_drop("UPDATE user SET state = 'offline' WHERE state <> 'offline'")?;
        Ok(())
    }

    fn friends(&self, id: i64) -> Result<Vec<(i64, String)>, StoreError> {
        let mut conn = self.conn()?;
        Ok(conn.exec(
            "SELECT u.id, u.name FROM friend f JOIN user u ON u.id = f.friendid \
             WHERE f.userid = ? ORDER BY u.id",
            (id,),
        )?)
    }

    fn add_friend(&self, id: i64, friend_id: i64) -> Result<AddFriend, StoreError> {
        let mut conn = self.conn()?;
        let result = conn.exec_drop(
            "INSERT INTO friend (userid, friendid) SELECT ?, id FROM user WHERE id = ?",
            (id, friend_id),
        );
        Ok(match result {
            Ok(()) if conn.affected_rows() == 0 => AddFriend::NoSuchUser,
            Ok(()) => AddFriend::Added,
            Err(err) if is_duplicate(&err) => AddFriend::AlreadyFriends,
            Err(err) => return Err(err.into()),
        })
    }

    fn create_group(
        &self,
        creator: i64,
        name: &str,
        desc: &str,
    ) -> Result<Option<i64>, StoreError> {
        if !fits(name, desc) {
            return Ok(None);
        }
        let mut conn = self.conn()?;
        retry_deadlock(|| {
            let mut tx = conn.start_transaction(tx_opts())?;
            match tx.exec_drop(
                "INSERT INTO allgroup (groupname, groupdesc) VALUES (?, ?)",
                (name, desc),
            ) {
                Ok(()) => {}
                Err(err) if is_duplicate(&err) => return Ok(None),
                Err(err) => return Err(err),
            }
            let group = tx
                .last_insert_id()
                .expect("an AUTO_INCREMENT insert sets the id") as i64;
            tx.exec_drop(
                "INSERT INTO groupuser (groupid, userid, grouprole) VALUES (?, ?, 'creator')",
                (group, creator),
            )?;
            tx.commit()?;
            Ok(Some(group))
        })
    }

    fn join_group(&self, user: i64, group: i64) -> Result<JoinGroup, StoreError> {
        let mut conn = self.conn()?;
        let result = conn.exec_drop(
            "INSERT INTO groupuser (groupid, userid, grouprole) \
             SELECT id, ?, 'normal' FROM allgroup WHERE id = ?",
            (user, group),
        );
        Ok(match result {
            Ok(()) if conn.affected_rows() == 0 => JoinGroup::NoSuchGroup,
            Ok(()) => JoinGroup::Joined,
            Err(err) if is_duplicate(&err) => JoinGroup::AlreadyMember,
            Err(err) => return Err(err.into()),
        })
    }

    fn groups_of(&self, user: i64) -> Result<Vec<GroupRow>, StoreError> {
        let mut conn = self.conn()?;
        let rows: Vec<(i64, String, String, i64, String, String)> = conn.exec(
            "SELECT g.id, g.groupname, g.groupdesc, u.id, u.name, m.grouprole \
             FROM groupuser mine \
             JOIN allgroup g ON g.id = mine.groupid \
             JOIN groupuser m ON m.groupid = g.id \
             JOIN user u ON u.id = m.userid \
             WHERE mine.userid = ? ORDER BY g.id, u.id",
            (user,),
        )?;
        let mut groups: Vec<GroupRow> = Vec::new();
        for (id, name, desc, member, member_name, role) in rows {
            if groups.last().map(|g| g.id) != Some(id) {
                groups.push(GroupRow {
                    id,
                    name,
                    desc,
                    members: Vec::new(),
                });
            }
            groups
                .last_mut()
                .expect("pushed above")
                .members
                .push(MemberRow {
                    id: member,
                    name: member_name,
                    role: Role::from_column(&role),
                });
        }
        Ok(groups)
    }

    fn group_members(&self, group: i64) -> Result<Option<Vec<i64>>, StoreError> {
        let mut conn = self.conn()?;
        let exists: Option<i64> =
            conn.exec_first("SELECT id FROM allgroup WHERE id = ?", (group,))?;
        if exists.is_none() {
            return Ok(None);
        }
        Ok(Some(conn.exec(
            "SELECT userid FROM groupuser WHERE groupid = ? ORDER BY userid",
            (group,),
        )?))
    }

    fn user_exists(&self, id: i64) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let found: Option<i64> = conn.exec_first("SELECT id FROM user WHERE id = ?", (id,))?;
        Ok(found.is_some())
    }

    fn store_offline(&self, user: i64, message: &str) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        // A take's locking read holds the gap this insert needs: InnoDB may pick
        // the insert as the deadlock victim, and it is safe to run again.
        retry_deadlock(|| {
            conn.exec_drop(
                "INSERT INTO offlinemessage (userid, message) VALUES (?, ?)",
                (user, message),
            )
        })
    }

    fn store_offline_many(&self, users: &[i64], message: &str) -> Result<(), StoreError> {
        if users.is_empty() {
            return Ok(());
        }
        // Ascending order keeps the lock order consistent with concurrent fan-outs.
        let mut users = users.to_vec();
        users.sort_unstable();
        let mut conn = self.conn()?;
        retry_deadlock(|| {
            let mut tx = conn.start_transaction(tx_opts())?;
            tx.exec_batch(
                "INSERT INTO offlinemessage (userid, message) VALUES (?, ?)",
                users.iter().map(|&user| (user, message)),
            )?;
            tx.commit()
        })
    }

    fn take_offline_batch(&self, user: i64, max: usize) -> Result<Vec<String>, StoreError> {
        let limit = u64::try_from(max).unwrap_or(u64::MAX);
        let mut conn = self.conn()?;
        retry_deadlock(|| {
            let mut tx = conn.start_transaction(tx_opts())?;
            // FOR UPDATE locks the rows and the gaps of this user's range: a concurrent
            // insert waits for the commit and is then kept for the next take.
            let rows: Vec<(i64, String)> = tx.exec(
                "SELECT id, message FROM offlinemessage WHERE userid = ? ORDER BY id LIMIT ? \
                 FOR UPDATE",
                (user, limit),
            )?;
            if let Some(&(last, _)) = rows.last() {
                tx.exec_drop(
                    "DELETE FROM offlinemessage WHERE userid = ? AND id <= ?",
                    (user, last),
                )?;
            }
            tx.commit()?;
            Ok(rows.into_iter().map(|(_, message)| message).collect())
        })
    }
}
