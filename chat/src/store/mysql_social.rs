//! [`SocialStore`] on MySQL/MariaDB: history in chunks (`mysql_history`), friends and
//! groups.

use ::mysql::prelude::Queryable;
use ::mysql::Conn;

use super::mysql::{retry_deadlock, tx_opts, MysqlStore};
use super::mysql_history;
use super::social::{FriendRequest, HistoryRecord, LeaveGroup, RemoveMember, SocialStore};
use super::{GroupRow, MemberRow, Role, StoreError};
use crate::protocol::HistoryItem;

/// Adds the secondary indexes that an upgraded legacy table lacks (new tables get them
/// from their definition). Runs under the schema lock.
pub(super) fn ensure_indexes(conn: &mut Conn) -> Result<(), StoreError> {
    let n: Option<i64> = conn.query_first(
        "SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() \
         AND TABLE_NAME = 'friend' AND INDEX_NAME = 'friendid'",
    )?;
    if n.unwrap_or(0) == 0 {
        conn.query_drop("ALTER TABLE friend ADD KEY friendid (friendid)")?;
    }
    Ok(())
}

impl SocialStore for MysqlStore {
    fn append_history(&self, batch: &[HistoryRecord]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        mysql_history::append(&mut *self.conn()?, batch)
    }

    fn history_text_max(&self) -> usize {
        self.history_text_max
    }

    fn history_page(
        &self,
        conv: i64,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<HistoryItem>, StoreError> {
        mysql_history::page(&mut *self.conn()?, conv, before, limit)
    }

    fn prune_history(&self, cutoff_ms: i64, max: i64) -> Result<u64, StoreError> {
        mysql_history::prune(&mut *self.conn()?, cutoff_ms, max)
    }

    fn friend_of(&self, user: i64) -> Result<Vec<i64>, StoreError> {
        let mut conn = self.conn()?;
        Ok(conn.exec(
            "SELECT userid FROM friend WHERE friendid = ? ORDER BY userid",
            (user,),
        )?)
    }

    fn request_friend(&self, from: i64, to: i64) -> Result<FriendRequest, StoreError> {
        let mut conn = self.conn()?;
        retry_deadlock(|| {
            let mut tx = conn.start_transaction(tx_opts())?;
            // Lock both user rows in id order: concurrent requests between the two
            // queue here instead of both inserting a request.
            let found: Vec<i64> = tx.exec(
                "SELECT id FROM user WHERE id IN (?, ?) ORDER BY id FOR UPDATE",
                (from, to),
            )?;
            if !found.contains(&to) {
                return Ok(FriendRequest::NoSuchUser);
            }
            let both: Option<i64> = tx.exec_first(
                "SELECT COUNT(*) FROM friend WHERE (userid = ? AND friendid = ?) \
                 OR (userid = ? AND friendid = ?)",
                (from, to, to, from),
            )?;
            if both == Some(2) {
                return Ok(FriendRequest::AlreadyFriends);
            }
            let asked: Option<i64> = tx.exec_first(
                "SELECT fromid FROM friendrequest WHERE fromid = ? AND toid = ?",
                (to, from),
            )?;
            let outcome = if asked.is_some() {
                befriend(&mut tx, from, to)?;
                FriendRequest::Accepted
            } else {
                tx.exec_drop(
                    "INSERT IGNORE INTO friendrequest (fromid, toid) VALUES (?, ?)",
                    (from, to),
                )?;
                if tx.affected_rows() == 0 {
                    FriendRequest::AlreadyRequested
                } else {
                    FriendRequest::Requested
                }
            };
            tx.commit()?;
            Ok(outcome)
        })
    }

    fn answer_friend(&self, user: i64, from: i64, accept: bool) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        retry_deadlock(|| {
            let mut tx = conn.start_transaction(tx_opts())?;
            tx.exec_drop(
                "DELETE FROM friendrequest WHERE fromid = ? AND toid = ?",
                (from, user),
            )?;
            if tx.affected_rows() == 0 {
                return Ok(false);
            }
            if accept {
                befriend(&mut tx, user, from)?;
            }
            tx.commit()?;
            Ok(true)
        })
    }

    fn friend_requests(&self, user: i64) -> Result<Vec<(i64, String)>, StoreError> {
        let mut conn = self.conn()?;
        Ok(conn.exec(
            "SELECT u.id, u.name FROM friendrequest r JOIN user u ON u.id = r.fromid \
             WHERE r.toid = ? ORDER BY u.id",
            (user,),
        )?)
    }

