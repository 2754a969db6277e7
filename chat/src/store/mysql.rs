//! The MySQL/MariaDB backend: an r2d2 pool with a circuit breaker, and the queries.
//!
//! On open the database is created if missing and the tables are created or upgraded
//! (see `mysql_schema`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::mysql::prelude::Queryable;
use ::mysql::{Conn, IsolationLevel, Opts, OptsBuilder, TxOpts};
use r2d2_mysql::MySqlConnectionManager;

use super::mysql_history;
use super::mysql_schema::{migrate, COLLATION};
use super::mysql_social::lock_group;
use super::offline::{ids_ahead, page_end};
use super::{
    acceptable, sender_of, AddFriend, GroupRow, JoinGroup, MemberRow, OfflineLimits, PoolWait,
    Role, Store, StoreError, Usage, UserRow,
};

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
/// Attempts of a transaction that InnoDB chose as a deadlock victim.
const DEADLOCK_ATTEMPTS: u32 = 8;
/// Attempts of a bounded offline insert that lost a race with another sender to
/// the same recipient (each loss means another insert got in: progress is made).
const RACE_ATTEMPTS: u32 = 50;
/// Ids per `IN (…)` list in bulk updates.
const IN_CHUNK: usize = 500;

/// The MySQL [`Store`]. Cheap to share behind an `Arc`; every method is thread-safe.
pub struct MysqlStore {
    /// Pooled connections to the chat database.
    pool: r2d2::Pool<MySqlConnectionManager>,
    /// Milliseconds since `epoch` until which checkouts fail fast (see [`BREAKER`]);
    /// 0 while the database is reachable.
    down_until: AtomicU64,
    epoch: Instant,
    /// Time spent waiting for pooled connections.
    wait: PoolWait,
    /// The longest history text a chunk row can take (see
    /// [`mysql_history::text_max`]), from the server's `max_allowed_packet` at the open.
    pub(super) history_text_max: usize,
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
        let packet: Option<u64> = conn.query_first("SELECT @@max_allowed_packet")?;
        let history_text_max = mysql_history::text_max(packet);
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
            wait: PoolWait::default(),
            history_text_max,
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
        match self.wait.time(|| self.pool.get_timeout(timeout)) {
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
/// rolled back whole, so a retry is safe), or when MariaDB failed to read the
/// auto-increment value under a concurrent insert (1467: the body's transaction is
/// dropped uncommitted, so it rolls back, and a retry is safe too).
pub(super) fn retry_deadlock<T>(
    body: impl FnMut() -> Result<T, ::mysql::Error>,
) -> Result<T, StoreError> {
    retry_races(DEADLOCK_ATTEMPTS, body)
}

/// [`retry_deadlock`] with its own number of attempts.
fn retry_races<T>(
    attempts: u32,
    mut body: impl FnMut() -> Result<T, ::mysql::Error>,
) -> Result<T, StoreError> {
    let mut attempt = 1;
    loop {
        match body() {
            Err(err) if matches!(server_code(&err), Some(1213 | 1467)) && attempt < attempts => {
                log::debug!("mysql store: deadlock or auto-increment race, retrying ({attempt})");
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

/// `?, ?, …` with `n` placeholders, for an `IN (…)` list of bound ids.
pub(super) fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

impl Store for MysqlStore {
    fn ping(&self) -> Result<(), StoreError> {
        self.conn()?.query_drop("SELECT 1")?;
        Ok(())
    }

    fn offline_backlog(&self) -> Result<u64, StoreError> {
        let n: Option<u64> = self
            .conn()?
            .query_first("SELECT COUNT(*) FROM offlinemessage")?;
        Ok(n.unwrap_or(0))
    }

    fn pool_wait(&self) -> &PoolWait {
        &self.wait
    }

    fn register(&self, name: &str, password_hash: &str) -> Result<Option<i64>, StoreError> {
        if !acceptable(name, "") {
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
        if !acceptable(name, desc) {
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
        retry_deadlock(|| {
            let mut tx = conn.start_transaction(tx_opts())?;
            // Membership changes of one group queue on its row (see `lock_group`).
            if !lock_group(&mut tx, group)? {
                return Ok(JoinGroup::NoSuchGroup);
            }
            // Who joins an empty group becomes its creator. The group's lock makes this
            // read and the insert one step; FOR UPDATE reads the latest rows, not the
            // snapshot.
            let empty = tx
                .exec_first::<i64, _, _>(
                    "SELECT userid FROM groupuser WHERE groupid = ? LIMIT 1 FOR UPDATE",
                    (group,),
                )?
                .is_none();
            let role = if empty { "creator" } else { "normal" };
            match tx.exec_drop(
                "INSERT INTO groupuser (groupid, userid, grouprole) VALUES (?, ?, ?)",
                (group, user, role),
            ) {
                Ok(()) => {}
                Err(err) if is_duplicate(&err) => return Ok(JoinGroup::AlreadyMember),
                Err(err) => return Err(err),
            }
            tx.commit()?;
            Ok(JoinGroup::Joined)
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

    fn put_resume_token(&self, user: i64, hash: &[u8], expires: i64) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        conn.exec_drop(
            "INSERT INTO resumetoken (userid, hash, expires) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE hash = VALUES(hash), expires = VALUES(expires)",
            (user, hash, expires),
        )?;
        Ok(())
    }

    fn resume_token(&self, user: i64) -> Result<Option<(Vec<u8>, i64)>, StoreError> {
        let mut conn = self.conn()?;
        Ok(conn.exec_first(
            "SELECT hash, expires FROM resumetoken WHERE userid = ?",
            (user,),
        )?)
    }

    fn rotate_resume_token(
        &self,
        user: i64,
        old: &[u8],
        new: &[u8],
        expires: i64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        conn.exec_drop(
            "UPDATE resumetoken SET hash = ?, expires = ? WHERE userid = ? AND hash = ?",
            (new, expires, user, old),
        )?;
        Ok(conn.affected_rows() == 1)
    }

    fn revoke_resume_token(&self, user: i64) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        conn.exec_drop("DELETE FROM resumetoken WHERE userid = ?", (user,))?;
        Ok(())
    }

    fn store_offline(
        &self,
        user: i64,
        from: i64,
        message: &str,
        limits: &OfflineLimits,
    ) -> Result<bool, StoreError> {
        // One statement, one round trip (a single recipient is the common case):
        // the row goes in only if the quota read in the same statement admits it.
        // INSERT … SELECT reads with shared next-key locks, so two senders racing
        // for the same recipient deadlock (or, in MariaDB, fail to read the
        // AUTO_INCREMENT value) and one is retried, seeing the other's row.
        let (share_n, share_b) = limits.sender_share();
        let bytes = message.len() as u64;
        let mut conn = self.conn()?;
        retry_races(RACE_ATTEMPTS, || {
            conn.exec_drop(
                "INSERT INTO offlinemessage (userid, message, fromid, bytes) \
                 SELECT ?, ?, ?, ? FROM (SELECT COUNT(*) AS n, COALESCE(SUM(bytes), 0) AS b, \
                 COALESCE(SUM(fromid = ?), 0) AS sn, COALESCE(SUM(IF(fromid = ?, bytes, 0)), 0) AS sb \
                 FROM offlinemessage WHERE userid = ?) AS q \
                 WHERE q.n < ? AND q.b + ? <= ? AND q.sn < ? AND q.sb + ? <= ?",
                ::mysql::Params::Positional(vec![
                    user.into(),
                    message.into(),
                    from.into(),
                    bytes.into(),
                    from.into(),
                    from.into(),
                    user.into(),
                    limits.max_messages.into(),
                    bytes.into(),
                    limits.max_bytes.into(),
                    share_n.into(),
                    bytes.into(),
                    share_b.into(),
                ]),
            )?;
            Ok(conn.affected_rows() == 1)
        })
    }

    fn store_offline_many(
        &self,
        users: &[i64],
        from: i64,
        message: &str,
        limits: &OfflineLimits,
    ) -> Result<Vec<i64>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        // Ascending order keeps the lock order consistent with concurrent fan-outs.
        let mut users = users.to_vec();
        users.sort_unstable();
        let bytes = message.len() as u64;
        let mut conn = self.conn()?;
        retry_deadlock(|| {
            let mut tx = conn.start_transaction(TxOpts::default())?;
            let mut refused = Vec::new();
            let mut admitted = Vec::new();
            // Any isolation level will do (no round trip to set one): the recipient's
            // user row is the lock that makes "count, then insert" atomic among
            // concurrent senders to it, and the count runs after it is taken.
            for &user in &users {
                tx.exec_drop("SELECT id FROM user WHERE id = ? FOR UPDATE", (user,))?;
                // One scan of the covering quota index: the total and this sender's.
                let row: Option<(u64, u64, u64, u64)> = tx.exec_first(
                    "SELECT COUNT(*), COALESCE(SUM(bytes), 0), COALESCE(SUM(fromid = ?), 0), \
                     COALESCE(SUM(IF(fromid = ?, bytes, 0)), 0) \
                     FROM offlinemessage WHERE userid = ?",
                    (from, from, user),
                )?;
                let (t, f) = usage(row);
                if limits.admits(t, f, bytes) {
                    admitted.push(user);
                } else {
                    refused.push(user);
                }
            }
            tx.exec_batch(
                "INSERT INTO offlinemessage (userid, message, fromid, bytes) VALUES (?, ?, ?, ?)",
                admitted.iter().map(|&user| (user, message, from, bytes)),
            )?;
            tx.commit()?;
            Ok(refused)
        })
    }

    fn restore_offline(&self, user: i64, messages: &[String]) -> Result<(), StoreError> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn()?;
        retry_deadlock(|| {
            let mut tx = conn.start_transaction(tx_opts())?;
            // Locks the smallest id and the gap below it: a concurrent restore waits.
            let min: Option<i64> = tx.exec_first(
                "SELECT id FROM offlinemessage ORDER BY id LIMIT 1 FOR UPDATE",
                (),
            )?;
            let first = ids_ahead(min, messages.len());
            tx.exec_batch(
                "INSERT INTO offlinemessage (id, userid, message, fromid, bytes) \
                 VALUES (?, ?, ?, ?, ?)",
                messages
                    .iter()
                    .enumerate()
                    .map(|(i, m)| (first + i as i64, user, m, sender_of(m), m.len() as u64)),
            )?;
            tx.commit()
        })
    }

    fn take_offline_batch(
        &self,
        user: i64,
        max: usize,
        max_bytes: usize,
    ) -> Result<(Vec<String>, bool), StoreError> {
        let limit = u64::try_from(max.saturating_add(1)).unwrap_or(u64::MAX);
        let mut conn = self.conn()?;
        retry_deadlock(|| {
            let mut tx = conn.start_transaction(tx_opts())?;
            // FOR UPDATE locks the rows and the gaps of this user's range: a concurrent
            // insert waits for the commit and is then kept for the next take.
            let sizes: Vec<(i64, i64)> = tx.exec(
                "SELECT id, bytes FROM offlinemessage WHERE userid = ? ORDER BY id LIMIT ? \
                 FOR UPDATE",
                (user, limit),
            )?;
            let (Some(last), more) = page_end(sizes, max, max_bytes) else {
                tx.commit()?;
                return Ok((Vec::new(), false));
            };
            let messages: Vec<String> = tx.exec(
                "SELECT message FROM offlinemessage WHERE userid = ? AND id <= ? ORDER BY id",
                (user, last),
            )?;
            tx.exec_drop(
                "DELETE FROM offlinemessage WHERE userid = ? AND id <= ?",
                (user, last),
            )?;
            tx.commit()?;
            Ok((messages, more))
        })
    }
}

/// A quota row (count and bytes in total, then of one sender) as two [`Usage`]s.
fn usage(row: Option<(u64, u64, u64, u64)>) -> (Usage, Usage) {
    let (n, b, sn, sb) = row.unwrap_or_default();
    (
        Usage {
            messages: n,
            bytes: b,
        },
        Usage {
            messages: sn,
            bytes: sb,
        },
    )
}
