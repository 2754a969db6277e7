//! Connector: how the bus makes, and re-makes, its Redis connections — straight to
//! one Redis (`redis://…`), or to the master that Redis Sentinel names
//! (`redis+sentinel://…`), asked again at every connect, so the bus threads follow
//! a failover by themselves: a connection the old master broke is replaced by one
//! to the new master.
//!
//! The rule it keeps: every step has a timeout — the sentinel's answer, the
//! master's `ROLE`, the connection handed out — so a frozen or partitioned Redis
//! or sentinel costs a bus thread [`IO_TIMEOUT`], never its life. (That is why
//! the lookup is done here, after the Sentinel client spec, and not with the
//! redis crate's sync `Sentinel`, which connects to sentinels and checks the
//! master's role without any timeout and under `&mut`: one frozen master hung
//! every bus connection of a node.) And it says, through
//! [`Connector::switches`], when the master changed, because writes the old
//! master acknowledged may not have reached the new one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use redis::{
    Client, Connection, ConnectionAddr, ConnectionInfo, ConnectionLike, ErrorKind,
    IntoConnectionInfo, RedisConnectionInfo, RedisError, RedisResult, Role,
};

use super::{BusError, IO_TIMEOUT};

/// The scheme of a Sentinel URL.
const SENTINEL_SCHEME: &str = "redis+sentinel://";
/// The port of a sentinel given without one (Redis Sentinel's default).
const SENTINEL_PORT: u16 = 26379;

/// Where connections go.
enum Target {
    /// One Redis.
    Plain(Client),
    /// The master named `name`, as the sentinels see it now.
    Sentinel {
        /// The sentinels, asked in turn.
        sentinels: Vec<ConnectionInfo>,
        /// The master's name in the sentinels' configuration.
        name: String,
        /// Database and credentials of the master's connections.
        redis: RedisConnectionInfo,
    },
}

/// Makes the bus's Redis connections. Safe to share between threads.
pub(super) struct Connector {
    target: Target,
    /// The master the last Sentinel connection went to, to notice a switch.
    master: Mutex<Option<String>>,
    /// How often the master changed since the first connection.
    switches: AtomicU64,
}

/// The parts of a Sentinel URL.
#[derive(Debug, PartialEq, Eq)]
struct SentinelUrl {
    /// Sentinel addresses (host, port).
    sentinels: Vec<(String, u16)>,
    /// The master's name.
    name: String,
    /// Database on the master.
    db: i64,
    /// Username and password for the master (not for the sentinels).
    user: Option<String>,
    password: Option<String>,
}

/// Parses `redis+sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]…]/MASTER[/DB]`.
fn parse_sentinel_url(url: &str) -> Result<SentinelUrl, String> {
    let rest = url
        .strip_prefix(SENTINEL_SCHEME)
        .ok_or_else(|| format!("not a {SENTINEL_SCHEME} URL"))?;
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((auth, rest)) => (Some(auth), rest),
        None => (None, rest),
    };
    let (user, password) = match auth.map(|a| a.split_once(':').unwrap_or(("", a))) {
        Some((u, p)) => (
            (!u.is_empty()).then(|| u.to_owned()),
            (!p.is_empty()).then(|| p.to_owned()),
        ),
        None => (None, None),
    };
    let (hosts, path) = rest.split_once('/').ok_or("no master name (…/MASTER)")?;
    let mut sentinels = Vec::new();
    for h in hosts.split(',') {
        let (host, port) = match h.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse()
                    .map_err(|_| format!("bad sentinel port in {h:?}"))?,
            ),
            None => (h, SENTINEL_PORT),
        };
        if host.is_empty() {
            return Err(format!("empty sentinel host in {hosts:?}"));
        }
        sentinels.push((host.to_owned(), port));
    }
    let (name, db) = match path.split_once('/') {
        Some((name, db)) if !db.is_empty() => (
            name,
            db.parse().map_err(|_| format!("bad database {db:?}"))?,
        ),
        Some((name, _)) => (name, 0),
        None => (path, 0),
    };
    if name.is_empty() {
        return Err("no master name (…/MASTER)".into());
    }
    Ok(SentinelUrl {
        sentinels,
        name: name.to_owned(),
        db,
        user,
        password,
    })
}

impl Connector {
    /// A connector for a plain Redis URL or a Sentinel URL. Connects to nothing yet.
    pub(super) fn open(url: &str) -> Result<Connector, BusError> {
        let target = if url.starts_with(SENTINEL_SCHEME) {
            let u = parse_sentinel_url(url).map_err(|e| BusError(format!("{url}: {e}")))?;
            let sentinels = u
                .sentinels
                .into_iter()
                .map(|(host, port)| ConnectionAddr::Tcp(host, port).into_connection_info())
                .collect::<RedisResult<Vec<_>>>()
                .map_err(|e| BusError(e.to_string()))?;
            let mut redis = RedisConnectionInfo::default().set_db(u.db);
            if let Some(user) = u.user {
                redis = redis.set_username(user);
            }
            if let Some(password) = u.password {
                redis = redis.set_password(password);
            }
            Target::Sentinel {
                sentinels,
                name: u.name,
                redis,
            }
        } else {
            Target::Plain(Client::open(url).map_err(|e| BusError(e.to_string()))?)
        };
        Ok(Connector {
            target,
            master: Mutex::new(None),
            switches: AtomicU64::new(0),
        })
    }

