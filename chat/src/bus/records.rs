//! Records of the `dseq`s a node gave frames from its stream (protocol.md §12): hash
//! `P:qa:<node>`, field `<user>:<dseq>`, value `<position>` LF `<frame with dseq>`,
//! where the position is the stream entry's id, and for a frame of a batch entry
//! `#` and its index in the batch (`stream::position`).
//!
//! The rule: a frame read from the stream for an acking session is recorded
//! *before* it is handed to the IO loops, and the record goes only once the client
//! acknowledged the frame (or it was stored again with its `dseq`). So when the node
//! is killed, the drain finds every frame it may have written and not had
//! acknowledged — the stream itself is trimmed once written — and stores each with
//! the `dseq` the client saw, or would have seen: a client that read it drops the
//! copy, one that never got it (it sat in a kernel buffer) shows it.

use std::collections::BTreeMap;

use redis::{Connection, RedisResult};

use super::stream::position_key;
use super::Orphan;

/// A record's field: the user and the seq.
pub(super) fn field(user: i64, seq: u64) -> String {
    format!("{user}:{seq}")
}

/// A record's value: the frame's position in the stream and the frame as numbered.
pub(super) fn value(at: &str, frame: &str) -> String {
    format!("{at}\n{frame}")
}

/// HSET of the records of one read, if any.
pub(super) fn hset(key: &str, records: &[(String, String)]) -> Option<redis::Cmd> {
    if records.is_empty() {
        return None;
    }
    let mut cmd = redis::cmd("HSET");
    cmd.arg(key);
    for (f, v) in records {
        cmd.arg(f).arg(v);
    }
    Some(cmd)
}

/// HDEL of records no longer needed, if any.
pub(super) fn hdel(key: &str, released: &[(i64, u64)]) -> Option<redis::Cmd> {
    if released.is_empty() {
        return None;
    }
    let mut cmd = redis::cmd("HDEL");
    cmd.arg(key);
    for &(u, s) in released {
        cmd.arg(field(u, s));
    }
    Some(cmd)
}

/// One record as the drain reads it: (seq, user, frame with its seq).
type Record = (u64, i64, String);

/// A dead node's records, by position in the stream, as its drain uses them.
#[derive(Default)]
pub(super) struct DrainRecords {
    /// Position (as [`position_key`] reads it) → its records, by seq.
    by_entry: BTreeMap<(u64, u64, u64), Vec<Record>>,
}

impl DrainRecords {
    /// Reads every record of the node (they are bounded by its sessions' ack
    /// windows).
    pub(super) fn load(con: &mut Connection, key: &str) -> RedisResult<DrainRecords> {
        let all: Vec<(String, String)> = redis::cmd("HGETALL").arg(key).query(con)?;
        let mut by_entry: BTreeMap<_, Vec<_>> = BTreeMap::new();
        for (f, v) in all {
            let parsed = f.split_once(':').and_then(|(u, s)| {
                let (at, frame) = v.split_once('\n')?;
                Some((position_key(at), s.parse().ok()?, u.parse().ok()?, frame))
            });
            match parsed {
                Some((entry, seq, user, frame)) => {
                    by_entry
                        .entry(entry)
                        .or_default()
                        .push((seq, user, frame.to_owned()));
                }
                None => log::warn!("drain: unreadable record {f}, dropped"),
            }
        }
        for v in by_entry.values_mut() {
            v.sort_unstable();
        }
        Ok(DrainRecords { by_entry })
    }

    /// The recorded frames of entries before `first` (all, if `None`): trimmed from
    /// the stream once written, not acknowledged. They go to the store first, in
    /// stream order: older than what is left in the stream.
    pub(super) fn before(&mut self, first: Option<&str>) -> Vec<Orphan> {
        let rest = match first {
            Some(id) => self.by_entry.split_off(&position_key(id)),
            None => BTreeMap::new(),
        };
        let older = std::mem::replace(&mut self.by_entry, rest);
        older
            .into_values()
            .flatten()
            .map(|(_, u, f)| (vec![u], f))
            .collect()
    }

    /// The frame at position `at`: a recorded recipient's copy with its seq, one
    /// plain copy for the others.
    pub(super) fn split(&mut self, at: &str, to: Vec<i64>, frame: String, out: &mut Vec<Orphan>) {
        let Some(recorded) = self.by_entry.remove(&position_key(at)) else {
            out.push((to, frame));
            return;
        };
        let rest: Vec<i64> = to
            .into_iter()
            .filter(|u| !recorded.iter().any(|(_, r, _)| r == u))
            .collect();
        out.extend(recorded.into_iter().map(|(_, u, f)| (vec![u], f)));
        if !rest.is_empty() {
            out.push((rest, frame));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(list: &[(&str, i64, u64)]) -> DrainRecords {
        let mut by_entry: BTreeMap<_, Vec<_>> = BTreeMap::new();
        for &(e, u, s) in list {
            by_entry
                .entry(position_key(e))
                .or_default()
                .push((s, u, format!("f{u}:{s}")));
        }
        DrainRecords { by_entry }
    }

    #[test]
    fn batch_positions_keep_their_order() {
        let mut r = records(&[
            ("9-1#2", 1, 12),
            ("9-1#0", 1, 10),
            ("9-0", 1, 5),
            ("9-1#1", 2, 11),
        ]);
        let mut out = Vec::new();
        r.split("9-1#1", vec![2, 3], "b1".into(), &mut out);
        assert_eq!(
            out,
            [(vec![2], "f2:11".to_owned()), (vec![3], "b1".to_owned())]
        );
        assert_eq!(
            r.before(Some("9-1")),
            [(vec![1], "f1:5".to_owned())],
            "entry 9-0 is before every frame of batch 9-1"
        );
        assert_eq!(
            r.before(None),
            [(vec![1], "f1:10".to_owned()), (vec![1], "f1:12".to_owned())]
        );
    }

    #[test]
    fn trimmed_records_first_then_per_entry() {
        let mut r = records(&[
            ("5-0", 1, 50),
            ("9-1", 2, 90),
            ("7-0", 1, 70),
            ("9-1", 3, 91),
        ]);
        assert_eq!(
            r.before(Some("9-0")),
            [(vec![1], "f1:50".to_owned()), (vec![1], "f1:70".to_owned())]
        );
        let mut out = Vec::new();
        r.split("9-0", vec![1, 2], "plain".into(), &mut out);
        r.split("9-1", vec![2, 3, 4], "plain".into(), &mut out);
        assert_eq!(
            out,
            [
                (vec![1, 2], "plain".to_owned()),
                (vec![2], "f2:90".to_owned()),
                (vec![3], "f3:91".to_owned()),
                (vec![4], "plain".to_owned()),
            ]
        );
        assert!(r.before(None).is_empty());
    }
}
