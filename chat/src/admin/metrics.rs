//! `/metrics`: every figure the lower floors expose, read at scrape time and
//! written in the Prometheus (OpenMetrics) text format by prometheus-client.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::Sources;

/// How long a scrape waits for the offline backlog.
const BACKLOG_WAIT: Duration = Duration::from_secs(2);

/// Reads the offline backlog (a `COUNT` over the store) for a scrape on a thread of
/// its own, and waits for it at most [`BACKLOG_WAIT`]: on a database that hangs
/// (rather than refuses) the read held the scrape for the store's I/O timeout, 30 s,
/// past any scraper's patience, and with it every other figure, the ones an outage
/// needs (`chat_history_unkept_total` among them). One read at a time: while one
/// hangs, scrapes go without the figure and start no other.
#[derive(Debug, Default)]
pub struct BacklogProbe {
    /// A read is under way.
    running: Arc<AtomicBool>,
}

impl BacklogProbe {
    /// The value `read` gives within [`BACKLOG_WAIT`], if it gives one.
    fn read<E: Send + 'static>(
        &self,
        read: impl FnOnce() -> Result<u64, E> + Send + 'static,
    ) -> Option<u64> {
        if self.running.swap(true, Ordering::AcqRel) {
            return None;
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let running = self.running.clone();
        let spawned = thread::Builder::new()
            .name("metrics-backlog".into())
            .spawn(move || {
                let n = read();
                running.store(false, Ordering::Release);
                let _ = tx.send(n);
            });
        if spawned.is_err() {
            self.running.store(false, Ordering::Release);
            return None;
        }
        rx.recv_timeout(BACKLOG_WAIT).ok()?.ok()
    }
}

/// Reads the sources on each scrape.
#[derive(Debug)]
struct ChatCollector(Sources);