    /// A new connection to Redis (through Sentinel: to the master it names now),
    /// with [`IO_TIMEOUT`] on reads and writes. Blocks for network round trips:
    /// never call it on an IO loop. Safe to call from any thread.
    pub(super) fn connect(&self) -> RedisResult<Connection> {
        match &self.target {
            Target::Plain(client) => timed(client),
            Target::Sentinel {
                sentinels,
                name,
                redis,
            } => {
                // The Sentinel client spec: ask the sentinels in turn for the
                // master's address, and use it only if the server there says it is
                // a master (a sentinel may not know of a failover yet).
                let mut last = None;
                for sentinel in sentinels {
                    match master_from(sentinel, name, redis) {
                        Ok((con, addr)) => {
                            self.note_master(addr);
                            return Ok(con);
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| (ErrorKind::InvalidClientConfig, "no sentinel").into()))
            }
        }
    }

    /// Records the master a connection went to; counts a switch when it changed.
    fn note_master(&self, addr: String) {
        let mut master = self.master.lock();
        if let Some(old) = master.as_deref().filter(|old| *old != addr) {
            log::warn!("bus: the Redis master is now {addr} (was {old}): a failover");
            self.switches.fetch_add(1, Ordering::AcqRel);
        }
        *master = Some(addr);
    }

    /// How many times the master changed (always 0 without Sentinel). Safe to call
    /// from any thread.
    pub(super) fn switches(&self) -> u64 {
        self.switches.load(Ordering::Acquire)
    }
}

/// An r2d2 manager for Redis connections with I/O timeouts, made by the connector.
pub(super) struct Manager(pub(super) Arc<Connector>);

/// A pooled connection.
pub(super) struct Pooled {
    pub(super) con: Connection,
    /// It answered READONLY: it points at a master that was demoted to a replica
    /// in a failover, and must be replaced by one to the new master.
    pub(super) demoted: bool,
}

impl r2d2::ManageConnection for Manager {
    type Connection = Pooled;
    type Error = redis::RedisError;

    fn connect(&self) -> RedisResult<Pooled> {
        Ok(Pooled {
            con: self.0.connect()?,
            demoted: false,
        })
    }

    fn is_valid(&self, p: &mut Pooled) -> RedisResult<()> {
        redis::cmd("PING").query(&mut p.con)
    }

    fn has_broken(&self, p: &mut Pooled) -> bool {
        p.demoted || !p.con.is_open()
    }
}

/// A connection to `client`'s server with [`IO_TIMEOUT`] on the connect, reads and writes.
fn timed(client: &Client) -> RedisResult<Connection> {
    let con = client.get_connection_with_timeout(IO_TIMEOUT)?;
    con.set_read_timeout(Some(IO_TIMEOUT))?;
    con.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(con)
}

/// Asks `sentinel` where master `name` is, connects there and checks its `ROLE`.
/// Returns the connection and the master's address.
fn master_from(
    sentinel: &ConnectionInfo,
    name: &str,
    redis: &RedisConnectionInfo,
) -> RedisResult<(Connection, String)> {
    let mut s = timed(&Client::open(sentinel.clone())?)?;
    let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(name)
        .query(&mut s)?;
    let Some((host, port)) = addr else {
        let msg = "the sentinel knows no master of that name";
        return Err(RedisError::from((
            ErrorKind::MasterNameNotFoundBySentinel,
            msg,
        )));
    };
    let info = ConnectionAddr::Tcp(host.clone(), port)
        .into_connection_info()?
        .set_redis_settings(redis.clone());
    let mut con = timed(&Client::open(info)?)?;
    match redis::cmd("ROLE").query(&mut con)? {
        Role::Primary { .. } => Ok((con, format!("{host}:{port}"))),
        _ => {
            let msg = "the server the sentinel names is not a master (yet)";
            Err(RedisError::from((
                ErrorKind::MasterNameNotFoundBySentinel,
                msg,
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls() {
        assert_eq!(
            parse_sentinel_url("redis+sentinel://a:1,b,c:3/chat"),
            Ok(SentinelUrl {
                sentinels: vec![("a".into(), 1), ("b".into(), 26379), ("c".into(), 3)],
                name: "chat".into(),
                db: 0,
                user: None,
                password: None,
            })
        );
        let u = parse_sentinel_url("redis+sentinel://:pw@h:5/m/3").unwrap();
        assert_eq!((u.name.as_str(), u.db), ("m", 3));
        assert_eq!((u.user, u.password.as_deref()), (None, Some("pw")));
        let u = parse_sentinel_url("redis+sentinel://me:pw@h/m/").unwrap();
        assert_eq!((u.user.as_deref(), u.db), (Some("me"), 0));
        for bad in [
            "redis://h/m",
            "redis+sentinel://h:26379",
            "redis+sentinel://h:26379/",
            "redis+sentinel://h:x/m",
            "redis+sentinel://,h/m",
            "redis+sentinel://h/m/x",
        ] {
            assert!(parse_sentinel_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plain_and_sentinel_urls_open() {
        assert!(Connector::open("redis://127.0.0.1:1").is_ok());
        assert!(Connector::open("redis+sentinel://127.0.0.1:1,127.0.0.1:2/m").is_ok());
        assert!(Connector::open("redis+sentinel://127.0.0.1:1").is_err());
        assert!(Connector::open("nope://x").is_err());
    }
}
