//! [`SocialStore`] on both backends: friend requests, group membership changes, and
//! history's seqs, pages and retention.

use super::{member, MysqlDb, SqliteDb};
use crate::store::social::{FriendRequest, HistoryRecord, LeaveGroup, RemoveMember};
use crate::store::{AddFriend, GroupRow, Role, Store};

backend_tests!(
    friend_requests_and_answers,
    group_changes,
    history_seqs_pages_and_prune,
    history_batch_over_many_conversations,
);

fn names(list: &[(i64, &str)]) -> Vec<(i64, String)> {
    list.iter().map(|&(id, n)| (id, n.to_owned())).collect()
}

fn friend_requests_and_answers(store: &dyn Store) {
    let [a, b, c, d, e] =
        ["ra", "rb", "rc", "rd", "re"].map(|n| store.register(n, "p").unwrap().unwrap());
    assert_eq!(
        store.request_friend(a, 999_999).unwrap(),
        FriendRequest::NoSuchUser
    );
    assert_eq!(
        store.request_friend(a, b).unwrap(),
        FriendRequest::Requested
    );
    assert_eq!(
        store.request_friend(a, b).unwrap(),
        FriendRequest::AlreadyRequested,
        "asking again changes nothing, and says so (the target is not told again)"
    );
    assert_eq!(
        store.request_friend(c, b).unwrap(),
        FriendRequest::Requested
    );
    assert_eq!(
        store.friend_requests(b).unwrap(),
        names(&[(a, "ra"), (c, "rc")])
    );
    assert_eq!(store.friend_requests(a).unwrap(), vec![]);
    assert_eq!(
        store.friends(a).unwrap(),
        vec![],
        "a request is not a friendship"
    );

    // b asks a, who asked first: both are friends, a's request is gone, c's stays.
    assert_eq!(store.request_friend(b, a).unwrap(), FriendRequest::Accepted);
    assert_eq!(store.friends(a).unwrap(), names(&[(b, "rb")]));
    assert_eq!(store.friends(b).unwrap(), names(&[(a, "ra")]));
    assert_eq!(store.friend_requests(b).unwrap(), names(&[(c, "rc")]));
    assert_eq!(store.friend_requests(a).unwrap(), vec![]);
    assert_eq!(
        store.request_friend(a, b).unwrap(),
        FriendRequest::AlreadyFriends
    );
    assert_eq!(
        store.request_friend(b, a).unwrap(),
        FriendRequest::AlreadyFriends
    );

    // A legacy one-way row is not a friendship: the request is made.
    assert_eq!(store.add_friend(d, a).unwrap(), AddFriend::Added);
    assert_eq!(
        store.request_friend(d, a).unwrap(),
        FriendRequest::Requested
    );

    // Declined: the request goes, no friendship; answering it again finds nothing.
    assert!(store.answer_friend(b, c, false).unwrap());
    assert_eq!(store.friend_requests(b).unwrap(), vec![]);
    assert_eq!(store.friends(b).unwrap(), names(&[(a, "ra")]));
    assert_eq!(store.friends(c).unwrap(), vec![]);
    assert!(
        !store.answer_friend(b, c, true).unwrap(),
        "already answered"
    );
    assert!(!store.answer_friend(e, a, true).unwrap(), "never asked");
    // After the answer, asking again is a new request; once more, a repeat.
    assert_eq!(
        store.request_friend(c, b).unwrap(),
        FriendRequest::Requested
    );
    assert_eq!(
        store.request_friend(c, b).unwrap(),
        FriendRequest::AlreadyRequested
    );
    assert!(store.answer_friend(b, c, false).unwrap());
    // Accepted: friends both ways.
    assert!(store.answer_friend(a, d, true).unwrap());
    assert_eq!(store.friends(a).unwrap(), names(&[(b, "rb"), (d, "rd")]));
    assert_eq!(store.friends(d).unwrap(), names(&[(a, "ra")]));
    assert_eq!(store.friend_requests(a).unwrap(), vec![]);

    // Who sees a's presence: the users who list a, ascending.
    assert_eq!(store.add_friend(e, a).unwrap(), AddFriend::Added);
    assert_eq!(store.friend_of(a).unwrap(), vec![b, d, e]);
    assert_eq!(store.friend_of(c).unwrap(), Vec::<i64>::new());

    // Removed both ways; a second removal finds nothing. A one-way row goes too.
    assert!(store.del_friend(a, b).unwrap());
    assert_eq!(store.friends(a).unwrap(), names(&[(d, "rd")]));
    assert_eq!(store.friends(b).unwrap(), vec![]);
    assert!(!store.del_friend(b, a).unwrap());
    assert!(store.del_friend(a, e).unwrap(), "e→a only");
    assert_eq!(store.friend_of(a).unwrap(), vec![d]);
    assert_eq!(store.friends(d).unwrap(), names(&[(a, "ra")]));
    // Removed friends ask anew: a new request.
    assert_eq!(
        store.request_friend(b, a).unwrap(),
        FriendRequest::Requested
    );
}