/// A labelled family: (label values, value) under one name.
type Family = Vec<(Vec<(&'static str, String)>, u64)>;

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge_i(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn gauge_f(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counters(e: &mut DescriptorEncoder, name: &str, help: &str, family: &Family) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in family {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn by(label: &'static str, items: &[(i64, u64)]) -> Family {
    items
        .iter()
        .map(|(k, v)| {
            let k = if *k < 0 {
                "other".into()
            } else {
                k.to_string()
            };
            (vec![(label, k)], *v)
        })
        .collect()
}

fn one(label: &'static str, items: &[(&str, u64)]) -> Family {
    items
        .iter()
        .map(|(k, v)| (vec![(label, (*k).to_owned())], *v))
        .collect()
}

impl Collector for ChatCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let src = &self.0;
        let s = src.service.stats().snapshot();
        let conns = src.connections.load(Ordering::Relaxed) as i64;
        gauge_i(
            &mut e,
            "chat_connections",
            "Open client connections.",
            conns,
        )?;
        if let Some(ws) = &src.ws_connections {
            gauge_i(
                &mut e,
                "chat_websocket_connections",
                "Open connections of the WebSocket listener (page loads included).",
                ws.load(Ordering::Relaxed) as i64,
            )?;
        }
        let users = src.service.hub().count() as i64;
        gauge_i(
            &mut e,
            "chat_users_online",
            "Users logged in on this node.",
            users,
        )?;
        let logins = [
            ("ok", s.logins_ok),
            ("failed", s.logins_failed),
            ("throttled", s.logins_throttled),
        ];
        counters(
            &mut e,
            "chat_logins",
            "Logins by result.",
            &one("result", &logins),
        )?;
        counters(
            &mut e,
            "chat_logouts",
            "Logged-in sessions that ended.",
            &one("how", &[("any", s.logouts)]),
        )?;
        counter(
            &mut e,
            "chat_password_hashes",
            "Password hashes computed or verified (logins, registrations; never a resume).",
            crate::password::hashes(),
        )?;
        counter(
            &mut e,
            "chat_kicks",
            "Users disconnected by an operator.",
            s.kicks,
        )?;
        counters(
            &mut e,
            "chat_frames_in",
            "Request frames received, by msgid.",
            &by("msgid", &s.frames_in),
        )?;
        counters(
            &mut e,
            "chat_frames_out",
            "Frames sent, by msgid.",
            &by("msgid", &s.frames_out),
        )?;
        counters(
            &mut e,
            "chat_protocol_errors",
            "Protocol errors answered, by errno.",
            &by("errno", &s.protocol_errors),
        )?;
        let chats = [
            ("local", s.chats_local),
            ("remote", s.chats_remote),
            ("stored", s.chats_stored),
        ];
        counters(
            &mut e,
            "chat_chats",
            "Chat frames delivered here, handed to another node, or stored.",
            &one("outcome", &chats),
        )?;
        counter(
            &mut e,
            "chat_history_unkept",
            "Chat messages delivered but not kept in history: the history writer's queue \
             was full (the database down or slower than the chat), or the text longer than \
             the database keeps.",
            src.service.history().unkept(),
        )?;
        counter(
            &mut e,
            "chat_bytes_in",
            "Bytes read from clients.",
            s.bytes_in,
        )?;
        counter(
            &mut e,
            "chat_bytes_out",
            "Bytes queued to clients.",
            s.bytes_out,
        )?;
        let depth = src.queue.queue_len() as i64;
        gauge_i(
            &mut e,
            "chat_worker_queue_depth",
            "Sessions waiting for a worker.",
            depth,
        )?;
        let store = src.service.store();
        let (checkouts, waited) = store.pool_wait().get();
        counter(
            &mut e,
            "chat_db_pool_checkouts",
            "Database connections taken from the pool.",
            checkouts,
        )?;
        let g = prometheus_client::metrics::counter::ConstCounter::new(waited);
        g.encode(e.encode_descriptor(
            "chat_db_pool_wait_seconds",
            "Time spent waiting for a pooled database connection.",
            None,
            MetricType::Counter,
        )?)?;
        // A query that may hang with the database: read within a bound, omitted
        // while the database fails or does not answer.
        let reader = store.clone();
        if let Some(n) = src.backlog.read(move || reader.offline_backlog()) {
            gauge_i(
                &mut e,
                "chat_offline_backlog",
                "Offline messages waiting in the store.",
                n as i64,
            )?;
        }
        if let Some(bus) = src.service.bus() {
            gauge_f(
                &mut e,
                "chat_redis_rtt_seconds",
                "Redis round trip of the last heartbeat.",
                bus.redis_rtt().as_secs_f64(),
            )?;
            gauge_f(
                &mut e,
                "chat_stream_lag_seconds",
                "Age of the oldest entry of the last batch read from this node's stream.",
                bus.stream_lag().as_secs_f64(),
            )?;
            let (calls, frames) = bus.route_counts();
            counter(
                &mut e,
                "chat_bus_route_calls",
                "Route calls to Redis (one round trip each, carrying a batch of frames).",
                calls,
            )?;
            counter(
                &mut e,
                "chat_bus_routed_frames",
                "Frames the route calls carried.",
                frames,
            )?;
            let age = bus.heartbeat_age().map_or(-1.0, |a| a.as_secs_f64());
            gauge_f(
                &mut e,
                "chat_heartbeat_age_seconds",
                "Time since the last successful heartbeat (-1: none yet).",
                age,
            )?;
        }
        Ok(())
    }
}

/// The text of one scrape.
pub(super) fn render(src: &Sources) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ChatCollector(src.clone())));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        log::warn!("admin: metrics not encoded: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// A read that hangs costs a scrape at most BACKLOG_WAIT and the next ones
    /// nothing (no second read starts while it hangs); once it ended, a read gives
    /// its value again. (Seen failing with the read made on the scrape's thread:
    /// the first scrape waited the read's 4 s and gave its 1.)
    #[test]
    fn a_backlog_read_that_hangs_costs_a_scrape_at_most_the_wait() {
        let probe = BacklogProbe::default();
        let t = Instant::now();
        let hung = probe.read(|| {
            thread::sleep(BACKLOG_WAIT * 2);
            Ok::<u64, ()>(1)
        });
        assert_eq!(hung, None);
        assert!(
            t.elapsed() < BACKLOG_WAIT + BACKLOG_WAIT / 2,
            "{:?}",
            t.elapsed()
        );
        let t = Instant::now();
        assert_eq!(
            probe.read(|| Ok::<u64, ()>(2)),
            None,
            "a second read while one hangs"
        );
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        while probe.running.load(Ordering::Acquire) {
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(probe.read(|| Ok::<u64, ()>(3)), Some(3));
        assert_eq!(probe.read(|| Err::<u64, ()>(())), None, "a failed read");
    }
}
