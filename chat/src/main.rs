//! `ChatServer [IP] [PORT] [OPTIONS]`: runs one chat server node until SIGINT or SIGTERM.

use std::process::ExitCode;
use std::time::Duration;

use chat::config::{Config, LogFormat};
use chat::server::ChatServer;
use clap::Parser;
use net::EventLoop;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() -> ExitCode {
    let cfg = Config::parse();
    init_logging(&cfg);
    match run(&cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, in Display form, through the logger (so a JSON log stays JSON).
            log::error!("fatal: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Installs env_logger at `--log-level` (`RUST_LOG` wins), as text or JSON lines.
fn init_logging(cfg: &Config) {
    let mut b = env_logger::Builder::new();
    b.parse_filters(cfg.log_filter()).parse_env("RUST_LOG");
    if cfg.log_format == LogFormat::Json {
        b.format(|out, rec| {
            use std::io::Write;
            let line = serde_json::json!({
                "ts": out.timestamp_millis().to_string(),
                "level": rec.level().as_str(),
                "target": rec.target(),
                "msg": rec.args().to_string(),
            });
            writeln!(out, "{line}")
        });
    }
    b.init();
}

fn run(cfg: &Config) -> Result<(), Box<dyn std::error::Error>> {
    chat::password::set_cost(cfg.argon2_memory_kib, cfg.argon2_passes)?;
    chat::sys::raise_fd_limit();
    chat::sys::tune_allocator();
    chat::sys::spawn_memory_trimmer();
    let store = chat::store::open_with(&cfg.db, cfg.db_pool)?;
    // This node owns every session of a standalone deployment: nobody is online yet.
    if cfg.redis.is_none() {
        store.set_all_offline()?;
    }
    let lp = EventLoop::new()?;
    let addr = cfg.addr()?;
    // Its error names what failed (which listener, or redis).
    let server = ChatServer::new(&lp, addr, store, cfg.server_options()?)?;
    server.start()?;
    log::info!(
        "ChatServer listening on {} (db {})",
        server.local_addr(),
        redact(&cfg.db)
    );
    if let Some(ws) = server.ws_addr() {
        log::info!("web client and WebSocket listening on http://{ws}");
    }
    if let Some(admin) = server.admin_addr() {
        log::info!("admin listening on http://{admin}");
    }

    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let quit = lp.handle();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                log::info!("signal {sig}: shutting down");
                quit.quit();
            }
        })?;
    lp.run();
    server.shutdown(&lp, Duration::from_secs(5));
    log::info!("ChatServer stopped");
    Ok(())
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
