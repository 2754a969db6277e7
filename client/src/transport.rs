//! Transport: the connection to the server, plain TCP or TLS (rustls), split into a read
//! half for the reader thread and a write half for everyone else.
//!
//! rustls keeps one state machine per connection, so the two halves share it behind a
//! mutex and each does its own socket IO: the reader blocks on the socket *without* the
//! lock, then feeds what it read to rustls under the lock; the writer encrypts and writes
//! under the lock. So a reader waiting for the server never blocks a writer.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// How long one connection attempt (TCP, then the TLS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a blocked write may take before the server counts as gone.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to connect, and how; connects again on demand.
#[derive(Clone)]
pub struct Connector {
    /// A host name or an address.
    host: String,
    /// The server's port.
    port: u16,
    /// TLS settings (the trusted CA), or `None` for plain TCP.
    tls: Option<Arc<ClientConfig>>,
}

impl Connector {
    /// A plain TCP connector.
    pub fn plain(host: &str, port: u16) -> Connector {
        Connector {
            host: host.to_owned(),
            port,
            tls: None,
        }
    }

    /// A TLS connector that trusts only the certificates in the PEM file `ca_file`.
    pub fn tls(host: &str, port: u16, ca_file: &Path) -> io::Result<Connector> {
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| io::Error::other(format!("{}: {e}", ca_file.display())))?;
        for cert in certs {
            let cert = cert.map_err(|e| io::Error::other(format!("{}: {e}", ca_file.display())))?;
            roots
                .add(cert)
                .map_err(|e| io::Error::other(format!("{}: {e}", ca_file.display())))?;
        }
        if roots.is_empty() {
            let msg = format!("{}: no certificate in the file", ca_file.display());
            return Err(io::Error::other(msg));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Connector {
            host: host.to_owned(),
            port,
            tls: Some(Arc::new(config)),
        })
    }

    /// Connects (and, with TLS, completes the handshake, verifying the server's
    /// certificate against the CA and the host name).
    pub fn connect(&self) -> io::Result<(ReadHalf, WriteHalf)> {
        let sock = self.connect_tcp()?;
        // Small frames go out at once: the original server wants one frame per read.
        sock.set_nodelay(true)?;
        sock.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let tls = match &self.tls {
            None => None,
            Some(config) => Some(Arc::new(Mutex::new(self.handshake(config, &sock)?))),
        };
        let read = ReadHalf {
            sock: sock.try_clone()?,
            tls: tls.clone(),
            plain: VecDeque::new(),
            buf: vec![0; 64 * 1024],
        };
        Ok((read, WriteHalf { sock, tls }))
    }

    /// Resolves the host and connects to the first address that answers.
    fn connect_tcp(&self) -> io::Result<TcpStream> {
        let mut last = None;
        for addr in (self.host.as_str(), self.port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("the host name has no address")))
    }

    fn handshake(
        &self,
        config: &Arc<ClientConfig>,
        sock: &TcpStream,
    ) -> io::Result<ClientConnection> {
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| io::Error::other(format!("TLS: bad server name {}: {e}", self.host)))?;
        let mut conn = ClientConnection::new(config.clone(), name)
            .map_err(|e| io::Error::other(format!("TLS: {e}")))?;
        sock.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        let mut s = sock;
        while conn.is_handshaking() {
            conn.complete_io(&mut s).map_err(|e| {
                let what = e.get_ref().map_or(e.to_string(), ToString::to_string);
                io::Error::new(e.kind(), format!("TLS handshake failed: {what}"))
            })?;
        }
        sock.set_read_timeout(None)?;
        Ok(conn)
    }
}

fn lock(tls: &Mutex<ClientConnection>) -> MutexGuard<'_, ClientConnection> {
    tls.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The write half. One [`WriteHalf::write_frame`] is one frame, whole.
pub struct WriteHalf {
    sock: TcpStream,
    tls: Option<Arc<Mutex<ClientConnection>>>,
}

impl WriteHalf {
    /// Writes `bytes` (encrypted with TLS) and flushes them to the socket.
    pub fn write_frame(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(tls) = &self.tls else {
            return self.sock.write_all(bytes);
        };
        let mut conn = lock(tls);
        conn.writer().write_all(bytes)?;
        while conn.wants_write() {
            conn.write_tls(&mut self.sock)?;
        }
        Ok(())
    }

    /// Ends our side: TLS close_notify, then FIN after anything already written.
    pub fn shutdown(&mut self) {
        if let Some(tls) = &self.tls {
            let mut conn = lock(tls);
            conn.send_close_notify();
            while conn.wants_write() {
                if conn.write_tls(&mut self.sock).is_err() {
                    break;
                }
            }
        }
        let _ = self.sock.shutdown(Shutdown::Write);
    }
}

/// The read half: `Read` gives the server's plaintext bytes; `Ok(0)` when it closed.
pub struct ReadHalf {
    sock: TcpStream,
    tls: Option<Arc<Mutex<ClientConnection>>>,
    /// Decrypted bytes not yet returned (rustls's own plaintext buffer is bounded, so
    /// it is emptied after every record batch).
    plain: VecDeque<u8>,
    /// Ciphertext read from the socket.
    buf: Vec<u8>,
}

impl Read for ReadHalf {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.clone() else {
            return self.sock.read(out);
        };
        loop {
            if !self.plain.is_empty() {
                return self.plain.read(out);
            }
            // Blocks without the lock, so writers go on meanwhile.
            let n = self.sock.read(&mut self.buf)?;
            let mut conn = lock(&tls);
            if n == 0 {
                // The server closed the TCP connection (with or without close_notify).
                return Ok(0);
            }
            let mut rd = &self.buf[..n];
            while !rd.is_empty() {
                conn.read_tls(&mut rd)?;
                let state = conn.process_new_packets().map_err(|e| {
                    // Tell the server why, best effort.
                    let _ = conn.write_tls(&mut self.sock);
                    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
                })?;
                let mut chunk = vec![0; state.plaintext_bytes_to_read()];
                conn.reader().read_exact(&mut chunk)?;
                self.plain.extend(chunk);
                if state.peer_has_closed() && self.plain.is_empty() {
                    return Ok(0);
                }
            }
            // Answers rustls owes the server (e.g. key updates).
            while conn.wants_write() {
                conn.write_tls(&mut self.sock)?;
            }
        }
    }
}
