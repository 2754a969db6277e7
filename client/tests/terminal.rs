//! The client as a person uses it: ChatClient in a real pseudo-terminal (portable-pty),
//! its screen rendered by a terminal emulator (vt100), keys typed as a terminal sends them.

mod util;

use std::io::{Read, Write};
use std::num::NonZeroU16;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use chat::protocol::msgid;
use portable_pty::{native_pty_system, Child, CommandBuilder, MasterPty, PtySize};
use serde_json::json;
use util::{TestServer, PW, TIMEOUT};

const ROWS: u16 = 40;
const COLS: u16 = 200;
const LEFT: &str = "\x1b[D";
const UP: &str = "\x1b[A";
const END: &str = "\x1b[F";
const PASTE_START: &str = "\x1b[200~";
const PASTE_END: &str = "\x1b[201~";

/// ChatClient in a pty, with the screen kept up to date by a reader thread.
struct Tty {
    child: Box<dyn Child + Send + Sync>,
    master: Box<dyn MasterPty + Send>,
    keys: Arc<Mutex<Box<dyn Write + Send>>>,
    screen: Arc<Mutex<vt100::Parser>>,
}

impl Tty {
    fn spawn(server: &TestServer) -> Tty {
        Tty::spawn_args(&["127.0.0.1", &server.port()])
    }

    /// ChatClient with these arguments.
    fn spawn_args(args: &[&str]) -> Tty {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows: ROWS,
                cols: COLS,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("a pty");
        let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_ChatClient"));
        cmd.args(args);
        cmd.env("TERM", "xterm-256color");
        cmd.cwd(std::env::temp_dir());
        let child = pair.slave.spawn_command(cmd).expect("spawn ChatClient");
        drop(pair.slave);
        let mut out = pair.master.try_clone_reader().unwrap();
        let keys = Arc::new(Mutex::new(pair.master.take_writer().unwrap()));
        let rows = NonZeroU16::new(ROWS).unwrap();
        let cols = NonZeroU16::new(COLS).unwrap();
        let screen = Arc::new(Mutex::new(vt100::Parser::new(rows, cols, 0)));
        let (scr, answer) = (screen.clone(), keys.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut p = scr.lock().unwrap();
                p.process(&buf[..n]);
                // Answer cursor-position queries as a terminal does (rustyline asks).
                for _ in 0..buf[..n].windows(4).filter(|w| w == b"\x1b[6n").count() {
                    let (r, c) = p.screen().cursor_position();
                    let reply = format!("\x1b[{};{}R", r + 1, c + 1);
                    let _ = answer.lock().unwrap().write_all(reply.as_bytes());
                }
            }
        });
        Tty {
            child,
            master: pair.master,
            keys,
            screen,
        }
    }

    fn send(&self, keys: &str) {
        let mut k = self.keys.lock().unwrap();
        k.write_all(keys.as_bytes()).unwrap();
        k.flush().unwrap();
    }

    fn contents(&self) -> String {
        self.screen.lock().unwrap().screen().contents()
    }

    /// The screen's lines, trailing blanks trimmed.
    fn lines(&self) -> Vec<String> {
        self.contents()
            .lines()
            .map(|l| l.trim_end().to_owned())
            .collect()
    }

    /// The line the cursor is on.
    fn cursor_line(&self) -> String {
        let p = self.screen.lock().unwrap();
        let (row, _) = p.screen().cursor_position();
        let rows: Vec<String> = p.screen().rows(0, COLS).collect();
        rows[usize::from(row)].trim_end().to_owned()
    }

    /// Waits until `done` holds for the screen; fails with the screen after [`TIMEOUT`].
    fn wait(&self, what: &str, done: impl Fn(&Tty) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; screen:\n{}",
                self.contents()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_text(&self, text: &str) {
        self.wait(text, |t| t.contents().contains(text));
    }

    /// Waits until the cursor's line reads `line` exactly (the input line as typed).
    fn wait_line(&self, line: &str) {
        self.wait(&format!("the input line {line:?}"), |t| {
            t.cursor_line() == line
        });
    }
}

impl Tty {
    /// Whether the terminal echoes and edits lines itself (cooked mode), as a shell
    /// expects it; false while the line editor has it in raw mode.
    fn cooked(&self) -> bool {
        let t = self.master.get_termios().expect("the pty's settings");
        let want = libc::ECHO | libc::ICANON;
        t.local_flags.bits() & want == want
    }

    /// Waits for the client to exit; its status.
    fn wait_exit(&mut self) -> portable_pty::ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "ChatClient did not exit");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Logs `id` in with [`PW`] and waits for the prompt `<name>>`.
    fn login(&self, id: i64, name: &str) {
        self.wait_line("choice:");
        self.send("1\r");
        self.wait_line("userid:");
        self.send(&format!("{id}\r"));
        self.wait_line("userpassword:");
        self.send(&format!("{PW}\r"));
        self.wait_line(&format!("{name}>"));
    }
}

impl Drop for Tty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn editing_history_hidden_password_and_lines_above_the_input() {
    let server = TestServer::start();
    let alice = server.register("alice");
    let bob = server.register("bob");
    let mut b = server.login(bob);
    let recv_from_alice = |b: &mut util::Raw| {
        let v = b.recv_msgid(msgid::ONE_CHAT);
        v["msg"].as_str().unwrap().to_owned()
    };

