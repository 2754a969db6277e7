//! The web client in a real headless Chromium (issue 17), driven through
//! WebDriver, against two cluster nodes behind nginx: two browser users and one
//! terminal ChatClient chat one to one and in a group across the nodes; a user
//! adds a friend, creates and joins a group and sees unread counts; a reloaded
//! page resumes and scrolls back through the history; and a page whose node is
//! killed (`kill -9`) reconnects through nginx to the other node, resumes, and
//! shows the message it missed.
//!
//! One test, one chromedriver, and its browsers are reused through the phases:
//! Chromium is the slow part. With `CHAT_SCREENSHOTS=DIR` it also saves the
//! README's screenshots of the main views into DIR.

mod browser_util;
mod cluster_util;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use browser_util::{Browser, Driver, Terminal};
use cluster_util::client::{one_chat, Client};
use cluster_util::{login, register, serial, Cluster, ClusterOpts};

/// Logs `id` in on the page at `web`, again while the server still has it
/// online from a connection that just closed (errno 2).
fn page_login(b: &Browser, web: &str, id: i64, password: &str) {
    b.goto(web);
    b.wait_text("#login-h", "Log in");
    b.fill("#login-id", &id.to_string());
    b.fill("#login-pw", password);
    b.click("#login-btn");
    let deadline = std::time::Instant::now() + browser_util::WAIT;
    loop {
        let state = b.wait_js(
            "a login answer",
            "if (document.getElementById('me-id').textContent === String(arguments[0])) return 'in';
             const m = document.getElementById('auth-msg').textContent;
             return m.includes('errno 2)') ? 'busy' : null;",
            vec![json!(id)],
        );
        if state == "in" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} stays online elsewhere"
        );
        b.js(
            "document.getElementById('auth-msg').textContent = '';",
            vec![],
        );
        b.click("#login-btn");
    }
}

/// Opens the conversation `key` (`u:ID` or `g:ID`) from the side list.
fn open(b: &Browser, key: &str) {
    let css = format!("#sidebar li[data-key=\"{key}\"] button");
    b.wait_js(
        &format!("{key} listed"),
        "return !!document.querySelector(arguments[0]);",
        vec![json!(css)],
    );
    b.click(&css);
    b.wait_js(
        &format!("{key} open"),
        "const e = document.querySelector(arguments[0]); return !!e && e.classList.contains('active');",
        vec![json!(css)],
    );
}

/// Types `text` in the open conversation and sends it with Enter.
fn say(b: &Browser, text: &str) {
    b.fill("#text", text);
    b.enter("#text");
    b.wait_message(text);
    b.wait_js(
        "the message is confirmed",
        "const m = [...document.querySelectorAll('#messages .msg.mine')].pop();
         return !!m && !m.classList.contains('pending') && m.querySelector('.state').textContent;",
        vec![],
    );
}

/// The unread badge of `key` in the side list (0 without one).
fn unread(b: &Browser, key: &str) -> i64 {
    b.js(
        "const e = document.querySelector(`#sidebar li[data-key=\"${arguments[0]}\"] .badge`);
         return e ? Number(e.textContent) : 0;",
        vec![json!(key)],
    )
    .as_i64()
    .unwrap_or(0)
}

fn wait_unread(b: &Browser, key: &str, n: i64) {
    b.wait_js(
        &format!("{key} has {n} unread"),
        "const e = document.querySelector(`#sidebar li[data-key=\"${arguments[0]}\"] .badge`);
         return (e ? Number(e.textContent) : 0) === arguments[1];",
        vec![json!(key), json!(n)],
    );
}