fn group_changes(store: &dyn Store) {
    let [a, b, c, d] = ["ma", "mb", "mc", "md"].map(|n| store.register(n, "p").unwrap().unwrap());
    let g = store.create_group(c, "crew", "the crew").unwrap().unwrap();
    for u in [a, b, d] {
        store.join_group(u, g).unwrap();
    }
    assert_eq!(
        store.group(g).unwrap(),
        Some(GroupRow {
            id: g,
            name: "crew".into(),
            desc: "the crew".into(),
            members: vec![
                member(a, "ma", Role::Normal),
                member(b, "mb", Role::Normal),
                member(c, "mc", Role::Creator),
                member(d, "md", Role::Normal),
            ],
        })
    );
    assert_eq!(store.group(999_999).unwrap(), None);

    let other = store.create_group(d, "other", "").unwrap().unwrap();
    assert_eq!(
        store.remove_member(a, 999_999, b).unwrap(),
        RemoveMember::NoSuchGroup
    );
    assert_eq!(
        store.remove_member(a, other, d).unwrap(),
        RemoveMember::NotMember
    );
    assert_eq!(
        store.remove_member(a, g, b).unwrap(),
        RemoveMember::NotCreator
    );
    assert_eq!(
        store.remove_member(c, other, d).unwrap(),
        RemoveMember::NotMember
    );
    assert_eq!(
        store.remove_member(d, other, a).unwrap(),
        RemoveMember::NotInGroup
    );
    assert_eq!(store.remove_member(c, g, b).unwrap(), RemoveMember::Removed);
    assert_eq!(store.group_members(g).unwrap(), Some(vec![a, c, d]));
    assert_eq!(
        store.remove_member(c, g, b).unwrap(),
        RemoveMember::NotInGroup
    );

    assert_eq!(
        store.leave_group(a, 999_999).unwrap(),
        LeaveGroup::NoSuchGroup
    );
    assert_eq!(store.leave_group(b, g).unwrap(), LeaveGroup::NotMember);
    // A normal member leaves: the creator stays.
    assert_eq!(
        store.leave_group(d, g).unwrap(),
        LeaveGroup::Left { new_creator: None }
    );
    assert_eq!(store.group_members(g).unwrap(), Some(vec![a, c]));
    // The creator leaves: the lowest remaining id takes over.
    store.join_group(d, g).unwrap();
    assert_eq!(
        store.leave_group(c, g).unwrap(),
        LeaveGroup::Left {
            new_creator: Some(a)
        }
    );
    let roles = |g| {
        store
            .group(g)
            .unwrap()
            .unwrap()
            .members
            .iter()
            .map(|m| (m.id, m.role))
            .collect::<Vec<_>>()
    };
    assert_eq!(roles(g), [(a, Role::Creator), (d, Role::Normal)]);
    assert_eq!(
        store.remove_member(a, g, d).unwrap(),
        RemoveMember::Removed,
        "the new creator may remove"
    );
    // The last member leaves: no one to take over; the group stays, empty.
    assert_eq!(
        store.leave_group(a, g).unwrap(),
        LeaveGroup::Left { new_creator: None }
    );
    assert_eq!(store.group_members(g).unwrap(), Some(vec![]));
    assert_eq!(roles(other), [(d, Role::Creator)], "other groups untouched");
}

fn rec(conv: i64, ts_ms: i64, text: &str) -> HistoryRecord {
    HistoryRecord {
        conv,
        sender: 1,
        ts_ms,
        text: text.to_owned(),
    }
}

