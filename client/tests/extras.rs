//! What issue 14 added for scripts too: `friends` and `groups`, messages refused before
//! sending, and a menu that outlives the server's login timeout.

mod util;

use std::thread;
use std::time::Duration;

use util::{logged_in, login, Client, TestServer, MENU};

#[test]
fn friends_and_groups_list_with_live_state() {
    let server = TestServer::start();
    let alice = server.register("alice");
    let bob = server.register("bob");
    let carol = server.register("carol");
    let mut raw = server.login(alice);
    raw.add_friend(bob);
    raw.add_friend(carol);
    let gid = raw.create_group("g", "desc");
    let mut b = server.login(bob);
    b.join_group(gid);
    drop(raw);

    let mut c = logged_in(&server, alice);
    let before = c.stdout();
    c.send("friends\n");
    // The banner lists carol once already.
    let out = c.wait_for_n(&format!("{carol} carol offline\n"), 2);
    let listed = &out[before.len()..];
    assert_eq!(
        listed,
        format!(
            "----------------------friend list---------------------\n\
             {bob} bob online\n{carol} carol offline\n"
        )
    );
    c.send("groups\n");
    let out = c.wait_for_n(&format!("{bob} bob online normal\n"), 2);
    let listed = &out[before.len() + listed.len()..];
    assert_eq!(
        listed,
        format!(
            "----------------------group list----------------------\n\
             {gid} g desc\n{alice} alice online creator\n{bob} bob online normal\n"
        )
    );
    c.close_stdin();
    assert!(c.wait_exit().success(), "{}", c.stderr());
    drop(b);
}

#[test]
fn empty_and_oversized_messages_are_refused_before_sending() {
    let server = TestServer::start();
    let alice = server.register("alice");
    let bob = server.register("bob");
    let mut b = logged_in(&server, bob);
    let mut a = logged_in(&server, alice);
    let huge = "x".repeat(70_000);
    a.send(&format!(
        "chat:{bob}:\ngroupchat:1: \nchat:{bob}:{huge}\nchat:{bob}:after\n"
    ));
    let out = a.wait_for("nothing sent\n");
    assert!(
        out.contains("the message is empty, nothing sent\n"),
        "{out}"
    );
    a.wait_for("message too long: ");
    b.wait_for(&format!("[{alice}]alice said: after\n"));
    // Only the last one reached bob, and alice's connection lives on.
    assert_eq!(b.stdout().matches(" said: ").count(), 1, "{}", b.stdout());
    a.send("chat:1:still here\n");
    a.close_stdin();
    assert!(a.wait_exit().success(), "{}", a.stderr());
    assert_eq!(a.stderr(), "");
    b.close_stdin();
    assert!(b.wait_exit().success());
}

#[test]
fn login_timeout_at_the_menu_connects_again() {
    let mut server = TestServer::start();
    let alice = server.register("alice");
    // A short timeout only now: a registration under load can take longer than that.
    server.restart_with(|o| o.limits.login_timeout = Duration::from_millis(1000));
    let mut c = Client::spawn(&server);
    c.wait_for(MENU);
    // Longer than the server's login timeout: it closes the idle connection meanwhile.
    thread::sleep(Duration::from_millis(2500));
    c.send(&login(alice));
    c.wait_for("current login user => id:");
    // Nothing about the closed connection was printed: the menu, then the banner.
    assert!(c
        .stdout()
        .starts_with(&format!("{MENU}userid:userpassword:")));
    c.close_stdin();
    assert!(c.wait_exit().success(), "{}", c.stderr());
    assert_eq!(c.stderr(), "");
}
