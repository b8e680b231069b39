//! Issue 14: the memory large JSON infer requests cost the model server, measured from outside, from
//! /proc/<pid>/status, on a server process of its own: this test binary again, serving the example model
//! with the `revisor` binary's allocator (this crate has no binary, and the `revisor` one is not built
//! for its tests).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use revisor_model::examples::{write_all, Example};
use revisor_model::{router, state, Model};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SERVER: &str = "REVISOR_MEMORY_TEST_SERVER";
const MIB: f64 = 1024.0 * 1024.0;

/// The server side: the example model on a loopback port, printed on stdout; it stops when its standard
/// input closes (when the test ends, however it ends).
fn serve() {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    revisor_model::return_freed_memory_at_once();
    let dir = tempfile::tempdir().unwrap();
    write_all(dir.path()).unwrap();
    let uri = format!("file://{}", dir.path().join(Example::V1.file_name()).display());
    let m = Model::load(&uri, "tabular", "1").unwrap();
    m.warm_up().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening on {}", listener.local_addr().unwrap());
        axum::serve(listener, router(state(std::sync::Arc::new(m))))
            .await
            .unwrap();
    });
}

/// (VmRSS, VmHWM) of a process, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"));
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A valid FP32 request for the example model: `rows` rows of 4 pseudo-random values, nested.
fn request(rows: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut data = String::with_capacity(rows * 40);
    data.push('[');
    for r in 0..rows {
        if r > 0 {
            data.push(',');
        }
        data.push('[');
        for c in 0..4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if c > 0 {
                data.push(',');
            }
            data.push_str(&format!("{:.6}", (x % 4_000_000) as f64 / 1_000_000.0 - 2.0));
        }
        data.push(']');
    }
    data.push(']');
    format!(r#"{{"id":"big","inputs":[{{"name":"features","shape":[{rows},4],"datatype":"FP32","data":{data}}}]}}"#)
        .into_bytes()
}

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn start_server(test: &str) -> Server {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(SERVER, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the server process ended before listening")
            .unwrap();
        // libtest's "test <name> ... " comes first on the same line.
        if let Some((_, a)) = line.split_once("listening on ") {
            break a.to_string();
        }
    };
    Server { child, addr }
}

/// Sends one request; returns the status, the answer's size, and the server's resident memory before
/// and at its peak during the request.
fn measure(server: &Server, client: &reqwest::blocking::Client, body: Vec<u8>) -> (u16, usize, u64, u64) {
    let pid = server.child.id();
    let (before, _) = memory(pid);
    // Reset VmHWM to the current RSS (Linux 4.0+); sampling VmRSS covers a kernel that refuses.
    let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    let sampled = Arc::new(AtomicU64::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (sampled, done) = (sampled.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                sampled.fetch_max(memory(pid).0, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let resp = client
        .post(format!("http://{}/v2/models/tabular/infer", server.addr))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let answer = resp.bytes().unwrap();
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let sampled = sampled.load(Ordering::SeqCst);
    let peak = if reset { memory(pid).1.max(sampled) } else { sampled };
    (status, answer.len(), before, peak)
}

#[test]
fn large_json_requests_peak_below_5x_their_size_and_do_not_pile_up() {
    if std::env::var_os(SERVER).is_some() {
        return serve();
    }
    let server = start_server("large_json_requests_peak_below_5x_their_size_and_do_not_pile_up");
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    // Warm up the server's threads and buffers with a small request of the same kind.
    assert_eq!(measure(&server, &client, request(1000)).0, 200);

    let body = request(400_000);
    let size = body.len() as u64;
    let (status, answer, before, peak) = measure(&server, &client, body.clone());
    assert_eq!(status, 200);
    // More of them, one after the other, reuse what the first left: the peak does not climb.
    let mut again = 0;
    for _ in 0..3 {
        let (status, _, _, p) = measure(&server, &client, body.clone());
        assert_eq!(status, 200);
        again = again.max(p);
    }
    // What stays resident after them: the model server has mimalloc (the binary's allocator, as here)
    // purge freed memory at once, so after a small request (as probes send) the server is back within
    // a body's size of where it started.
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let after = loop {
        assert_eq!(measure(&server, &client, request(10)).0, 200);
        let rss = memory(server.child.id()).0;
        if rss < before + size || started.elapsed() > Duration::from_secs(5) {
            break rss;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "a {:.1} MiB JSON request: resident {:.1} MiB before, peak {:.1} MiB (+{:.1} MiB, {:.1}x the body); \
         3 more: peak {:.1} MiB (+{:.1} MiB); {:.1} MiB after a pause; answer {:.1} MiB",
        size as f64 / MIB,
        before as f64 / MIB,
        peak as f64 / MIB,
        (peak - before) as f64 / MIB,
        (peak - before) as f64 / size as f64,
        again as f64 / MIB,
        again.saturating_sub(before) as f64 / MIB,
        after as f64 / MIB,
        answer as f64 / MIB,
    );
    assert!(
        after < before + size,
        "{:.1} MiB stayed resident after the requests ({:.1} MiB before them)",
        after as f64 / MIB,
        before as f64 / MIB
    );
    assert!(
        peak - before < 5 * size,
        "a {size}-byte request grew the server's resident memory by {} bytes at its peak, {:.1}x the body",
        peak - before,
        (peak - before) as f64 / size as f64
    );
    assert!(
        again.saturating_sub(before) < 5 * size,
        "over 4 requests of {size} bytes, the server's resident memory peaked {} bytes above where it \
         started, {:.1}x one body",
        again.saturating_sub(before),
        again.saturating_sub(before) as f64 / size as f64
    );
}
