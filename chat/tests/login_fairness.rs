//! The hashing queue's fairness between peer addresses, over real sockets. Its own
//! test binary: the password cost is per process, and here a hash must take long
//! against the way a LOGIN travels to the hasher and its reply back (see below).

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use chat::hasher::HasherConfig;
use chat::server::ServerOptions;
use serde_json::json;
use util::{connect_from, Backend, User};

/// The legacy reply to a wrong id or password.
const INVALID: &str = r#"{"errmsg":"id or password is invalid!","errno":1,"msgid":2}"#;

/// Bytes the server wrote to `s` that its test has not read (`FIONREAD`): what the
/// server has answered so far, whatever the test's threads are doing.
fn unread(s: &TcpStream) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: a valid descriptor, and a pointer to the c_int FIONREAD writes.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0, "FIONREAD: {}", std::io::Error::last_os_error());
    usize::try_from(n).unwrap()
}

/// While 48 connections from another address keep the hashing threads busy with
/// wrong logins (distinct unknown ids, so no lock stops them), a login from
/// 127.0.0.1 is served within a couple of checks, not behind every queued one.
///
/// What it counts is the flood replies the server wrote while the login waited,
/// from the kernel (the bytes unread in the flooding sockets, each reply the same
/// 61 bytes), not replies read by reader threads: those lagged under load and
/// counted replies of checks made before the login (17 and 19 of a bound of 24
/// seen, and failures 2 runs in 5 at load 4 to 8). What is left of timing is the
/// login's trip to the hasher and its reply's trip back, during which the flood's
/// checks go on; a hash of 8 MiB costs ~20 ms on an idle machine (so that trip is
/// worth well under one check; and load slows hashes as much as trips). Fair: the
/// checks running when it arrives, and about one more per thread (about 4); first
/// in, first out: every flooding connection's check (48).
#[test]
fn a_hashing_flood_from_one_address_does_not_queue_another() {
    let _ = chat::password::set_cost(8 * 1024, 1);
    let b = Backend::sqlite();
    let srv = b.start_with(ServerOptions {
        hashing: HasherConfig {
            threads: 2,
            per_peer: 1,
        },
        ..ServerOptions::default()
    });
    let mut dave = User::register(srv.addr(), "dave");
    const CONNS: usize = 48;
    const EACH: usize = 4;
    let reply = INVALID.len() + 1;
    let flood: Vec<TcpStream> = (0..CONNS)
        .map(|i| {
            let mut s = connect_from([127, 0, 0, 2], srv.addr());
            let bytes: Vec<u8> = (0..EACH)
                .flat_map(|k| {
                    let id = 1_000_000 + i * EACH + k;
                    util::frame_bytes(&json!({"id": id, "msgid": 1, "password": "guess"}))
                })
                .collect();
            s.write_all(&bytes).unwrap();
            s
        })
        .collect();
    let answered = || flood.iter().map(unread).sum::<usize>() / reply;
    // Every flooding connection has a check queued or running by now.
    util::poll(Duration::from_secs(60), "the flood under way", || {
        (answered() >= CONNS).then_some(())
    });
    let before = answered();
    let t = Instant::now();
    dave.login();
    let meanwhile = answered() - before;
    let waited = t.elapsed();
    eprintln!("flood checks answered while the login waited: {meanwhile} in {waited:?}");
    assert!(
        answered() < CONNS * EACH,
        "the flood ended before the login was measured"
    );
    assert!(
        meanwhile < CONNS / 2,
        "{meanwhile} flood checks answered while one login waited {waited:?}"
    );
    // Every flood reply is the failed LOGIN_ACK.
    for mut s in flood {
        let mut got = vec![0; EACH * reply];
        s.read_exact(&mut got).expect("every flood login answered");
        assert_eq!(got, format!("{INVALID}\0").repeat(EACH).as_bytes());
    }
}
