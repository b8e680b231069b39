//! Readiness probes: TCP connect, HTTP GET, or a command, each bounded by a timeout.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::spec::ProbeAction;

/// Runs one probe against a replica listening on `port`.
pub async fn check(action: &ProbeAction, port: u16, timeout: Duration) -> bool {
    let fut = async {
        match action {
            ProbeAction::Tcp { port: p } => TcpStream::connect(("127.0.0.1", p.unwrap_or(port))).await.is_ok(),
            ProbeAction::Http { port: p, path, headers } => http_get(p.unwrap_or(port), path, headers).await,
            ProbeAction::Exec { command } => exec(command).await,
        }
    };
    tokio::time::timeout(timeout, fut).await.unwrap_or(false)
}

async fn http_get(port: u16, path: &str, headers: &[(String, String)]) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut req =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: revisor-probe\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    let mut got = 0;
    while got < 12 {
        match s.read(&mut buf[got..]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => got += n,
        }
    }
    // "HTTP/1.1 200": the status code is bytes 9..12.
    std::str::from_utf8(&buf[9..12])
        .ok()
        .and_then(|c| c.parse::<u16>().ok())
        .is_some_and(|c| (200..400).contains(&c))
}

async fn exec(command: &[String]) -> bool {
    let Some((prog, args)) = command.split_first() else {
        return false;
    };
    tokio::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .is_ok_and(|s| s.success())
}