fn seqs_texts(store: &dyn Store, conv: i64, before: Option<i64>, limit: i64) -> Vec<(i64, String)> {
    store
        .history_page(conv, before, limit)
        .unwrap()
        .into_iter()
        .map(|m| (m.seq, m.text))
        .collect()
}

/// Messages whose times lie further apart than the chunk span are a chunk each, so
/// retention removes them one by one.
fn history_seqs_pages_and_prune(store: &dyn Store) {
    const STEP: i64 = 10_000;
    let (c1, c2, c3) = ((1i64 << 32) | 2, -7, (3i64 << 32) | 4);
    store.append_history(&[]).unwrap();
    assert_eq!(seqs_texts(store, c1, None, 10), vec![]);
    store
        .append_history(&[
            rec(c1, STEP, "a1"),
            rec(c2, STEP, "g1"),
            rec(c1, 2 * STEP, "a2"),
        ])
        .unwrap();
    store
        .append_history(&[rec(c1, 3 * STEP, "a3"), rec(c1, 4 * STEP, "a4")])
        .unwrap();
    let s = |v: &[(i64, &str)]| names(v);
    assert_eq!(
        seqs_texts(store, c1, None, 10),
        s(&[(4, "a4"), (3, "a3"), (2, "a2"), (1, "a1")])
    );
    assert_eq!(seqs_texts(store, c2, None, 10), s(&[(1, "g1")]));
    assert_eq!(
        seqs_texts(store, c1, Some(4), 2),
        s(&[(3, "a3"), (2, "a2")])
    );
    assert_eq!(seqs_texts(store, c1, Some(2), 10), s(&[(1, "a1")]));
    assert_eq!(seqs_texts(store, c1, Some(1), 10), vec![]);
    assert_eq!(seqs_texts(store, c1, None, 0), vec![], "limit 0");
    // A text with a NUL (a frame never holds one) comes back whole, and its
    // neighbours, gathered with it, too.
    let t = 10 * STEP;
    store
        .append_history(&[rec(c3, t, "x"), rec(c3, t, "n\0ul"), rec(c3, t, "y")])
        .unwrap();
    assert_eq!(
        seqs_texts(store, c3, None, 10),
        s(&[(3, "y"), (2, "n\0ul"), (1, "x")])
    );

    // Retention: the oldest first, at most `max`, each counted once.
    assert_eq!(store.prune_history(STEP, 10).unwrap(), 0, "none older");
    assert_eq!(store.prune_history(3 * STEP, 1).unwrap(), 1);
    assert_eq!(store.prune_history(3 * STEP, 10).unwrap(), 2);
    assert_eq!(store.prune_history(3 * STEP, 10).unwrap(), 0);
    assert_eq!(seqs_texts(store, c1, None, 10), s(&[(4, "a4"), (3, "a3")]));
    assert_eq!(seqs_texts(store, c2, None, 10), vec![]);
    // Seqs go on after a prune; a conversation's counter is its own.
    store
        .append_history(&[rec(c2, t, "g2"), rec(c1, t, "a5")])
        .unwrap();
    assert_eq!(seqs_texts(store, c1, Some(6), 1), s(&[(5, "a5")]));
    assert_eq!(seqs_texts(store, c2, None, 10), s(&[(2, "g2")]));
    assert_eq!(store.prune_history(t + 1, 100).unwrap(), 2 + 3 + 2);
}

/// A batch over more conversations than one MySQL statement could count (two
/// placeholders each, 65,535 at most a statement) gives each its seqs, in batch order.
fn history_batch_over_many_conversations(store: &dyn Store) {
    const CONVS: i64 = 40_000;
    let batch: Vec<HistoryRecord> = (0..2)
        .flat_map(|round| (1..=CONVS).map(move |c| rec(c, 5, &format!("{c}.{round}"))))
        .collect();
    store.append_history(&batch).unwrap();
    store.append_history(&batch[..3]).unwrap();
    for conv in [1, 2, 10_000, 10_001, 33_000, CONVS] {
        let mut want = vec![(2, format!("{conv}.1")), (1, format!("{conv}.0"))];
        if conv <= 3 {
            want.insert(0, (3, format!("{conv}.0")));
        }
        assert_eq!(
            seqs_texts(store, conv, None, 10),
            want,
            "conversation {conv}"
        );
    }
}
