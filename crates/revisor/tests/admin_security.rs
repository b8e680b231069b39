//! Issue 14: who may use the admin API of a running `revisor serve`. Requests without the token, for
//! another Host, from another site's page, or with a body of no declared type are refused and change
//! nothing; the CLI on the same machine finds the token by itself.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{admin_addr, admin_raw, cli, ok, token, write, Server};

/// Sends `head` (request line and headers, without the final blank line) and `body` over TLS; the
/// status code and the whole answer.
fn raw(server: &str, head: &str, body: &str) -> (u16, String) {
    let req = format!(
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let out = admin_raw(server, req.as_bytes());
    let code = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out)
}

const SERVICES: &str = "/apis/serving.knative.dev/v1/namespaces/default/services";

/// A manifest whose command would run as the server's user.
fn evil() -> String {
    serde_json::json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "evil"},
        "spec": {"template": {"spec": {"containers": [{
            "image": "x", "command": ["sh", "-c", "touch /tmp/revisor-pwned; sleep 60"]
        }]}}}
    })
    .to_string()
}

#[test]
fn requests_without_the_token_for_another_host_or_from_another_site_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let s = server.admin.as_str();
    let addr = admin_addr(s);
    let t = token(s);
    let body = evil();

    // The outside test's reproduction: no Content-Type, another site's Origin, no token.
    let (code, out) = raw(
        s,
        &format!("POST {SERVICES} HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://evil.example"),
        &body,
    );
    assert_eq!(code, 403, "{out}");
    assert!(out.contains("cross-origin"), "{out}");
    // Without a token: 401 with a Status saying what is needed, and how to send it.
    let (code, out) = raw(
        s,
        &format!("POST {SERVICES} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json"),
        &body,
    );
    assert_eq!(code, 401, "{out}");
    assert!(out.to_ascii_lowercase().contains("www-authenticate: bearer"), "{out}");
    assert!(
        out.contains("\"kind\":\"Status\"") && out.contains("admin-token"),
        "{out}"
    );
    // A wrong token, of the right length too.
    let wrong = "0".repeat(t.len());
    let (code, out) = raw(
        s,
        &format!(
            "POST {SERVICES} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {wrong}\r\nContent-Type: application/json"
        ),
        &body,
    );
    assert_eq!(code, 401, "{out}");
    // DNS rebinding: the right port under another name.
    let (code, out) = raw(
        s,
        &format!(
            "GET {SERVICES} HTTP/1.1\r\nHost: evil.example:{}\r\nAuthorization: Bearer {t}",
            server.admin.rsplit(':').next().unwrap()
        ),
        "",
    );
    assert_eq!(code, 421, "{out}");
    // Two Host headers.
    let (code, out) = raw(
        s,
        &format!("GET {SERVICES} HTTP/1.1\r\nHost: {addr}\r\nHost: evil.example\r\nAuthorization: Bearer {t}"),
        "",
    );
    assert_eq!(code, 400, "{out}");
    // With the token but from a browser page of another site.
    let (code, out) = raw(
        s,
        &format!(
            "POST {SERVICES} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {t}\r\nContent-Type: application/json\r\n\
             Sec-Fetch-Site: cross-site"
        ),
        &body,
    );
    assert_eq!(code, 403, "{out}");
    // With the login cookie but a body of no declared type (a "simple" cross-site request's shape,
    // which a browser sends with the cookie).
    let (code, out) = raw(
        s,
        &format!("POST {SERVICES} HTTP/1.1\r\nHost: {addr}\r\nCookie: revisor-token={t}"),
        &body,
    );
    assert_eq!(code, 415, "{out}");
    assert!(out.contains("no Content-Type"), "{out}");
    // Nothing was created by any of them.
    let listed = ok(s, &["get", "services"]);
    assert!(!listed.contains("evil"), "{listed}");
    // A bearer token cannot come from another site's page (the header needs a preflight, never
    // answered), so there a body of no declared type is JSON, as Kubernetes takes it: Python's
    // kubernetes client sends creates that way.
    let plain = body.replace("evil", "plain").replace("touch /tmp/revisor-pwned; ", "");
    let (code, out) = raw(
        s,
        &format!("POST {SERVICES} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {t}"),
        &plain,
    );
    assert_eq!(code, 201, "{out}");

    // Health checks need no token; everything else does, reads included.
    assert_eq!(raw(s, &format!("GET /healthz HTTP/1.1\r\nHost: {addr}"), "").0, 200);
    assert_eq!(raw(s, &format!("GET /metrics HTTP/1.1\r\nHost: {addr}"), "").0, 401);
    // The same Origin as the API's own is a same-origin request: allowed with the token.
    let (code, out) = raw(
        s,
        &format!("GET {SERVICES} HTTP/1.1\r\nHost: {addr}\r\nOrigin: https://{addr}\r\nAuthorization: Bearer {t}"),
        "",
    );
    assert_eq!(code, 200, "{out}");
    // localhost is this machine: allowed.
    let port = addr.rsplit(':').next().unwrap();
    let (code, out) = raw(
        s,
        &format!("GET {SERVICES} HTTP/1.1\r\nHost: localhost:{port}\r\nAuthorization: Bearer {t}"),
        "",
    );
    assert_eq!(code, 200, "{out}");
}