/// Opens group `gid` on `b` until its header counts `n` members (each opening
/// asks the server who is in it).
fn wait_members(b: &Browser, gid: i64, n: usize) {
    let deadline = std::time::Instant::now() + browser_util::WAIT;
    let want = format!("{n} members");
    loop {
        open(b, &format!("g:{gid}"));
        let sub = b.js(
            "return document.getElementById('conv-sub').textContent;",
            vec![],
        );
        if sub.as_str().is_some_and(|s| s.contains(&want)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "group {gid} never had {want}: {sub}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Which node (1 or 2) user `id` is on, per the cluster's presence.
fn node_of(c: &Cluster, id: i64) -> usize {
    cluster_util::poll(Duration::from_secs(20), "a presence", || {
        let at = c.presence(id)?;
        (1..=c.nodes).find(|&i| at == c.node_id(i))
    })
}

/// Saves a screenshot when `CHAT_SCREENSHOTS` names a folder.
fn shot(b: &Browser, name: &str) {
    if let Some(dir) = std::env::var_os("CHAT_SCREENSHOTS") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        b.screenshot(&dir.join(format!("{name}.png")));
    }
}

#[test]
fn browsers_and_a_terminal_chat_across_nodes_scroll_back_and_survive_a_killed_node() {
    let _serial = serial();
    let c = Cluster::start(ClusterOpts {
        nodes: 2,
        node_ttl_ms: Some(2000),
        ..ClusterOpts::default()
    });
    let web = format!("http://127.0.0.1:{}/", c.web_port);
    let ids = register(&c, &["ann", "bob", "carl", "dave"]);
    let (ann, bob, carl, dave) = (ids[0], ids[1], ids[2], ids[3]);
    let mut driver = Driver::start();

    // --- Log in: ann and bob in browsers, through nginx's web port. ---
    let a = driver.browser(1100, 760);
    a.goto(&web);
    a.wait_text("#login-h", "Log in");
    shot(&a, "login");
    page_login(&a, &web, ann, "ann");
    let ann_node = node_of(&c, ann);
    let b = driver.browser(1100, 760);
    page_login(&b, &web, bob, "bob");
    let bob_node = node_of(&c, bob);
    assert_ne!(
        ann_node, bob_node,
        "nginx (least_conn) put both browsers on node {ann_node}"
    );

    // --- A friend request from the page, accepted on the other page. ---
    a.click("#sidebar details:nth-of-type(1) summary");
    a.fill("#friend-id", &bob.to_string());
    a.click("#addfriend-form button");
    a.wait_text("#banner", "Friend request sent");
    b.wait_text("#requests", "ann");
    b.click("#requests li button"); // Accept
    a.wait_text("#friends", "bob");
    b.wait_text("#friends", "ann");
    // bob is online: ann's list says so.
    a.wait_js(
        "bob online in ann's list",
        "const d = document.querySelector(`#friends li[data-key=\"u:${arguments[0]}\"] .dot`);
         return !!d && d.classList.contains('on');",
        vec![json!(bob)],
    );

    // --- One to one across the nodes, with unread counts. ---
    open(&a, &format!("u:{bob}"));
    say(&a, "hi bob, from a browser");
    wait_unread(&b, &format!("u:{ann}"), 1);
    open(&b, &format!("u:{ann}"));
    b.wait_message("hi bob, from a browser");
    assert_eq!(unread(&b, &format!("u:{ann}")), 0, "opening it read it");
    say(&b, "hi ann");
    a.wait_message("hi ann");
    shot(&a, "conversation");

    // --- A group: created on ann's page, joined on bob's and in the terminal. ---
    a.click("#sidebar details:nth-of-type(2) summary");
    a.fill("#group-name", "lounge");
    a.fill("#group-desc", "browsers and terminals");
    a.click("#creategroup-form button");
    a.wait_text("#groups", "lounge");
    let gid = a
        .js(
            "return Number(document.querySelector('#groups li').dataset.key.slice(2));",
            vec![],
        )
        .as_i64()
        .expect("a group id");
    b.click("#sidebar details:nth-of-type(3) summary");
    b.fill("#join-id", &gid.to_string());
    b.click("#joingroup-form button");
    b.wait_text("#groups", "lounge");
    let mut t = Terminal::spawn(c.lb_port);
    t.line("1");
    t.line(&carl.to_string());
    t.line("carl");
    t.wait_for("carl");
    t.line(&format!("addgroup:{gid}"));
    wait_members(&a, gid, 3);
    open(&b, &format!("g:{gid}"));
    say(&a, "hello group");
    b.wait_message("hello group");
    t.wait_for("hello group");
    t.line(&format!("groupchat:{gid}:hello from the terminal"));
    a.wait_message("hello from the terminal");
    b.wait_message("hello from the terminal");
    a.wait_text("#conv-sub", "3 members, 3 online");
    shot(&a, "group");
    // The terminal user writes to ann directly: a new conversation, unread.
    t.line(&format!("chat:{ann}:psst ann"));
    wait_unread(&a, &format!("u:{carl}"), 1);
    say(&b, "bob in the group");
    t.wait_for("bob in the group");

    // --- History: 45 messages from dave, then a reload; scroll back to the first. ---
    let (mut d, _) = login(c.port(ann_node), dave, "dave");
    for i in 1..=45 {
        d.send(&one_chat(dave, "dave", ann, &format!("old {i}")));
    }
    wait_unread(&a, &format!("u:{dave}"), 45);
    a.goto(&web); // a reload resumes the session with the stored token
    a.wait_text("#me-id", &ann.to_string());
    open(&a, &format!("u:{dave}"));
    a.wait_message("old 45");
    let first_page = a.messages();
    assert!(
        !first_page.contains(&"old 1".to_owned()),
        "the first page holds only the newest: {first_page:?}"
    );
    a.wait_text("#older-btn", "Load older");
    a.js(
        "document.getElementById('messages-box').scrollTop = 0;",
        vec![],
    );
    a.wait_message("old 1");
    let all = a.messages();
    let want: Vec<String> = (1..=45).map(|i| format!("old {i}")).collect();
    assert_eq!(all, want, "scroll-back shows every message once, in order");

    // --- Phone width: one pane at a time, with a way back. ---
    drop(d);
    let p = driver.browser(390, 844);
    page_login(&p, &web, dave, "dave");
    p.click("#sidebar details:nth-of-type(4) summary");
    p.fill("#peer-id", &ann.to_string());
    shot(&p, "phone-list");
    p.click("#message-form button");
    p.wait_message("old 45");
    assert_eq!(
        p.js(
            "return getComputedStyle(document.getElementById('sidebar')).display;",
            vec![]
        ),
        json!("none"),
        "at a phone's width the open conversation takes the screen"
    );
    shot(&p, "phone-conversation");
    p.click("#back-btn");
    p.wait_text("#friends", "user");
    drop(p);

    // --- bob's node is killed while bob's network is down too: the page retries,
    // comes back through nginx on the other node, resumes, and shows what it missed.
    let (mut e, _) = login(c.port(ann_node), dave, "dave");
    b.set_offline(true);
    c.kill9(bob_node);
    b.wait_text("#conn-state", "retrying");
    e.send(&one_chat(dave, "dave", bob, "sent while bob was cut off"));
    // The dead node's stream is moved to the store after its TTL (2 s here):
    // bob's presence there ends.
    cluster_util::poll(Duration::from_secs(20), "the dead node drained", || {
        (c.presence(bob) != Some(c.node_id(bob_node))).then_some(())
    });
    let state = b.js(
        "return document.getElementById('conn-state').textContent;",
        vec![],
    );
    assert_ne!(state, json!("online"), "the page came back while offline");
    b.set_offline(false);
    b.wait_text("#banner", "Reconnected");
    b.wait_text("#conn-state", "online");
    assert_eq!(
        node_of(&c, bob),
        ann_node,
        "bob resumed on the surviving node"
    );
    b.wait_js(
        "the missed message is listed and unread",
        "const e = document.querySelector(`#sidebar li[data-key=\"u:${arguments[0]}\"] .badge`);
         return !!e;",
        vec![json!(dave)],
    );
    open(&b, &format!("u:{dave}"));
    b.wait_message("sent while bob was cut off");
    b.wait_js(
        "it is marked as missed",
        "return [...document.querySelectorAll('#messages .msg.missed .text')]
            .some(e => e.textContent === 'sent while bob was cut off');",
        vec![],
    );
    b.wait_text("#banner", "1 message arrived while you were away");
    // And the page works on: bob writes to ann, on the same node now.
    open(&b, &format!("u:{ann}"));
    say(&b, "back again");
    a.goto(&web);
    a.wait_text("#me-id", &ann.to_string());
    open(&a, &format!("u:{bob}"));
    a.wait_message("back again");
    let mut probe = Client::connect(c.lb_port);
    probe.send(&json!({"msgid": 13}));
    probe.expect("PONG", |v| v["msgid"] == 14);
}
