//! The MySQL schema: the tables, and the upgrade of a legacy database in place
//! (checked through `information_schema`, run under a named lock so servers that
//! start together do not race it).

use ::mysql::prelude::Queryable;
use ::mysql::Conn;

use super::StoreError;
use crate::password;

/// How long a starting server waits for another one that is upgrading the schema.
const SCHEMA_LOCK_TIMEOUT_SECS: u32 = 120;

/// Table options of every table: utf8mb4 throughout, binary collation so names compare
/// byte for byte, case-sensitive (as in SQLite), and distinct emoji stay distinct. It
/// compares with PAD SPACE (`bob ` = `bob`): new names have no trailing spaces
/// (`protocol::name_problem`), and SQLite compares the older ones so too.
pub(super) const TABLE_OPTIONS: &str = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";
/// The collation every text column must have after the upgrade.
pub(super) const COLLATION: &str = "utf8mb4_bin";

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
pub(super) const TABLES: [TableSpec; 10] = [
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
  fromid INT NOT NULL DEFAULT 0,
  bytes INT NOT NULL DEFAULT 0,
  PRIMARY KEY (id),
  KEY userid (userid, id, bytes),
  KEY quota (userid, fromid, bytes)",
        columns: &[
            ("id", "bigint", None),
            ("userid", "int", None),
            ("message", "mediumtext", None),
            ("fromid", "int", None),
            ("bytes", "int", None),
        ],
        unique: &["id"],
    },
    // History (protocol.md §10) as older servers kept it, a row per message: read
    // beside the chunks, and still written by older nodes during a rolling upgrade.
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
    // History as this server keeps it (`history_chunks`): a batch's messages of one
    // conversation, seqs `seq..=last`, in one row. A page is one range of the primary
    // key; `ts` (the newest message's) serves the retention sweep.
    TableSpec {
        name: "historychunk",
        body: "conv BIGINT NOT NULL,
  seq BIGINT NOT NULL,
  last BIGINT NOT NULL,
  ts BIGINT NOT NULL,
  body MEDIUMBLOB NOT NULL,
  codec TINYINT NOT NULL DEFAULT 0,
  PRIMARY KEY (conv, seq),
  KEY ts (ts)",
        columns: &[
            ("conv", "bigint", None),
            ("seq", "bigint", None),
            ("last", "bigint", None),
            ("ts", "bigint", None),
            ("body", "mediumblob", None),
            ("codec", "tinyint", None),
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
    TableSpec {
        name: "resumetoken",
        body: "userid INT NOT NULL,
  hash BINARY(32) NOT NULL,
  expires BIGINT NOT NULL,
  PRIMARY KEY (userid)",
        columns: &[
            ("userid", "int", None),
            ("hash", "binary", Some(32)),
            ("expires", "bigint", None),
        ],
        unique: &["userid"],
    },
];

/// `CREATE TABLE [IF NOT EXISTS] name (body) options` for a table of [`TABLES`] (or its
/// temporary copy during an upgrade). `name` is always one of ours, never user data.
pub(super) fn create_table_sql(name: &str, body: &str, if_not_exists: bool) -> String {
    let ine = if if_not_exists { "IF NOT EXISTS " } else { "" };
    format!("CREATE TABLE {ine}{name} (\n  {body}\n) {TABLE_OPTIONS}")
}

/// Creates or upgrades every table of [`TABLES`], holding a named lock meanwhile.
pub(super) fn migrate(conn: &mut Conn) -> Result<(), StoreError> {
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
            // order (InnoDB's hidden row id); with one, in its order. Rows from before
            // the quota columns count against their recipient's total with sender 0
            // (unknown), their size measured now.
            let copy = if has_column(conn, "offlinemessage", "id")? {
                "INSERT INTO offlinemessage__new (userid, message, fromid, bytes) \
                 SELECT userid, message, 0, LENGTH(message) FROM offlinemessage \
                 WHERE userid IS NOT NULL AND message IS NOT NULL ORDER BY id"
            } else {
                "INSERT INTO offlinemessage__new (userid, message, fromid, bytes) \
                 SELECT userid, message, 0, LENGTH(message) FROM offlinemessage \
                 WHERE userid IS NOT NULL AND message IS NOT NULL"
            };
            rebuild(conn, spec, copy)?
        }
        other => {
            // Created by this version (or changed by hand): nothing to upgrade from.
            return Err(StoreError::Backend(format!(
                "table {other} differs from the schema (see chat.sql); fix it by hand"
            )));
        }
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
