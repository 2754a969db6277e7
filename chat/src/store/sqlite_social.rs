//! [`SocialStore`] on SQLite: history in chunks (`sqlite_history`), friends and groups.

use rusqlite::{OptionalExtension, TransactionBehavior};

use super::social::{FriendRequest, HistoryRecord, LeaveGroup, RemoveMember, SocialStore};
use super::sqlite::SqliteStore;
use super::sqlite_history;
use super::{GroupRow, MemberRow, Role, StoreError};
use crate::protocol::HistoryItem;

/// The tables of this extension (created with the rest of the schema).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS friendrequest (
  fromid INTEGER NOT NULL,
  toid INTEGER NOT NULL,
  PRIMARY KEY (fromid, toid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS friendrequest_toid ON friendrequest (toid);
CREATE INDEX IF NOT EXISTS friend_friendid ON friend (friendid);
";

impl SocialStore for SqliteStore {
    fn append_history(&self, batch: &[HistoryRecord]) -> Result<(), StoreError> {
        self.with_writer(|conn| sqlite_history::append(conn, batch))
    }

    fn history_page(
        &self,
        conv: i64,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<HistoryItem>, StoreError> {
        sqlite_history::page(&*self.conn()?, conv, before, limit)
    }

    fn prune_history(&self, cutoff_ms: i64, max: i64) -> Result<u64, StoreError> {
        sqlite_history::prune(&*self.conn()?, cutoff_ms, max)
    }

    fn friend_of(&self, user: i64) -> Result<Vec<i64>, StoreError> {
        let conn = self.conn()?;
        let mut stmt =
            conn.prepare_cached("SELECT userid FROM friend WHERE friendid = ?1 ORDER BY userid")?;
        let rows = stmt.query_map([user], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn request_friend(&self, from: i64, to: i64) -> Result<FriendRequest, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if !tx
            .prepare_cached("SELECT 1 FROM user WHERE id = ?1")?
            .exists([to])?
        {
            return Ok(FriendRequest::NoSuchUser);
        }
        let both: i64 = tx
            .prepare_cached(
                "SELECT COUNT(*) FROM friend WHERE (userid = ?1 AND friendid = ?2) \
                 OR (userid = ?2 AND friendid = ?1)",
            )?
            .query_row((from, to), |row| row.get(0))?;
        if both == 2 {
            return Ok(FriendRequest::AlreadyFriends);
        }
        let asked = tx
            .prepare_cached("SELECT 1 FROM friendrequest WHERE fromid = ?1 AND toid = ?2")?
            .exists((to, from))?;
        let outcome = if asked {
            befriend(&tx, from, to)?;
            FriendRequest::Accepted
        } else {
            let inserted = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO friendrequest (fromid, toid) VALUES (?1, ?2)",
                )?
                .execute((from, to))?;
            if inserted == 0 {
                FriendRequest::AlreadyRequested
            } else {
                FriendRequest::Requested
            }
        };
        tx.commit()?;
        Ok(outcome)
    }

    fn answer_friend(&self, user: i64, from: i64, accept: bool) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx
            .prepare_cached("DELETE FROM friendrequest WHERE fromid = ?1 AND toid = ?2")?
            .execute((from, user))?;
        if n == 0 {
            return Ok(false);
        }
        if accept {
            befriend(&tx, user, from)?;
        }
        tx.commit()?;
        Ok(true)
    }

    fn friend_requests(&self, user: i64) -> Result<Vec<(i64, String)>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(
            "SELECT u.id, u.name FROM friendrequest r JOIN user u ON u.id = r.fromid \
             WHERE r.toid = ?1 ORDER BY u.id",
        )?;
        let rows = stmt.query_map([user], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn del_friend(&self, user: i64, friend: i64) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        let n = conn
            .prepare_cached(
                "DELETE FROM friend WHERE (userid = ?1 AND friendid = ?2) \
                 OR (userid = ?2 AND friendid = ?1)",
            )?
            .execute((user, friend))?;
        Ok(n > 0)
    }

    fn group(&self, group: i64) -> Result<Option<GroupRow>, StoreError> {
        let conn = self.conn()?;
        let Some((name, desc)) = conn
            .prepare_cached("SELECT groupname, groupdesc FROM allgroup WHERE id = ?1")?
            .query_row([group], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?
        else {
            return Ok(None);
        };
        let mut stmt = conn.prepare_cached(
            "SELECT u.id, u.name, m.grouprole FROM groupuser m JOIN user u ON u.id = m.userid \
             WHERE m.groupid = ?1 ORDER BY u.id",
        )?;
        let members = stmt
            .query_map([group], |row| {
                Ok(MemberRow {
                    id: row.get(0)?,
                    name: row.get(1)?,
                    role: Role::from_column(&row.get::<_, String>(2)?),
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(Some(GroupRow {
            id: group,
            name,
            desc,
            members,
        }))
    }

    fn leave_group(&self, user: i64, group: i64) -> Result<LeaveGroup, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(role) = role_of(&tx, user, group)? else {
            return Ok(if group_exists(&tx, group)? {
                LeaveGroup::NotMember
            } else {
                LeaveGroup::NoSuchGroup
            });
        };
        tx.prepare_cached("DELETE FROM groupuser WHERE groupid = ?1 AND userid = ?2")?
            .execute((group, user))?;
        let mut new_creator = None;
        if role == Role::Creator {
            new_creator = tx
                .prepare_cached("SELECT MIN(userid) FROM groupuser WHERE groupid = ?1")?
                .query_row([group], |row| row.get::<_, Option<i64>>(0))?;
            if let Some(c) = new_creator {
                tx.prepare_cached(
                    "UPDATE groupuser SET grouprole = 'creator' WHERE groupid = ?1 AND userid = ?2",
                )?
                .execute((group, c))?;
            }
        }
        tx.commit()?;
        Ok(LeaveGroup::Left { new_creator })
    }

    fn remove_member(&self, by: i64, group: i64, user: i64) -> Result<RemoveMember, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        match role_of(&tx, by, group)? {
            None if group_exists(&tx, group)? => return Ok(RemoveMember::NotMember),
            None => return Ok(RemoveMember::NoSuchGroup),
            Some(Role::Normal) => return Ok(RemoveMember::NotCreator),
            Some(Role::Creator) => {}
        }
        let n = tx
            .prepare_cached("DELETE FROM groupuser WHERE groupid = ?1 AND userid = ?2")?
            .execute((group, user))?;
        tx.commit()?;
        Ok(if n == 0 {
            RemoveMember::NotInGroup
        } else {
            RemoveMember::Removed
        })
    }
}

/// Makes `a` and `b` friends both ways and drops any request between them.
fn befriend(tx: &rusqlite::Transaction<'_>, a: i64, b: i64) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT OR IGNORE INTO friend (userid, friendid) VALUES (?1, ?2), (?2, ?1)")?
        .execute((a, b))?;
    tx.prepare_cached(
        "DELETE FROM friendrequest WHERE (fromid = ?1 AND toid = ?2) OR (fromid = ?2 AND toid = ?1)",
    )?
    .execute((a, b))?;
    Ok(())
}

/// `user`'s role in `group`; `None` if not a member.
fn role_of(
    tx: &rusqlite::Transaction<'_>,
    user: i64,
    group: i64,
) -> Result<Option<Role>, StoreError> {
    Ok(tx
        .prepare_cached("SELECT grouprole FROM groupuser WHERE groupid = ?1 AND userid = ?2")?
        .query_row((group, user), |row| row.get::<_, String>(0))
        .optional()?
        .map(|r| Role::from_column(&r)))
}

fn group_exists(tx: &rusqlite::Transaction<'_>, group: i64) -> Result<bool, StoreError> {
    Ok(tx
        .prepare_cached("SELECT 1 FROM allgroup WHERE id = ?1")?
        .exists([group])?)
}
