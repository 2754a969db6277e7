use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use net::{EventLoop, TcpServer};

#[test]
fn echo_smoke() {
    let (tx, rx) = mpsc::channel();
    let t = thread::spawn(move || {
        let lp = EventLoop::new().unwrap();
        let server = TcpServer::new(&lp, "127.0.0.1:0".parse().unwrap(), "echo").unwrap();
        server.set_thread_num(2);
        server.set_message_callback(Arc::new(|conn, buf| {
            let data = buf.retrieve_all_as_vec();
            conn.send(&data);
        }));
        server.start().unwrap();
        tx.send((server.local_addr(), lp.handle())).unwrap();
        lp.run();
    });
    let (addr, handle) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"hello").unwrap();
    let mut got = [0u8; 5];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
    handle.quit();
    t.join().unwrap();
}
