//! A login the server answers only after its login timeout closed the connection: the
//! client sends it again once on a new connection, then says so, instead of waiting for
//! an answer that cannot come. (Its own binary: the password cost is process-wide.)

mod util;

use std::time::Duration;

use util::{login, Client, TestServer, MENU};

#[test]
fn a_login_slower_than_the_login_timeout_is_reported_at_once() {
    // Verifying this hash takes far longer than the 50 ms login timeout below.
    chat::password::set_cost(64 * 1024, 4).expect("argon2 parameters");
    let mut server = TestServer::start();
    let alice = server.register("alice");
    server.restart_with(|o| o.limits.login_timeout = Duration::from_millis(50));
    let mut c = Client::spawn(&server);
    c.wait_for(MENU);
    c.send(&login(alice));
    // Sent twice (the second time on a new connection), both closed before the answer.
    // Then the menu again (waited for whole: it is printed just after the line).
    c.wait_for(&format!(
        "the server closed the connection before answering, try again\n{MENU}"
    ));
    c.send("3\n");
    assert!(c.wait_exit().success(), "{}", c.stderr());
    assert_eq!(c.stderr(), "");
}
