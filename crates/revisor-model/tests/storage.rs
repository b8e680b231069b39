//! Model downloads over HTTP on loopback: cached by sha256, not downloaded again, verified, limited in
//! size, streamed to disk, and never left half-written in the cache.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use revisor_model::examples::{model_bytes, Example};
use revisor_model::storage::{fetch, DEFAULT_MAX_MODEL_BYTES};
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

/// An HTTP server on loopback answering every request with `respond`; returns a URL on it.
fn serve_with(respond: impl Fn(&mut TcpStream) + Send + 'static) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/models/m.onnx", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            respond(&mut s);
        }
    });
    url
}

/// `n` bytes of a fixed pattern, written in pieces (the server never holds them all).
fn write_pattern(s: &mut TcpStream, n: usize) -> std::io::Result<()> {
    let piece: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    let mut left = n;
    while left > 0 {
        let k = left.min(piece.len());
        s.write_all(&piece[..k])?;
        left -= k;
    }
    Ok(())
}

fn pattern_sha256(n: usize) -> String {
    let piece: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    let mut h = Sha256::new();
    let mut left = n;
    while left > 0 {
        let k = left.min(piece.len());
        h.update(&piece[..k]);
        left -= k;
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What the cache directory holds, temporary files included.
fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_download_announced_larger_than_the_limit_is_refused_before_its_body_is_read() {
    // Announces 10 GB and sends 100 bytes: had the body been read, it would fail on its early end.
    let url = serve_with(|s| {
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\nConnection: close\r\n\r\n"
        );
        let _ = write_pattern(s, 100);
    });
    let cache = tempfile::tempdir().unwrap();
    let e = fetch(&url, None, cache.path(), 1000).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "model {url}: the server announces 10000000000 bytes, more than the limit of 1000 bytes \
             (--max-model-bytes)"
        )
    );
    assert_eq!(entries(cache.path()), Vec::<String>::new());
}

#[test]
fn a_download_that_grows_past_the_limit_stops_there_and_leaves_nothing() {
    // No Content-Length: the body ends when the connection closes.
    let url = serve_with(|s| {
        let _ = write!(s, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        let _ = write_pattern(s, 1 << 20);
    });
    let cache = tempfile::tempdir().unwrap();
    for sha in [None, Some(pattern_sha256(1 << 20))] {
        let e = fetch(&url, sha.as_deref(), cache.path(), 100_000)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!("model {url}: the download is larger than the limit of 100000 bytes (--max-model-bytes)")
        );
        assert_eq!(entries(cache.path()), Vec::<String>::new(), "after {e}");
    }
    // At the limit exactly, it is whole, verified and kept under its hash.
    let sha = pattern_sha256(1 << 20);
    let path = fetch(&url, Some(&sha), cache.path(), 1 << 20).unwrap();
    assert_eq!(entries(cache.path()), vec![format!("sha256-{sha}.onnx")]);
    assert_eq!(std::fs::metadata(path).unwrap().len(), 1 << 20);
}

#[test]
fn a_download_with_the_wrong_sha256_leaves_nothing_in_the_cache() {
    let url = serve_with(|s| {
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: 300000\r\nConnection: close\r\n\r\n"
        );
        let _ = write_pattern(s, 300_000);
    });
    let cache = tempfile::tempdir().unwrap();
    let wrong = "0".repeat(64);
    let e = fetch(&url, Some(&wrong), cache.path(), DEFAULT_MAX_MODEL_BYTES)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "model {url}: sha256 mismatch: the download has {}",
            pattern_sha256(300_000)
        )),
        "{e}"
    );
    assert_eq!(entries(cache.path()), Vec::<String>::new());
}

/// (VmRSS, VmHWM) of this process, in bytes.
fn own_memory() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> u64 {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Issue 14: a download was read whole into memory before its hash was checked (a 400 MB model peaked
/// at 879 MB resident); it is streamed to disk now.
#[test]
fn a_large_download_is_streamed_to_disk_not_held_in_memory() {
    const SIZE: usize = 64 << 20;
    let url = serve_with(|s| {
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n"
        );
        let _ = write_pattern(s, SIZE);
    });
    let sha = pattern_sha256(SIZE);
    let cache = tempfile::tempdir().unwrap();
    let (before, _) = own_memory();
    // Resets VmHWM to the current RSS (Linux 4.0+).
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let path = fetch(&url, Some(&sha), cache.path(), DEFAULT_MAX_MODEL_BYTES).unwrap();
    let (_, peak) = own_memory();
    assert_eq!(std::fs::metadata(path).unwrap().len(), SIZE as u64);
    let grew = peak.saturating_sub(before);
    eprintln!(
        "a {} MiB download grew this process's resident memory by {:.1} MiB at its peak",
        SIZE >> 20,
        grew as f64 / (1 << 20) as f64
    );
    assert!(
        grew < (SIZE / 4) as u64,
        "a {SIZE}-byte download grew resident memory by {grew} bytes at its peak"
    );
}