    let tty = Tty::spawn(&server);
    tty.wait_line("choice:");
    tty.send("1\r");
    tty.wait_line("userid:");
    tty.send(&format!("{alice}\r"));
    tty.wait_line("userpassword:");
    // The password is typed but not shown: the cursor moves, the text stays blank.
    tty.send(PW);
    tty.wait("the cursor past the masked password", |t| {
        t.screen.lock().unwrap().screen().cursor_position().1
            == ("userpassword:".len() + PW.len()) as u16
    });
    assert_eq!(tty.cursor_line(), "userpassword:");
    tty.send("\r");
    tty.wait_text("current login user => id:");
    tty.wait_line("alice>");
    assert!(
        !tty.lines()
            .iter()
            .any(|l| l.contains(&format!("userpassword:{PW}"))),
        "{}",
        tty.contents()
    );

    // Arrow keys edit the line: "helo", left, "l" makes "hello".
    tty.send(&format!("chat:{bob}:helo{LEFT}l"));
    tty.wait_line(&format!("alice> chat:{bob}:hello"));
    tty.send("\r");
    assert_eq!(recv_from_alice(&mut b), "hello");
    tty.wait_text(&format!("(message to {bob} delivered)"));

    // Up recalls it; End and one more character make a new message.
    tty.wait_line("alice>");
    tty.send(UP);
    tty.wait_line(&format!("alice> chat:{bob}:hello"));
    tty.send(&format!("{END}!\r"));
    assert_eq!(recv_from_alice(&mut b), "hello!");

    // A message arrives while a line is half typed: it is printed above, and the
    // typed line stays as it was, cursor and all.
    tty.wait_line("alice>");
    tty.send(&format!("chat:{bob}:half typed"));
    tty.wait_line(&format!("alice> chat:{bob}:half typed"));
    b.send(
        json!({"ext": 1, "id": bob, "msg": "incoming", "msgid": msgid::ONE_CHAT,
        "name": "bob", "time": "2024-01-02 03:04:05", "toid": alice}),
    );
    let said = format!("2024-01-02 03:04:05 [{bob}]bob said: incoming");
    tty.wait_text(&said);
    tty.wait_line(&format!("alice> chat:{bob}:half typed"));
    let lines = tty.lines();
    let at = |want: &str| lines.iter().position(|l| l == want);
    let (said_at, input_at) = (at(&said), at(&format!("alice> chat:{bob}:half typed")));
    assert!(
        matches!((said_at, input_at), (Some(s), Some(i)) if s < i),
        "{}",
        tty.contents()
    );
    tty.send(" still\r");
    assert_eq!(recv_from_alice(&mut b), "half typed still");

    // A long paste (bracketed, as terminals send it) is read whole: no line limit.
    tty.wait_line("alice>");
    let long: String = (0..10_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    tty.send(&format!("{PASTE_START}chat:{bob}:{long}{PASTE_END}\r"));
    assert_eq!(recv_from_alice(&mut b), long);

    tty.wait_line("alice>");
    tty.send("quit\r");
    let mut tty = tty;
    assert!(tty.wait_exit().success());
    assert!(tty.cooked());
}

#[test]
fn a_lost_connection_leaves_the_terminal_as_it_was() {
    let mut server = TestServer::start();
    let alice = server.register("alice");
    let mut tty = Tty::spawn_args(&["--no-reconnect", "127.0.0.1", &server.port()]);
    tty.login(alice, "alice");
    tty.send("half a line");
    tty.wait_line("alice> half a line");
    assert!(!tty.cooked(), "the editor reads in raw mode");
    server.stop();
    assert_eq!(tty.wait_exit().exit_code(), 1);
    tty.wait_text("server closed the connection");
    // The shell the person returns to echoes again.
    assert!(tty.cooked());
}

/// A dropped connection (cut between client and server) comes back by itself: the
/// client connects again, resumes without the password, prints one notice line and
/// the messages sent meanwhile, each once — the one it had shown before the drop,
/// which the server sends again (it was not acknowledged), is not shown twice.
#[test]
fn a_dropped_connection_resumes_and_shows_each_message_once() {
    let server = TestServer::start();
    let alice = server.register("alice");
    let bob = server.register("bob");
    let mut b = server.login(bob);
    let proxy = util::proxy::Proxy::start(server.addr());
    let tty = Tty::spawn_args(&["127.0.0.1", &proxy.port()]);
    tty.login(alice, "alice");
    let chat = |b: &mut util::Raw, msg: &str| {
        b.send(json!({"id": bob, "msg": msg, "msgid": msgid::ONE_CHAT, "toid": alice}));
    };
    chat(&mut b, "before the drop");
    tty.wait_text("said: before the drop");

    proxy.cut();
    chat(&mut b, "meanwhile one");
    chat(&mut b, "meanwhile two");
    tty.wait_text("(connection lost and restored:");
    tty.wait_text("said: meanwhile two");
    chat(&mut b, "after it");
    tty.wait_text("said: after it");
    let screen = tty.contents();
    for (text, times) in [
        ("(connection lost and restored:", 1),
        ("said: before the drop", 1),
        ("said: meanwhile one", 1),
        ("said: meanwhile two", 1),
    ] {
        assert_eq!(screen.matches(text).count(), times, "{text:?} on\n{screen}");
    }
    assert!(
        screen.find("meanwhile one") < screen.find("meanwhile two"),
        "{screen}"
    );
    // The resumed session works both ways.
    tty.send(&format!("chat:{bob}:back again\r"));
    let v = b.recv_msgid(msgid::ONE_CHAT);
    assert_eq!(v["msg"], "back again");
}