    fn del_friend(&self, user: i64, friend: i64) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        conn.exec_drop(
            "DELETE FROM friend WHERE (userid = ? AND friendid = ?) \
             OR (userid = ? AND friendid = ?)",
            (user, friend, friend, user),
        )?;
        Ok(conn.affected_rows() > 0)
    }

    fn group(&self, group: i64) -> Result<Option<GroupRow>, StoreError> {
        let mut conn = self.conn()?;
        let Some((name, desc)) = conn.exec_first::<(String, String), _, _>(
            "SELECT groupname, groupdesc FROM allgroup WHERE id = ?",
            (group,),
        )?
        else {
            return Ok(None);
        };
        let rows: Vec<(i64, String, String)> = conn.exec(
            "SELECT u.id, u.name, m.grouprole FROM groupuser m JOIN user u ON u.id = m.userid \
             WHERE m.groupid = ? ORDER BY u.id",
            (group,),
        )?;
        Ok(Some(GroupRow {
            id: group,
            name,
            desc,
            members: rows
                .into_iter()
                .map(|(id, name, role)| MemberRow {
                    id,
                    name,
                    role: Role::from_column(&role),
                })
                .collect(),
        }))
    }

    fn leave_group(&self, user: i64, group: i64) -> Result<LeaveGroup, StoreError> {
        let mut conn = self.conn()?;
        retry_deadlock(|| {
            let mut tx = conn.start_transaction(tx_opts())?;
            if !lock_group(&mut tx, group)? {
                return Ok(LeaveGroup::NoSuchGroup);
            }
            let Some(role) = role_of(&mut tx, user, group)? else {
                return Ok(LeaveGroup::NotMember);
            };
            tx.exec_drop(
                "DELETE FROM groupuser WHERE groupid = ? AND userid = ?",
                (group, user),
            )?;
            let mut new_creator = None;
            if role == Role::Creator {
                new_creator = tx
                    .exec_first::<Option<i64>, _, _>(
                        "SELECT MIN(userid) FROM groupuser WHERE groupid = ? FOR UPDATE",
                        (group,),
                    )?
                    .flatten();
                if let Some(c) = new_creator {
                    tx.exec_drop(
                        "UPDATE groupuser SET grouprole = 'creator' \
                         WHERE groupid = ? AND userid = ?",
                        (group, c),
                    )?;
                }
            }
            tx.commit()?;
            Ok(LeaveGroup::Left { new_creator })
        })
    }

    fn remove_member(&self, by: i64, group: i64, user: i64) -> Result<RemoveMember, StoreError> {
        let mut conn = self.conn()?;
        retry_deadlock(|| {
            let mut tx = conn.start_transaction(tx_opts())?;
            if !lock_group(&mut tx, group)? {
                return Ok(RemoveMember::NoSuchGroup);
            }
            match role_of(&mut tx, by, group)? {
                None => return Ok(RemoveMember::NotMember),
                Some(Role::Normal) => return Ok(RemoveMember::NotCreator),
                Some(Role::Creator) => {}
            }
            tx.exec_drop(
                "DELETE FROM groupuser WHERE groupid = ? AND userid = ?",
                (group, user),
            )?;
            let removed = tx.affected_rows() > 0;
            tx.commit()?;
            Ok(if removed {
                RemoveMember::Removed
            } else {
                RemoveMember::NotInGroup
            })
        })
    }
}

/// Makes `a` and `b` friends both ways and drops any request between them.
fn befriend(tx: &mut ::mysql::Transaction<'_>, a: i64, b: i64) -> Result<(), ::mysql::Error> {
    tx.exec_drop(
        "INSERT IGNORE INTO friend (userid, friendid) VALUES (?, ?), (?, ?)",
        (a, b, b, a),
    )?;
    tx.exec_drop(
        "DELETE FROM friendrequest WHERE (fromid = ? AND toid = ?) OR (fromid = ? AND toid = ?)",
        (a, b, b, a),
    )
}

/// `user`'s role in `group`, locking the membership row; `None` if not a member.
fn role_of(
    tx: &mut ::mysql::Transaction<'_>,
    user: i64,
    group: i64,
) -> Result<Option<Role>, ::mysql::Error> {
    let role: Option<String> = tx.exec_first(
        "SELECT grouprole FROM groupuser WHERE groupid = ? AND userid = ? FOR UPDATE",
        (group, user),
    )?;
    Ok(role.map(|r| Role::from_column(&r)))
}

/// Locks `group`'s row; `false` if there is no such group. Every change of a group's
/// membership takes this lock first, so changes to one group run one after another: a
/// creator's leave cannot pick as successor a member whose own leave is committing, and
/// two joins of an empty group cannot both become its creator.
pub(super) fn lock_group(
    tx: &mut ::mysql::Transaction<'_>,
    group: i64,
) -> Result<bool, ::mysql::Error> {
    let found: Option<i64> =
        tx.exec_first("SELECT id FROM allgroup WHERE id = ? FOR UPDATE", (group,))?;
    Ok(found.is_some())
}