#[test]
fn the_token_is_private_found_by_the_cli_and_a_login_link_sets_a_strict_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data);
    let s = server.admin.as_str();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data.join("admin-token")), 0o600);
    let creds = revisor::auth::credentials_path(s).unwrap();
    assert_eq!(mode(&creds), 0o600);
    assert_eq!(mode(creds.parent().unwrap()), 0o700);
    let t = token(s);
    assert_eq!(std::fs::read_to_string(data.join("admin-token")).unwrap().trim(), t);

    // The CLI needs no flag on the server's machine (every other test relies on it too).
    ok(s, &["get", "services"]);
    // A token file that is not the server's: a clear error naming the fix.
    let other = write(dir.path(), "other-token", "0123456789abcdef0123456789abcdef\n");
    let r = cli(s, &["get", "services", "--token-file", other.to_str().unwrap()]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("token is wrong") && r.stderr.contains("--token-file"),
        "{}",
        r.stderr
    );
    let short = write(dir.path(), "short-token", "abc\n");
    let r = cli(s, &["get", "services", "--token-file", short.to_str().unwrap()]);
    assert!(r.stderr.contains("at least 16"), "{}", r.stderr);
    // The right one, given explicitly.
    let r = cli(
        s,
        &[
            "get",
            "services",
            "--token-file",
            data.join("admin-token").to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);

    // A login link sets an HttpOnly, SameSite=Strict cookie that stands for the token.
    let addr = admin_addr(s);
    let (code, out) = raw(s, &format!("GET /login?token={t} HTTP/1.1\r\nHost: {addr}"), "");
    assert_eq!(code, 303, "{out}");
    let cookie = out
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("no cookie: {out}"));
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    let (code, out) = raw(
        s,
        &format!("GET {SERVICES} HTTP/1.1\r\nHost: {addr}\r\nCookie: theme=dark; {pair}"),
        "",
    );
    assert_eq!(code, 200, "{out}");
    let (code, _) = raw(s, &format!("GET /login?token=nope HTTP/1.1\r\nHost: {addr}"), "");
    assert_eq!(code, 401);
}

#[test]
fn a_token_file_of_the_operators_choice_replaces_the_generated_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = write(dir.path(), "token", "my-own-token-of-enough-length\n");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let server = Server::start_args(&data, &["--admin-token-file", file.to_str().unwrap()]);
    let s = server.admin.as_str();
    assert!(!data.join("admin-token").exists());
    assert_eq!(token(s), "my-own-token-of-enough-length");
    ok(s, &["get", "services"]);
    // A token file without a usable token stops the server before it listens.
    let bad = write(dir.path(), "bad", "\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_revisor"))
        .args([
            "serve",
            "--admin-addr",
            "127.0.0.1:0",
            "--gateway-addr",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data2"))
        .args(["--admin-token-file", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--admin-token-file") && err.contains("no token"), "{err}");
}

#[test]
fn the_api_speaks_only_https_with_a_ca_the_cli_trusts_by_itself_or_is_given() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data);
    let s = server.admin.as_str();
    assert!(s.starts_with("https://"), "{s}");
    let addr = admin_addr(s);
    // Plain HTTP gets no answer: the token never crosses the wire in the clear.
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(15))).unwrap();
    tcp.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out);
    assert!(
        !String::from_utf8_lossy(&out).contains("HTTP/1.1 200"),
        "plain HTTP was answered"
    );
    // The CLI given http:// says to use https://.
    let r = cli(&s.replace("https://", "http://"), &["get", "services"]);
    assert!(r.stderr.contains("speaks HTTPS"), "{}", r.stderr);
    // The certificate covers localhost too.
    let port = addr.rsplit(':').next().unwrap();
    ok(&format!("https://localhost:{port}"), &["get", "services"]);
    // Without the credentials the server wrote (another user, another machine): the system's roots
    // do not trust the server's CA...
    let elsewhere = dir.path().join("elsewhere");
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_revisor"))
            .args(["get", "services", "--server", s])
            .args(extra)
            .env("XDG_CONFIG_HOME", &elsewhere)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let token_file = data.join("admin-token");
    let (okay, err) = run(&["--token-file", token_file.to_str().unwrap()]);
    assert!(!okay, "an unknown CA was trusted");
    assert!(
        err.contains("does not trust") && err.contains("--certificate-authority"),
        "{err}"
    );
    // ...and --certificate-authority with DATA_DIR/tls/ca.crt, plus the token, is all it takes.
    let ca = data.join("tls/ca.crt");
    let (okay, err) = run(&[
        "--token-file",
        token_file.to_str().unwrap(),
        "--certificate-authority",
        ca.to_str().unwrap(),
    ]);
    assert!(okay, "{err}");
    let (okay, err) = run(&["--certificate-authority", token_file.to_str().unwrap()]);
    assert!(!okay && err.contains("--certificate-authority"), "{err}");
}
