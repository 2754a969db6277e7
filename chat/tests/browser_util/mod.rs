//! Headless Chromium for the browser tests, driven through WebDriver: one
//! chromedriver per test binary on a free port, a fresh profile per browser, and
//! blocking helpers that poll the page with a deadline (never a fixed sleep).
//! Also the terminal ChatClient, piped, as the client tests run it.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/ensure-services.sh`
//! installs them); without them the tests fail with that hint, never skip.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// How long any wait for the page may take: the nodes are debug builds on a
/// loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(20);

/// The flags that let Chromium run here (see the issue): no sandbox (root), no
/// GPU, and no background traffic, without which this machine refuses its
/// connections.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-renderer-backgrounding",
    "--disable-background-timer-throttling",
];

fn find(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"] {
        let p = PathBuf::from(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("the browser tests need `{name}`: run `bash scripts/ensure-services.sh` (Debian's chromium and chromium-driver)");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A chromedriver process and the runtime the WebDriver client runs on.
pub struct Driver {
    child: Child,
    port: u16,
    rt: Arc<tokio::runtime::Runtime>,
    dirs: Vec<PathBuf>,
}

impl Driver {
    /// Starts chromedriver on a free port and waits until it answers.
    pub fn start() -> Driver {
        let bin = find("chromedriver");
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let d = Driver {
            child,
            port,
            rt: Arc::new(rt),
            dirs: Vec::new(),
        };
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {port}"
            );
            thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// A new browser (its own Chromium and profile) with a `width`×`height` window.
    pub fn browser(&mut self, width: u32, height: u32) -> Browser {
        let dir = std::env::temp_dir().join(format!(
            "chat_chromium_{}_{}",
            std::process::id(),
            self.dirs.len()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        self.dirs.push(dir.clone());
        let mut args: Vec<String> = FLAGS.iter().map(|s| (*s).to_owned()).collect();
        args.push(format!("--user-data-dir={}", dir.display()));
        args.push(format!("--window-size={width},{height}"));
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": find("chromium"), "args": args},
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!()
        };
        let url = format!("http://127.0.0.1:{}", self.port);
        let client = self.rt.block_on(async {
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps)
                .connect(&url)
                .await
                .expect("a WebDriver session")
        });
        Browser {
            client: Some(client),
            rt: self.rt.clone(),
            driver_port: self.port,
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// One browser window, with blocking helpers.
pub struct Browser {
    client: Option<Client>,
    rt: Arc<tokio::runtime::Runtime>,
    /// chromedriver's port, for its Chromium-only commands.
    driver_port: u16,
}

impl Browser {
    fn c(&self) -> &Client {
        self.client.as_ref().expect("browser open")
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) {
        self.rt
            .block_on(self.c().goto(url))
            .unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns its value.
    pub fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.rt
            .block_on(self.c().execute(script, args))
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Polls `script` until it returns something other than `null`/`false`.
    pub fn wait_js(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.js(script, args.clone());
            if !v.is_null() && v != Value::Bool(false) {
                return v;
            }
            if Instant::now() >= deadline {
                let page = self.js("return document.body.innerText", vec![]);
                panic!(
                    "timed out after {WAIT:?}: {what}\n--- page text ---\n{}",
                    page.as_str().unwrap_or("")
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the element `css` is shown and its text contains `needle`.
    pub fn wait_text(&self, css: &str, needle: &str) {
        self.wait_js(
            &format!("{css} shows {needle:?}"),
            "const e = document.querySelector(arguments[0]);
             return !!e && e.offsetParent !== null && e.textContent.includes(arguments[1]);",
            vec![json!(css), json!(needle)],
        );
    }

    /// Types `text` into the element `css` (cleared first), as keystrokes.
    pub fn fill(&self, css: &str, text: &str) {
        self.rt.block_on(async {
            let e = self.c().find(Locator::Css(css)).await.expect(css);
            e.clear().await.expect("clear");
            e.send_keys(text).await.expect("type");
        });
    }

    /// Clicks the element `css`.
    pub fn click(&self, css: &str) {
        self.rt.block_on(async {
            let e = self.c().find(Locator::Css(css)).await.expect(css);
            e.click()
                .await
                .unwrap_or_else(|err| panic!("click {css}: {err}"));
        });
    }

    /// Presses Enter in the element `css`.
    pub fn enter(&self, css: &str) {
        self.fill_append(css, &char::from(fantoccini::key::Key::Enter).to_string());
    }

    /// Types `text` into `css` without clearing it.
    pub fn fill_append(&self, css: &str, text: &str) {
        self.rt.block_on(async {
            let e = self.c().find(Locator::Css(css)).await.expect(css);
            e.send_keys(text).await.expect("type");
        });
    }

    /// The texts of the messages in the open conversation, oldest first.
    pub fn messages(&self) -> Vec<String> {
        let v = self.js(
            "return [...document.querySelectorAll('#messages .msg .text')].map(e => e.textContent);",
            vec![],
        );
        serde_json::from_value(v).unwrap()
    }

    /// Waits until the open conversation shows a message `text`.
    pub fn wait_message(&self, text: &str) {
        self.wait_js(
            &format!("message {text:?} shown"),
            "return [...document.querySelectorAll('#messages .msg .text')].some(e => e.textContent === arguments[0]);",
            vec![json!(text)],
        );
    }

    /// Takes the browser off the network (new connections fail; open ones stay
    /// until their peer closes them) or puts it back, through chromedriver's
    /// network conditions command.
    pub fn set_offline(&self, offline: bool) {
        let sid = self
            .rt
            .block_on(self.c().session_id())
            .expect("session id")
            .expect("a session");
        let body = json!({"network_conditions": {
            "offline": offline, "latency": 0,
            "download_throughput": 1_000_000_000, "upload_throughput": 1_000_000_000}})
        .to_string();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.driver_port)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        write!(
            s,
            "POST /session/{sid}/chromium/network_conditions HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        assert!(
            reply.starts_with("HTTP/1.1 200"),
            "network conditions refused: {reply}"
        );
    }

    /// Saves a PNG of the window to `path`.
    pub fn screenshot(&self, path: &std::path::Path) {
        let png = self.rt.block_on(self.c().screenshot()).expect("screenshot");
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = self.rt.block_on(c.close());
        }
    }
}

/// The terminal ChatClient, piped (the original's output), as the client tests
/// run it. It is the workspace's binary beside the ChatServer this test built
/// (`cargo test --workspace` builds it; alone: `cargo build -p client` first).
pub struct Terminal {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<String>>,
}

impl Terminal {
    /// `ChatClient 127.0.0.1 <port>`.
    pub fn spawn(port: u16) -> Terminal {
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_ChatServer")).with_file_name("ChatClient");
        assert!(
            bin.is_file(),
            "{} is missing: build it with `cargo build -p client` (cargo test --workspace does)",
            bin.display()
        );
        let mut child = Command::new(bin)
            .args(["127.0.0.1", &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ChatClient");
        let out = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stdout.take().unwrap();
        let sink = out.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Terminal {
            stdin: child.stdin.take(),
            child,
            out,
        }
    }

    /// Types a line.
    pub fn line(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(format!("{text}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits until the output contains `needle`; returns the output.
    pub fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = self.out.lock().unwrap().clone();
            if out.contains(needle) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "ChatClient did not print {needle:?}:\n{out}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
