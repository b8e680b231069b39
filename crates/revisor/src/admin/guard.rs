//! Who may use the admin API: requests for this server's own address (no DNS rebinding), not from
//! another site's page, carrying the admin token (a bearer token, or the cookie a login link sets).
//!
//! The API can create revisions, and a revision's `command` runs as the server's user, so every
//! request except `GET /healthz` and the login link needs the token. Requests are refused, with a
//! Kubernetes `Status` saying why and nothing changed, when:
//! - their `Host` is neither a loopback name nor the address the API listens on (unless it listens on
//!   every address, where the token alone decides): 421 `Misdirected`;
//! - they come from a browser page of another origin (`Origin` other than the API's own, or
//!   `Sec-Fetch-Site: cross-site`): 403 `Forbidden`;
//! - they carry no token, or a wrong one: 401 `Unauthorized` with `WWW-Authenticate: Bearer`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;

use super::ApiError;
use crate::auth;

/// A refusal: a Kubernetes `Status` with nothing changed.
fn refuse(e: ApiError) -> Response {
    e.into_response()
}

/// The cookie a login link sets.
pub const COOKIE: &str = "revisor-token";
/// The login link's path: `/login?token=...` sets the cookie and goes to `/`.
pub const LOGIN: &str = "/login";

/// What the guard checks requests against.
#[derive(Clone)]
pub struct Guard {
    token: Arc<String>,
    /// The address the API listens on.
    bound: SocketAddr,
}

impl Guard {
    pub fn new(token: String, bound: SocketAddr) -> Guard {
        Guard {
            token: Arc::new(token),
            bound,
        }
    }

    /// The link that logs a browser in.
    pub fn login_link(&self, base: &str) -> String {
        format!("{base}{LOGIN}?token={}", self.token)
    }
}

/// `router` behind the guard.
pub fn guarded(router: Router, guard: Guard) -> Router {
    router.layer(axum::middleware::from_fn_with_state(guard, check))
}

/// The host of a `Host` value (`[::1]:7070` -> `::1`), lower case.
fn host_of(value: &str) -> String {
    let v = value.trim();
    let host = if let Some(rest) = v.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        v.rsplit_once(':').map(|(h, _)| h).unwrap_or(v)
    };
    host.to_ascii_lowercase()
}

/// Whether a request for `host` is meant for this server.
fn host_allowed(host: &str, bound: SocketAddr) -> bool {
    if bound.ip().is_unspecified() {
        return true;
    }
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip == bound.ip(),
        Err(_) => false,
    }
}

/// The token a request carries: `Authorization: Bearer`, else the login cookie.
fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, token) = v.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

async fn check(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let hosts: Vec<&HeaderValue> = headers.get_all(header::HOST).iter().collect();
    let host = match (hosts.as_slice(), req.uri().authority()) {
        ([one], _) => one.to_str().map(host_of).unwrap_or_default(),
        ([], Some(a)) => host_of(a.as_str()),
        ([], None) => {
            return refuse(ApiError::BadRequest("the request has no Host header".into()));
        }
        _ => {
            return refuse(ApiError::BadRequest("the request has more than one Host header".into()));
        }
    };
    if !host_allowed(&host, g.bound) {
        return refuse(ApiError::Misdirected(format!(
            "this admin API answers for {} and loopback names, not for Host {host:?}",
            g.bound.ip()
        )));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        // HTTP/2 (what a browser speaks here) carries the host as the URI's authority, not a header.
        let own = hosts
            .first()
            .and_then(|h| h.to_str().ok())
            .or(req.uri().authority().map(|a| a.as_str()))
            .unwrap_or("");
        let same = origin
            .split_once("://")
            .is_some_and(|(scheme, rest)| matches!(scheme, "http" | "https") && rest == own);
        if !same {
            return refuse(ApiError::Forbidden(format!(
                "cross-origin requests are refused (Origin {origin:?})"
            )));
        }
    }
    if headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) == Some("cross-site") {
        return refuse(ApiError::Forbidden("cross-site requests are refused".into()));
    }
    let path = req.uri().path();
    if path == "/healthz" {
        return next.run(req).await;
    }
    if path == LOGIN {
        return login(&g, req.uri().query().unwrap_or(""));
    }
    match presented(headers) {
        Some(t) if auth::same(t.as_bytes(), g.token.as_bytes()) => next.run(req).await,
        Some(_) => refuse(ApiError::Unauthorized("the admin token is wrong".into())),
        None => refuse(ApiError::Unauthorized(
            "the admin API needs its token: the CLI finds it by itself on the server's machine; otherwise \
             send `Authorization: Bearer` with the token from the server's DATA_DIR/admin-token"
                .into(),
        )),
    }
}

/// `/login?token=T`: with the right token, sets an HttpOnly, SameSite=Strict cookie and goes to `/`.
fn login(g: &Guard, query: &str) -> Response {
    let given = query.split('&').find_map(|kv| kv.strip_prefix("token=")).unwrap_or("");
    if !auth::same(given.as_bytes(), g.token.as_bytes()) {
        return refuse(ApiError::Unauthorized(
            "the login link's token is missing or wrong".into(),
        ));
    }
    let cookie = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict", g.token);
    let mut resp = StatusCode::SEE_OTHER.into_response();
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("/"));
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("a token is printable ASCII"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let lo: SocketAddr = "127.0.0.1:7070".parse().unwrap();
        assert_eq!(host_of("127.0.0.1:7070"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7070"), "::1");
        assert_eq!(host_of("LocalHost"), "localhost");
        assert!(host_allowed("127.0.0.1", lo) && host_allowed("localhost", lo) && host_allowed("::1", lo));
        assert!(!host_allowed("evil.example", lo) && !host_allowed("10.0.0.1", lo));
        let any: SocketAddr = "0.0.0.0:7070".parse().unwrap();
        assert!(host_allowed("revisor.revisor-system.svc", any));
        let one: SocketAddr = "10.1.2.3:7070".parse().unwrap();
        assert!(host_allowed("10.1.2.3", one) && !host_allowed("10.1.2.4", one));
    }
}
