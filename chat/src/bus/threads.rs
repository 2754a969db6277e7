//! The bus's threads: the subscriber (broadcast invalidations), the stream
//! reader (see `stream`), the heartbeat, the keeper (acts on the heartbeats:
//! re-claims, flushes, retries, sweeps) and the background drains it starts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use serde_json::Value;

use super::{Bus, BusHandler, BusMessage, SWEEP_EVERY};

/// What one heartbeat found.
enum Beat {
    /// Redis answered; `existed` is false if this node's key had been lost.
    Ok { existed: bool },
    /// Redis did not answer.
    Failed,
}

impl Bus {
    /// Starts the subscriber, stream reader and keeper threads (the keeper starts
    /// the heartbeat thread).
    pub fn spawn(self: &Arc<Self>, handler: Arc<dyn BusHandler>) -> std::io::Result<BusThreads> {
        type Body = fn(&Arc<Bus>, Arc<dyn BusHandler>);
        let bodies: [(&str, Body); 3] = [
            ("bus-subscriber", |bus, h| bus.subscriber(&*h)),
            ("bus-reader", |bus, h| bus.reader(&*h)),
            ("bus-keeper", |bus, h| bus.keeper(h)),
        ];
        let mut threads = Vec::with_capacity(bodies.len());
        for (name, body) in bodies {
            let (bus, handler) = (self.clone(), handler.clone());
            threads.push(
                thread::Builder::new()
                    .name(name.into())
                    .spawn(move || body(&bus, handler))?,
            );
        }
        Ok(BusThreads {
            stop: self.stop.clone(),
            threads,
        })
    }

