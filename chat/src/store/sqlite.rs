//! The embedded backend: one SQLite file in WAL mode, pooled connections.
//!
//! WAL lets readers run beside the single writer; every write is either one autocommit
//! statement or an `IMMEDIATE` transaction, so writers queue on the busy timeout instead
//! of failing with `SQLITE_BUSY` halfway through a transaction.

use std::path::{Path, PathBuf};
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{ffi, Connection, OptionalExtension, TransactionBehavior};

use super::offline::{ids_ahead, page_end};
use super::{
    acceptable, sender_of, AddFriend, GroupRow, JoinGroup, MemberRow, OfflineLimits, PoolWait,
    Role, Store, StoreError, Usage, UserRow,
};

/// How long a writer waits for the write lock before giving up with an error.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a caller waits for a free pooled connection.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);
/// `PRAGMA user_version` of the schema below; bump it with each upgrade step.
const SCHEMA_VERSION: i64 = 4;

/// The schema, created on first open. Same tables and columns as MySQL's `chat.sql`.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS user (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL UNIQUE,
  password TEXT NOT NULL,
  state TEXT NOT NULL DEFAULT 'offline' CHECK (state IN ('online', 'offline'))
);
CREATE TABLE IF NOT EXISTS friend (
  userid INTEGER NOT NULL,
  friendid INTEGER NOT NULL,
  PRIMARY KEY (userid, friendid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS allgroup (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  groupname TEXT NOT NULL UNIQUE,
  groupdesc TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS groupuser (
  groupid INTEGER NOT NULL,
  userid INTEGER NOT NULL,
  grouprole TEXT NOT NULL DEFAULT 'normal' CHECK (grouprole IN ('creator', 'normal')),
  PRIMARY KEY (groupid, userid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS groupuser_userid ON groupuser (userid);
CREATE TABLE IF NOT EXISTS offlinemessage (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  userid INTEGER NOT NULL,
  message TEXT NOT NULL,
  fromid INTEGER NOT NULL DEFAULT 0,
  bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS resumetoken (
  userid INTEGER PRIMARY KEY,
  hash BLOB NOT NULL,
  expires INTEGER NOT NULL
);
";

/// Indexes, created after any upgrade of the tables: pages of a recipient's messages
/// and its quota are read from them alone, never from the (long) message rows. The
/// names without their trailing spaces serve the check that a new name is not taken
/// as MySQL compares (PAD SPACE, see `register`); not unique, so a file whose older
/// server stored `bob` and `bob ` opens all the same.
const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS offlinemessage_pages ON offlinemessage (userid, id, bytes);
CREATE INDEX IF NOT EXISTS offlinemessage_quota ON offlinemessage (userid, fromid, bytes);
DROP INDEX IF EXISTS offlinemessage_userid;
CREATE INDEX IF NOT EXISTS user_name_padded ON user (rtrim(name, ' '));
CREATE INDEX IF NOT EXISTS allgroup_groupname_padded ON allgroup (rtrim(groupname, ' '));
";

/// Opens rusqlite connections to one file for r2d2, each with the per-connection settings.
#[derive(Debug)]
pub(super) struct Manager {
    /// The database file.
    path: PathBuf,
}

impl r2d2::ManageConnection for Manager {
    type Connection = Connection;
    type Error = rusqlite::Error;

    fn connect(&self) -> Result<Connection, rusqlite::Error> {
        let conn = Connection::open(&self.path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(conn)
    }

    fn is_valid(&self, conn: &mut Connection) -> Result<(), rusqlite::Error> {
        conn.execute_batch("")
    }

    fn has_broken(&self, _conn: &mut Connection) -> bool {
        false
    }
}

/// The SQLite [`Store`]. Cheap to share behind an `Arc`; every method is thread-safe.
pub struct SqliteStore {
    /// Pooled connections to the one file; a read never waits for a write.
    pool: r2d2::Pool<Manager>,
    /// Time spent waiting for pooled connections.
    wait: PoolWait,
    /// The history writer's own connection (opened on first use), with a page cache
    /// that keeps the conversations' index tails between batches; a pooled one would
    /// start cold half the time.
    writer: Mutex<Option<Connection>>,
    /// Opens the writer's connection.
    manager: Manager,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path` with at most `pool_size`
    /// connections, and creates the schema. `path` must be a real file, not `:memory:`.
    pub fn open(path: impl AsRef<Path>, pool_size: u32) -> Result<SqliteStore, StoreError> {
        let manager = || Manager {
            path: path.as_ref().to_path_buf(),
        };
        let mut conn = r2d2::ManageConnection::connect(&manager()).map_err(unavailable)?;
        create_schema(&mut conn)?;
        drop(conn);
        let pool = r2d2::Pool::builder()
            .max_size(pool_size.max(1))
            .connection_timeout(POOL_TIMEOUT)
            .build(manager())?;
        Ok(SqliteStore {
            pool,
            wait: PoolWait::default(),
            writer: Mutex::new(None),
            manager: manager(),
        })
    }

    /// Runs `f` on the history writer's connection (one caller at a time).
    pub(super) fn with_writer<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut writer = self.writer.lock();
        if writer.is_none() {
            let conn = r2d2::ManageConnection::connect(&self.manager).map_err(unavailable)?;
            let kib = super::sqlite_history::WRITER_CACHE_KIB;
            conn.pragma_update(None, "cache_size", -kib)?;
            *writer = Some(conn);
        }
        f(writer.as_mut().expect("opened above"))
    }

    /// A pooled connection, or `Unavailable` after [`POOL_TIMEOUT`].
    pub(super) fn conn(&self) -> Result<r2d2::PooledConnection<Manager>, StoreError> {
        Ok(self.wait.time(|| self.pool.get())?)
    }
}

/// Switches the file to WAL (a persistent setting) and creates missing tables. A file
/// of a newer schema than this server's is refused: this server would misread what
/// the newer one wrote (compressed history, for one), and set its version back.
fn create_schema(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Unavailable(format!(
            "the database file has schema version {version}, written by a newer server; \
             this one knows up to {SCHEMA_VERSION}"
        )));
    }
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        log::warn!("sqlite store: journal_mode is {mode}, not wal");
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(SCHEMA)?;
    // Version 1 had no quota columns: add them, measuring what is stored (sender 0,
    // unknown, counts against its recipient's total only).
    let has_bytes = tx
        .prepare("SELECT 1 FROM pragma_table_info('offlinemessage') WHERE name = 'bytes'")?
        .exists([])?;
    if !has_bytes {
        tx.execute_batch(
            "ALTER TABLE offlinemessage ADD COLUMN fromid INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE offlinemessage ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
             UPDATE offlinemessage SET bytes = length(CAST(message AS BLOB));",
        )?;
    }
    tx.execute_batch(INDEXES)?;
    tx.execute_batch(super::sqlite_social::SCHEMA)?;
    tx.execute_batch(super::sqlite_history::SCHEMA)?;
    super::sqlite_history::upgrade(&tx)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        match err.sqlite_error_code() {
            Some(ffi::ErrorCode::CannotOpen) | Some(ffi::ErrorCode::NotADatabase) => {
                StoreError::Unavailable(err.to_string())
            }
            _ => StoreError::Backend(err.to_string()),
        }
    }
}

/// Maps a failure to open a connection.
fn unavailable(err: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

/// Whether `err` is a UNIQUE or PRIMARY KEY violation (a duplicate name or row).
fn is_duplicate(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error().map(|e| e.extended_code),
        Some(ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
    )
}

/// The outcome of an INSERT of a new name (`register`, `create_group`): true if the
/// row went in, false if the name is taken (no row inserted: a twin with trailing
/// spaces exists; or a duplicate key).
fn inserted_new(result: rusqlite::Result<usize>) -> Result<bool, StoreError> {
    match result {
        Ok(n) => Ok(n > 0),
        Err(err) if is_duplicate(&err) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// The `state` column value for `online`.
fn state(online: bool) -> &'static str {
    if online {
        "online"
    } else {
        "offline"
    }
}

impl Store for SqliteStore {
    fn ping(&self) -> Result<(), StoreError> {
        self.conn()?.query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }

    fn offline_backlog(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn()?
            .query_row("SELECT COUNT(*) FROM offlinemessage", [], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }

    fn pool_wait(&self) -> &PoolWait {
        &self.wait
    }

    fn register(&self, name: &str, password_hash: &str) -> Result<Option<i64>, StoreError> {
        if !acceptable(name, "") {
            return Ok(None);
        }
        let conn = self.conn()?;
        // Taken as on MySQL, whose `utf8mb4_bin` pads with spaces: `bob` is taken by a
        // `bob ` an older server stored. One statement: no other writer comes between.
        let result = conn
            .prepare_cached(
                "INSERT INTO user (name, password, state) SELECT ?1, ?2, 'offline' \
                 WHERE NOT EXISTS (SELECT 1 FROM user WHERE rtrim(name, ' ') = rtrim(?1, ' '))",
            )?
            .execute((name, password_hash));
        Ok(inserted_new(result)?.then(|| conn.last_insert_rowid()))
    }

    fn user(&self, id: i64) -> Result<Option<UserRow>, StoreError> {
        let conn = self.conn()?;
        let row = conn
            .prepare_cached("SELECT id, name, password, state FROM user WHERE id = ?1")?
            .query_row([id], |row| {
                Ok(UserRow {
                    id: row.get(0)?,
                    name: row.get(1)?,
                    password: row.get(2)?,
                    online: row.get::<_, String>(3)? == "online",
                })
            })
            .optional()?;
        Ok(row)
    }

    fn set_password(&self, id: i64, password_hash: &str) -> Result<(), StoreError> {
        let conn = self.conn()?;
        conn.prepare_cached("UPDATE user SET password = ?1 WHERE id = ?2")?
            .execute((password_hash, id))?;
        Ok(())
    }

    fn set_state(&self, id: i64, online: bool) -> Result<(), StoreError> {
        let conn = self.conn()?;
        conn.prepare_cached("UPDATE user SET state = ?1 WHERE id = ?2")?
            .execute((state(online), id))?;
        Ok(())
    }

    fn set_offline_many(&self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached("UPDATE user SET state = 'offline' WHERE id = ?1")?;
            for id in ids {
                stmt.execute([id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn set_all_offline(&self) -> Result<(), StoreError> {
        let conn = self.conn()?;
        conn.execute(
            "UPDATE user SET state = 'offline' WHERE state <> 'offline'",
            [],
        )?;
        Ok(())
    }

    fn friends(&self, id: i64) -> Result<Vec<(i64, String)>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(
            "SELECT u.id, u.name FROM friend f JOIN user u ON u.id = f.friendid \
             WHERE f.userid = ?1 ORDER BY u.id",
        )?;
        let rows = stmt.query_map([id], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn add_friend(&self, id: i64, friend_id: i64) -> Result<AddFriend, StoreError> {
        let conn = self.conn()?;
        let result = conn
            .prepare_cached(
                "INSERT INTO friend (userid, friendid) SELECT ?1, id FROM user WHERE id = ?2",
            )?
            .execute((id, friend_id));
        Ok(match result {
            Ok(0) => AddFriend::NoSuchUser,
            Ok(_) => AddFriend::Added,
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
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Taken as on MySQL (PAD SPACE), as in `register`.
        let result = tx
            .prepare_cached(
                "INSERT INTO allgroup (groupname, groupdesc) SELECT ?1, ?2 WHERE NOT EXISTS \
                 (SELECT 1 FROM allgroup WHERE rtrim(groupname, ' ') = rtrim(?1, ' '))",
            )?
            .execute((name, desc));
        if !inserted_new(result)? {
            return Ok(None);
        }
        let group = tx.last_insert_rowid();
        tx.prepare_cached(
            "INSERT INTO groupuser (groupid, userid, grouprole) VALUES (?1, ?2, 'creator')",
        )?
        .execute((group, creator))?;
        tx.commit()?;
        Ok(Some(group))
    }

    fn join_group(&self, user: i64, group: i64) -> Result<JoinGroup, StoreError> {
        let mut conn = self.conn()?;
        // Who joins an empty group becomes its creator; the IMMEDIATE transaction holds
        // the write lock from the emptiness check to the commit.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let result = tx
            .prepare_cached(
                "INSERT INTO groupuser (groupid, userid, grouprole) \
                 SELECT id, ?1, CASE WHEN EXISTS \
                   (SELECT 1 FROM groupuser WHERE groupid = ?2) THEN 'normal' ELSE 'creator' END \
                 FROM allgroup WHERE id = ?2",
            )?
            .execute((user, group));
        let joined = match result {
            Ok(0) => JoinGroup::NoSuchGroup,
            Ok(_) => JoinGroup::Joined,
            Err(err) if is_duplicate(&err) => JoinGroup::AlreadyMember,
            Err(err) => return Err(err.into()),
        };
        tx.commit()?;
        Ok(joined)
    }

    fn groups_of(&self, user: i64) -> Result<Vec<GroupRow>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(
            "SELECT g.id, g.groupname, g.groupdesc, u.id, u.name, m.grouprole \
             FROM groupuser mine \
             JOIN allgroup g ON g.id = mine.groupid \
             JOIN groupuser m ON m.groupid = g.id \
             JOIN user u ON u.id = m.userid \
             WHERE mine.userid = ?1 ORDER BY g.id, u.id",
        )?;
        let mut rows = stmt.query([user])?;
        let mut groups: Vec<GroupRow> = Vec::new();
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            if groups.last().map(|g| g.id) != Some(id) {
                groups.push(GroupRow {
                    id,
                    name: row.get(1)?,
                    desc: row.get(2)?,
                    members: Vec::new(),
                });
            }
            let member = MemberRow {
                id: row.get(3)?,
                name: row.get(4)?,
                role: Role::from_column(&row.get::<_, String>(5)?),
            };
            groups
                .last_mut()
                .expect("pushed above")
                .members
                .push(member);
        }
        Ok(groups)
    }

    fn group_members(&self, group: i64) -> Result<Option<Vec<i64>>, StoreError> {
        let conn = self.conn()?;
        let exists = conn
            .prepare_cached("SELECT 1 FROM allgroup WHERE id = ?1")?
            .exists([group])?;
        if !exists {
            return Ok(None);
        }
        let mut stmt =
            conn.prepare_cached("SELECT userid FROM groupuser WHERE groupid = ?1 ORDER BY userid")?;
        let ids = stmt.query_map([group], |row| row.get(0))?;
        Ok(Some(ids.collect::<Result<_, _>>()?))
    }

    fn user_exists(&self, id: i64) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        let exists = conn
            .prepare_cached("SELECT 1 FROM user WHERE id = ?1")?
            .exists([id])?;
        Ok(exists)
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
        let bytes = message.len() as u64;
        let mut refused = Vec::new();
        let mut conn = self.conn()?;
        // IMMEDIATE: the quota read and the insert see no other writer in between.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            // One scan of the covering quota index: the total and this sender's.
            let mut quota = tx.prepare_cached(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0), COALESCE(SUM(fromid = ?2), 0), \
                 COALESCE(SUM(CASE WHEN fromid = ?2 THEN bytes ELSE 0 END), 0) \
                 FROM offlinemessage WHERE userid = ?1",
            )?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO offlinemessage (userid, message, fromid, bytes) \
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for &user in users {
                let (t, f) = quota.query_row([user, from], usage)?;
                if limits.admits(t, f, bytes) {
                    insert.execute((user, message, from, bytes as i64))?;
                } else {
                    refused.push(user);
                }
            }
        }
        tx.commit()?;
        Ok(refused)
    }

    fn put_resume_token(&self, user: i64, hash: &[u8], expires: i64) -> Result<(), StoreError> {
        let conn = self.conn()?;
        conn.prepare_cached(
            "INSERT INTO resumetoken (userid, hash, expires) VALUES (?1, ?2, ?3) \
             ON CONFLICT (userid) DO UPDATE SET hash = excluded.hash, expires = excluded.expires",
        )?
        .execute((user, hash, expires))?;
        Ok(())
    }

    fn resume_token(&self, user: i64) -> Result<Option<(Vec<u8>, i64)>, StoreError> {
        let conn = self.conn()?;
        let row = conn
            .prepare_cached("SELECT hash, expires FROM resumetoken WHERE userid = ?1")?
            .query_row([user], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        Ok(row)
    }

    fn rotate_resume_token(
        &self,
        user: i64,
        old: &[u8],
        new: &[u8],
        expires: i64,
    ) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        let n = conn
            .prepare_cached(
                "UPDATE resumetoken SET hash = ?1, expires = ?2 WHERE userid = ?3 AND hash = ?4",
            )?
            .execute((new, expires, user, old))?;
        Ok(n == 1)
    }

    fn revoke_resume_token(&self, user: i64) -> Result<(), StoreError> {
        let conn = self.conn()?;
        conn.prepare_cached("DELETE FROM resumetoken WHERE userid = ?1")?
            .execute([user])?;
        Ok(())
    }

    fn restore_offline(&self, user: i64, messages: &[String]) -> Result<(), StoreError> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let min: Option<i64> =
            tx.query_row("SELECT MIN(id) FROM offlinemessage", [], |r| r.get(0))?;
        let first = ids_ahead(min, messages.len());
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO offlinemessage (id, userid, message, fromid, bytes) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for (i, m) in messages.iter().enumerate() {
                let id = first + i as i64;
                insert.execute((id, user, m, sender_of(m), m.len() as i64))?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn take_offline_batch(
        &self,
        user: i64,
        max: usize,
        max_bytes: usize,
    ) -> Result<(Vec<String>, bool), StoreError> {
        let mut conn = self.conn()?;
        // IMMEDIATE takes the write lock first: no insert can land between the select and
        // the delete, and the delete is bounded by the last id returned anyway.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (last, more) = {
            let limit = i64::try_from(max.saturating_add(1)).unwrap_or(i64::MAX);
            let mut stmt = tx.prepare_cached(
                "SELECT id, bytes FROM offlinemessage WHERE userid = ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map([user, limit], |row| Ok((row.get(0)?, row.get(1)?)))?;
            page_end(
                rows.collect::<Result<Vec<(i64, i64)>, _>>()?,
                max,
                max_bytes,
            )
        };
        let Some(last) = last else {
            return Ok((Vec::new(), false));
        };
        let messages = {
            let mut stmt = tx.prepare_cached(
                "SELECT message FROM offlinemessage WHERE userid = ?1 AND id <= ?2 ORDER BY id",
            )?;
            let rows = stmt.query_map([user, last], |row| row.get(0))?;
            rows.collect::<Result<Vec<String>, _>>()?
        };
        tx.prepare_cached("DELETE FROM offlinemessage WHERE userid = ?1 AND id <= ?2")?
            .execute((user, last))?;
        tx.commit()?;
        Ok((messages, more))
    }
}

/// A quota row (count and bytes in total, then of one sender) as two [`Usage`]s.
fn usage(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Usage, Usage)> {
    let n = |i: usize| row.get::<_, i64>(i).map(|v| v.max(0) as u64);
    Ok((
        Usage {
            messages: n(0)?,
            bytes: n(1)?,
        },
        Usage {
            messages: n(2)?,
            bytes: n(3)?,
        },
    ))
}
