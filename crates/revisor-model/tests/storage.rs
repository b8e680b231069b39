//! Model downloads over HTTP on loopback: cached by sha256, not downloaded again, verified.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use revisor_model::examples::{model_bytes, Example};
use revisor_model::Model;
use sha2::{Digest, Sha256};

/// A one-file HTTP server on loopback that counts its downloads; other paths get 404.
fn serve(body: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/models/v1.onnx", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            if head.starts_with("GET /models/v1.onnx ") {
                c.fetch_add(1, Ordering::SeqCst);
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(&body);
            } else {
                let _ = write!(
                    s,
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        }
    });
    (url, count)
}

#[test]
fn downloads_are_verified_cached_and_not_repeated() {
    let bytes = model_bytes(Example::V1);
    let sha: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    let (url, downloads) = serve(bytes);
    let cache = tempfile::tempdir().unwrap();
    let m = Model::load_from(&url, Some(&sha), cache.path(), "tabular", "1").unwrap();
    assert_eq!(m.inputs[0].name, "features");
    Model::load_from(&url, Some(&sha), cache.path(), "tabular", "1").unwrap();
    assert_eq!(
        downloads.load(Ordering::SeqCst),
        1,
        "the second load uses the cached copy"
    );

    let wrong = "0".repeat(64);
    let e = Model::load_from(&url, Some(&wrong), cache.path(), "tabular", "1")
        .err()
        .unwrap()
        .to_string();
    assert!(e.starts_with(&format!("model {url}: sha256 mismatch")), "{e}");
    let missing = url.replace("v1.onnx", "nope.onnx");
    let e = Model::load_from(&missing, None, cache.path(), "tabular", "1")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("the server answered 404"), "{e}");
    let e = Model::load_from(&url, Some("xyz"), cache.path(), "tabular", "1")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("is not 64 hexadecimal digits"), "{e}");
}