    /// Runs one connection's `life` again and again until the bus stops, with a
    /// backoff that restarts whenever a life got going (its error says so).
    pub(super) fn reconnecting(
        &self,
        who: &str,
        mut life: impl FnMut() -> Result<(), (redis::RedisError, bool)>,
    ) {
        const FIRST_RETRY: Duration = Duration::from_millis(100);
        let mut backoff = FIRST_RETRY;
        while !self.stop.load(Ordering::Acquire) {
            match life() {
                Ok(()) => return,
                Err((e, got_going)) => {
                    if got_going {
                        backoff = FIRST_RETRY;
                    }
                    log::warn!("bus {who}: {e}; reconnecting in {backoff:?}");
                    sleep_unless(&self.stop, backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// The dedicated subscriber: (re)connects, subscribes to the broadcast channel
    /// (group cache invalidations), and hands every message to the handler.
    fn subscriber(&self, handler: &dyn BusHandler) {
        let mut subscribed_before = false;
        self.reconnecting("subscriber", || {
            self.subscribe_loop(handler, &mut subscribed_before)
        });
    }

    /// One subscription's life. The error says whether it got as far as subscribing.
    fn subscribe_loop(
        &self,
        handler: &dyn BusHandler,
        subscribed_before: &mut bool,
    ) -> Result<(), (redis::RedisError, bool)> {
        // With timeouts: a Redis that accepts but never answers must not hold this
        // thread (and the node's shutdown) forever before SUBSCRIBE.
        let master = self.connector.switches();
        let mut con = self.connector.connect().map_err(|e| (e, false))?;
        // Not `PubSub::subscribe`, which drops Redis's answer: a refused SUBSCRIBE
        // (an ACL user without this channel) passed for a subscription that hears
        // nothing, and was never tried again.
        redis::cmd("SUBSCRIBE")
            .arg(&self.keys.channel_all)
            .exec(&mut con)
            .map_err(|e| (e, false))?;
        let mut ps = con.as_pubsub();
        ps.set_read_timeout(Some(Duration::from_millis(250)))
            .map_err(|e| (e, false))?;
        log::info!("bus: subscribed as node {}", self.cfg.node_id);
        if std::mem::replace(subscribed_before, true) {
            // Frames published while we were away reached no subscriber and were
            // stored; deliver them now.
            handler.on_bus_restored();
        }
        loop {
            if self.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            if self.connector.switches() != master {
                // Subscribed to a master that was demoted (a manual failover keeps
                // it running): subscribe again on the new one.
                let e = (redis::ErrorKind::Io, "the Redis master changed");
                return Err((e.into(), true));
            }
            match ps.get_message() {
                Ok(msg) => match parse_message(msg.get_payload_bytes()) {
                    Some(m) => {
                        // Invalidations need no store: nothing to retry.
                        let _ = handler.on_message(m);
                    }
                    None => log::warn!("bus: unreadable message on {}", msg.get_channel_name()),
                },
                Err(e) if e.is_timeout() => {}
                Err(e) => return Err((e, true)),
            }
        }
    }

    /// The heartbeat: refreshes this node's liveness key every quarter of the TTL
    /// and tells the keeper how it went. A thread of its own, so that nothing the
    /// keeper does (re-claiming thousands of users, flushing stores) can delay it
    /// past the TTL and make the node look dead.
    fn heartbeater(&self, beats: Sender<Beat>) {
        let interval = self.cfg.node_ttl / 4;
        while !self.stop.load(Ordering::Acquire) {
            let beat = match self.heartbeat() {
                Ok(existed) => Beat::Ok { existed },
                Err(e) => {
                    log::debug!("bus heartbeat: {e}");
                    Beat::Failed
                }
            };
            if beats.send(beat).is_err() {
                return;
            }
            sleep_unless(&self.stop, interval);
        }
    }

    /// The keeper: acts on the heartbeats — re-claims local users when Redis forgot
    /// this node, flushes stores after an outage, retries failed releases and
    /// checks — and sweeps dead nodes now and then.
    fn keeper(self: &Arc<Self>, handler: Arc<dyn BusHandler>) {
        let (tx, beats) = crossbeam_channel::unbounded();
        let heart = {
            let bus = self.clone();
            thread::Builder::new()
                .name("bus-heartbeat".into())
                .spawn(move || bus.heartbeater(tx))
        };
        let heart = match heart {
            Ok(h) => h,
            Err(e) => {
                log::error!("bus: no heartbeat thread: {e}");
                return;
            }
        };
        let mut tick: u32 = 0;
        let mut resync = false;
        // A failover happened: forget this node's presence entries before the re-claim.
        let mut forget = false;
        let mut was_down = false;
        let mut switches = self.connector.switches();
        while !self.stop.load(Ordering::Acquire) {
            let beat = beats.recv_timeout(Duration::from_millis(100));
            let now = self.connector.switches();
            let first = match beat {
                Ok(first) => first,
                // A connection just reached a new master (or the forget after one
                // failed): act now, not at the next heartbeat — until the re-claim,
                // another node could log in a user whose claim the failover lost.
                Err(_) if now != switches || forget => Beat::Ok { existed: true },
                Err(_) => continue,
            };
            if std::mem::replace(&mut switches, now) != now {
                // The new master may lack claims and releases the old one
                // acknowledged: forget what it says is here, claim the local users.
                log::warn!("bus: Redis failed over; re-claiming local users");
                forget = true;
                resync = true;
            }
            // Beats that queued up while the keeper was busy count as one.
            let mut ok = None;
            for beat in std::iter::once(first).chain(beats.try_iter()) {
                match beat {
                    Beat::Ok { existed } => {
                        if !existed {
                            log::warn!("bus: node presence was lost; re-claiming local users");
                            resync = true;
                        }
                        ok = Some(true);
                    }
                    Beat::Failed => {
                        was_down = true;
                        ok = Some(false);
                    }
                }
            }
            if ok == Some(true) {
                if std::mem::take(&mut was_down) && !resync {
                    log::info!("bus: Redis is back");
                    handler.on_bus_restored();
                }
                handler.on_heartbeat();
            }
            if forget {
                forget = self.forget_own().is_err();
            }
            if resync && !forget {
                resync = !handler.on_presence_lost();
                if !resync {
                    handler.on_bus_restored();
                }
            }
            if tick.is_multiple_of(SWEEP_EVERY) {
                match self.sweep() {
                    Ok((n, undrained)) => {
                        if n > 0 {
                            log::info!("bus: swept {n} dead node(s)");
                        }
                        for node in undrained {
                            self.drain_in_background(&handler, node);
                        }
                    }
                    Err(e) => log::debug!("bus sweep: {e}"),
                }
            }
            tick = tick.wrapping_add(1);
        }
        let _ = heart.join();
    }
}

impl Bus {
    /// Starts a thread that has `handler` drain dead `node`, unless one is at it.
    fn drain_in_background(self: &Arc<Self>, handler: &Arc<dyn BusHandler>, node: String) {
        if !self.draining.lock().insert(node.clone()) {
            return;
        }
        let (bus, handler) = (self.clone(), handler.clone());
        let node_name = node.clone();
        let spawned = thread::Builder::new()
            .name("bus-drain".into())
            .spawn(move || {
                handler.on_dead_node(&node);
                bus.draining.lock().remove(&node);
            });
        if let Err(e) = spawned {
            log::warn!("bus: no thread for a drain: {e}");
            self.draining.lock().remove(&node_name);
        }
    }
}

/// The bus threads; `stop` ends and joins them.
pub struct BusThreads {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl BusThreads {
    /// Stops the threads and waits for them.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for BusThreads {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

pub(super) fn sleep_unless(stop: &AtomicBool, total: Duration) {
    let deadline = Instant::now() + total;
    while !stop.load(Ordering::Acquire) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Decodes a broadcast payload: `{"t":"inv","g":N}` or `{"t":"note","to":[N,…],"f":TEXT}`.
pub fn parse_message(payload: &[u8]) -> Option<BusMessage> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    match v.get("t")?.as_str()? {
        "inv" => Some(BusMessage::Invalidate {
            group: v.get("g")?.as_i64()?,
        }),
        "note" => Some(BusMessage::Notice {
            to: v
                .get("to")?
                .as_array()?
                .iter()
                .map(Value::as_i64)
                .collect::<Option<Vec<i64>>>()?,
            frame: v.get("f")?.as_str()?.to_owned(),
        }),
        "kick" => Some(BusMessage::Kick {
            user: v.get("u")?.as_i64()?,
            node: v.get("n")?.as_str()?.to_owned(),
            replaced: v.get("r").and_then(Value::as_i64) == Some(1),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_payloads() {
        assert_eq!(
            parse_message(br#"{"t":"inv","g":3}"#),
            Some(BusMessage::Invalidate { group: 3 })
        );
        assert_eq!(
            parse_message(br#"{"t":"note","to":[7,8],"f":"{}"}"#),
            Some(BusMessage::Notice {
                to: vec![7, 8],
                frame: "{}".into()
            })
        );
        assert_eq!(parse_message(br#"{"t":"note","to":[7]}"#), None);
        assert_eq!(parse_message(br#"{"t":"flush","to":[7]}"#), None);
        assert_eq!(parse_message(b"nope"), None);
        assert_eq!(
            parse_message(br#"{"t":"kick","u":7,"n":"n1"}"#),
            Some(BusMessage::Kick {
                user: 7,
                node: "n1".into(),
                replaced: false,
            })
        );
        assert_eq!(
            parse_message(br#"{"t":"kick","u":7,"n":"n1","r":1}"#),
            Some(BusMessage::Kick {
                user: 7,
                node: "n1".into(),
                replaced: true,
            })
        );
        assert_eq!(parse_message(br#"{"t":"x"}"#), None);
    }
}
