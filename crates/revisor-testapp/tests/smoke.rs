//! The test upstream answers with its revision name and honours its failure knobs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

struct Upstream(Child);

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(env: &[(&str, &str)]) -> (Upstream, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_revisor-test-upstream"))
        .env("PORT", port.to_string())
        .env("K_REVISION", "svc-00001")
        .envs(env.iter().copied())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "upstream did not listen");
        std::thread::sleep(Duration::from_millis(10));
    }
    (Upstream(child), port)
}

fn get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // One write: `write!` on a bare socket sends each piece of the format string as its own
    // segment, and a server that closes after answering may reset a connection whose request
    // it read in pieces.
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // A reset after the whole answer arrived is the server closing, not a lost answer:
            // the assertions on the text decide whether the answer is whole.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !out.is_empty() => break,
            Err(e) => panic!("reading the answer to {path}: {e}"),
        }
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn answers_with_its_revision_and_pads_bodies() {
    let (_u, port) = start(&[("RESPONSE_BYTES", "1024")]);
    let resp = get(port, "/");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("content-length: 1024"), "{resp}");
    assert!(resp.contains("\r\n\r\nsvc-00001\n"), "{resp}");
}

#[test]
fn fails_the_share_it_is_told_to() {
    let (_u, port) = start(&[("FAIL_PERCENT", "100")]);
    assert!(get(port, "/").starts_with("HTTP/1.1 500"));
    assert!(
        get(port, "/healthz").starts_with("HTTP/1.1 200"),
        "health checks never fail"
    );
}
