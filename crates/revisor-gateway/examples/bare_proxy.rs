//! A reference point for `bench/gateway.sh`, not part of revisor: the same HTTP stack the gateway
//! uses (hyper's server behind hyper-util's auto builder, hyper-util's pooled client, one
//! single-threaded tokio runtime per thread on a shared listener, with the gateway's settings), relaying
//! every request to one upstream and doing nothing else: no routing, breaker, metrics, timeouts or
//! header rewriting. What it costs per request is what the stack costs; the rest of the gateway's cost
//! is revisor's own.
//!
//!   cargo run --release -p revisor-gateway --example bare_proxy -- LISTEN_ADDR UPSTREAM_ADDR [THREADS]

use std::convert::Infallible;
use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

type HttpClient = Client<HttpConnector, Incoming>;

async fn relay(client: HttpClient, upstream: SocketAddr, req: Request<Incoming>) -> Response<Incoming> {
    let (mut parts, body) = req.into_parts();
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = Uri::try_from(format!("http://{upstream}{pq}")).expect("an address and a path make a URI");
    match client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => resp,
        Err(e) => panic!("upstream {upstream}: {e}"),
    }
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: bare_proxy LISTEN_ADDR UPSTREAM_ADDR [THREADS]";
    let listen: SocketAddr = args.get(1).and_then(|a| a.parse().ok()).expect(usage);
    let upstream: SocketAddr = args.get(2).and_then(|a| a.parse().ok()).expect(usage);
    let threads: usize = args
        .get(3)
        .map(|t| t.parse().expect(usage))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    let mut handles = Vec::new();
    for _ in 0..threads {
        let listener = listener.try_clone()?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        handles.push(std::thread::spawn(move || {
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("a listener");
                let client: HttpClient = revisor_gateway::client(false);
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder.http1().timer(hyper_util::rt::TokioTimer::new());
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let client = client.clone();
                    let svc = hyper::service::service_fn(move |req| {
                        let client = client.clone();
                        async move { Ok::<_, Infallible>(relay(client, upstream, req).await) }
                    });
                    let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
            })
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}
