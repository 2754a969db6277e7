//! ChatClient `--tls` through a real nginx terminating TLS in front of the server, with the
//! deploy/ configs and certificates from a CA made here; a certificate from another CA is
//! refused, and the plaintext port stays.

mod util;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use util::{login, Client, TestServer, TIMEOUT};

/// A CA: its certificate (PEM) and the issuer that signs server certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `localhost` and 127.0.0.1: (certificate PEM, key PEM).
    fn server_cert(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A free port on 127.0.0.1 (closed again: nginx binds it next).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private nginx (its own prefix in a temp folder) with the deploy/ configs: the plain
/// port and the TLS port in front of `upstream`. Stopped and removed on drop.
struct Nginx {
    dir: PathBuf,
    plain: u16,
    tls: u16,
}

impl Nginx {
    fn start(upstream: u16, cert: &str, key: &str) -> Nginx {
        let dir =
            std::env::temp_dir().join(format!("chatclient-tls-{}-{upstream}", std::process::id()));
        std::fs::create_dir_all(dir.join("stream.d")).unwrap();
        std::fs::write(dir.join("cert.pem"), cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        let (plain, tls) = (free_port(), free_port());
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let prefix = dir.display().to_string();
        let main = std::fs::read_to_string(deploy.join("nginx-stream.conf.in"))
            .unwrap()
            .replace("@PREFIX@", &prefix)
            .replace("@LISTEN@", &format!("127.0.0.1:{plain}"))
            .replace(
                "@UPSTREAMS@",
                &format!("        server 127.0.0.1:{upstream};"),
            );
        std::fs::write(dir.join("nginx.conf"), main).unwrap();
        let tls_conf = std::fs::read_to_string(deploy.join("nginx-stream-tls.conf.in"))
            .unwrap()
            .replace("@PREFIX@", &prefix)
            .replace("@TLS_LISTEN@", &format!("127.0.0.1:{tls}"))
            .replace("@CERT@", &format!("{prefix}/cert.pem"))
            .replace("@KEY@", &format!("{prefix}/key.pem"));
        std::fs::write(dir.join("stream.d/tls.conf"), tls_conf).unwrap();
        let out = Command::new("nginx")
            .args(["-p", &prefix, "-c", &format!("{prefix}/nginx.conf")])
            .args(["-e", &format!("{prefix}/nginx-error.log")])
            .output()
            .expect("nginx is installed (scripts/ensure-services.sh)");
        let nginx = Nginx { dir, plain, tls };
        assert!(
            out.status.success(),
            "nginx did not start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            nginx.error_log()
        );
        let deadline = Instant::now() + TIMEOUT;
        while TcpStream::connect(("127.0.0.1", tls)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx TLS port not up: {}",
                nginx.error_log()
            );
            thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nginx-error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("nginx.pid")) {
            let _ = Command::new("kill").args(["-TERM", pid.trim()]).status();
            // nginx removes its pid file once it has stopped.
            let deadline = Instant::now() + TIMEOUT;
            while self.dir.join("nginx.pid").exists() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn chats_through_nginx_tls_and_refuses_a_wrong_ca() {
    let server = TestServer::start();
    let alice = server.register("alice");
    let bob = server.register("bob");
    let ca = Ca::new("chat test CA");
    let (cert, key) = ca.server_cert();
    let nginx = Nginx::start(server.addr().port(), &cert, &key);
    let dir = nginx.dir.clone();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("other-ca.pem"), Ca::new("another CA").pem()).unwrap();
    let ca_file = dir.join("ca.pem").display().to_string();
    let tls_port = nginx.tls.to_string();

    // Both ways through TLS: alice (TLS) and bob (plain, through nginx's plain port).
    let mut a = Client::spawn_args(
        &["--tls", "--ca-file", &ca_file, "127.0.0.1", &tls_port],
        &[],
    );
    a.send(&login(alice));
    a.wait_for("show command list >>>");
    let mut b = Client::spawn_args(&["127.0.0.1", &nginx.plain.to_string()], &[]);
    b.send(&format!("{}chat:{alice}:over plain\n", login(bob)));
    a.wait_for(&format!("[{bob}]bob said: over plain\n"));
    a.send(&format!("chat:{bob}:over tls\n"));
    b.wait_for(&format!("[{alice}]alice said: over tls\n"));
    // The host name works too (the certificate names localhost).
    let mut h = Client::spawn_args(
        &["--tls", "--ca-file", &ca_file, "localhost", &tls_port],
        &[],
    );
    h.send("3\n");
    assert!(h.wait_exit().success(), "{}", h.stderr());
    a.close_stdin();
    assert!(a.wait_exit().success(), "{}", a.stderr());
    assert_eq!(a.stderr(), "");
    b.close_stdin();
    assert!(b.wait_exit().success());

    // A server certificate from a CA the client was not given: refused, nothing sent.
    let other = dir.join("other-ca.pem").display().to_string();
    let mut w = Client::spawn_args(&["--tls", "--ca-file", &other, "127.0.0.1", &tls_port], &[]);
    assert_eq!(w.wait_exit().code(), Some(1));
    let err = w.stderr();
    assert!(
        err.starts_with(&format!("cannot connect to 127.0.0.1:{tls_port}: TLS handshake failed: invalid peer certificate")),
        "{err}"
    );
    assert_eq!(w.stdout(), "");
}
