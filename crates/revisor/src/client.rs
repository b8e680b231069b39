//! The CLI's HTTP client for the admin API: finds the server, and turns `Status` failures into errors.

use std::fmt;

use anyhow::{Context, Result};
use reqwest::blocking::{Client as Http, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub const SERVING: &str = "/apis/serving.knative.dev/v1";
pub const ROLLOUTS: &str = "/apis/revisor.dev/v1alpha1";

/// A failure the server reported, with its field causes.
#[derive(Debug)]
pub struct ApiFailure {
    pub code: u16,
    pub reason: String,
    pub message: String,
    pub causes: Vec<(String, String)>,
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.causes.is_empty() {
            return write!(f, "{}", self.message);
        }
        let head = self.message.split(" is invalid:").next().unwrap_or(&self.message);
        write!(f, "{head} is invalid:")?;
        for (field, msg) in &self.causes {
            write!(f, "\n  {field}: {msg}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiFailure {}

pub struct Client {
    base: String,
    http: Http,
    /// Whether a token is sent (to say what to do about a 401).
    has_token: bool,
    /// What every request carries (the token), for clients made later.
    headers: reqwest::header::HeaderMap,
    /// The CA trusted beside the system's, for clients made later.
    ca: Option<reqwest::Certificate>,
}

impl Client {
    /// A client for the server at `server`, with the token the server wrote for that address.
    pub fn new(server: &str) -> Result<Client> {
        Self::with_credentials(server, None, None)
    }

    /// A client for the server at `server` sending the token in `token_file` (else the token the
    /// server wrote for that address, if any) and trusting the CA in `ca_file` (else the one the
    /// server wrote, else the system's).
    pub fn with_credentials(
        server: &str,
        token_file: Option<&std::path::Path>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Client> {
        let base = server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            anyhow::bail!("--server {server:?} must be a URL like https://127.0.0.1:7070");
        }
        let token = crate::auth::client_token(&base, token_file)?;
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = &token {
            let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let ca = match ca_file {
            Some(f) => Some(
                std::fs::read(f)
                    .with_context(|| format!("--certificate-authority {}", f.display()))
                    .and_then(|pem| {
                        reqwest::Certificate::from_pem(&pem)
                            .with_context(|| format!("--certificate-authority {}: not a PEM certificate", f.display()))
                    })?,
            ),
            None => crate::auth::ca_path(&base)
                .and_then(|p| std::fs::read(p).ok())
                .and_then(|pem| reqwest::Certificate::from_pem(&pem).ok()),
        };
        let mut b = Http::builder()
            .timeout(std::time::Duration::from_secs(30))
            .default_headers(headers.clone());
        if let Some(ca) = &ca {
            b = b.add_root_certificate(ca.clone());
        }
        let http = b.build()?;
        Ok(Client {
            base,
            http,
            has_token: token.is_some(),
            headers,
            ca,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn send(&self, req: RequestBuilder) -> Result<Response> {
        let resp = req.send().map_err(|e| {
            let chain = {
                let mut parts = vec![e.to_string()];
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    parts.push(s.to_string());
                    src = s.source();
                }
                parts.join(": ")
            };
            if chain.contains("certificate") || chain.contains("UnknownIssuer") {
                anyhow::anyhow!(
                    "the revisor server at {} has a certificate this machine does not trust ({}): pass \
                     --certificate-authority with the server's DATA_DIR/tls/ca.crt",
                    self.base,
                    chain.rsplit(": ").next().unwrap_or("")
                )
            } else if e.is_connect() {
                anyhow::anyhow!(
                    "cannot reach the revisor server at {}: nothing is listening there \
                     (start one with `revisor serve`, or point --server / REVISOR_SERVER at it)",
                    self.base
                )
            } else if self.base.starts_with("http://") {
                anyhow::anyhow!(
                    "request to {} failed: {e} (the admin API speaks HTTPS: use https://{})",
                    self.base,
                    self.base.trim_start_matches("http://")
                )
            } else {
                anyhow::anyhow!("request to {} failed: {e}", self.base)
            }
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let code = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        if code == 401 {
            let f = failure(code, &text);
            let hint = match (self.has_token, crate::auth::credentials_path(&self.base)) {
                (true, _) => "the token sent is not this server's: pass --token-file with the server's \
                              DATA_DIR/admin-token"
                    .to_string(),
                (false, Some(p)) => format!(
                    "no token found for {} (the server writes {} when it starts): pass --token-file \
                     with the server's DATA_DIR/admin-token",
                    self.base,
                    p.display()
                ),
                (false, None) => "pass --token-file with the server's DATA_DIR/admin-token".to_string(),
            };
            anyhow::bail!("{}: {hint}", f.message);
        }
        Err(failure(code, &text).into())
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        Ok(self.send(self.http.get(self.url(path)))?.json()?)
    }

    /// GET that answers `None` on 404.
    pub fn get_opt<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        match self.get(path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.downcast_ref::<ApiFailure>().is_some_and(|f| f.code == 404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Server-side apply; returns the outcome (`created`, `configured`, `unchanged`) and the object.
    /// `force` takes fields other field managers own (on a cluster; locally there are none).
    pub fn apply(&self, path: &str, body: &Value, dry_run: bool, force: bool) -> Result<(String, Value)> {
        let mut url = format!("{}?fieldManager=revisor", self.url(path));
        if dry_run {
            url.push_str("&dryRun=All");
        }
        if force {
            url.push_str("&force=true");
        }
        let req = self
            .http
            .patch(url)
            .header("content-type", "application/apply-patch+yaml")
            .body(serde_json::to_vec(body)?);
        let resp = self.send(req)?;
        let outcome = resp
            .headers()
            .get("revisor-apply-result")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("configured")
            .to_string();
        Ok((outcome, resp.json()?))
    }

    /// POST with an optional JSON body.
    pub fn post(&self, path: &str, body: Option<&Value>) -> Result<Value> {
        let mut req = self.http.post(self.url(path));
        if let Some(b) = body {
            req = req.json(b);
        }
        Ok(self.send(req)?.json()?)
    }

    pub fn put(&self, path: &str, body: &Value) -> Result<Value> {
        Ok(self.send(self.http.put(self.url(path)).json(body))?.json()?)
    }

    /// Copies a streamed response (a log) to `out` as it arrives; no timeout, for `--follow`.
    pub fn stream_to(&self, path: &str, out: &mut dyn std::io::Write) -> Result<()> {
        let mut b = Http::builder().timeout(None).default_headers(self.headers.clone());
        if let Some(ca) = &self.ca {
            b = b.add_root_certificate(ca.clone());
        }
        let http = b.build()?;
        let mut resp = self.send(http.get(self.url(path)))?;
        let mut buf = [0u8; 8192];
        loop {
            let n = std::io::Read::read(&mut resp, &mut buf)?;
            if n == 0 {
                return Ok(());
            }
            out.write_all(&buf[..n])?;
            out.flush()?;
        }
    }

    pub fn delete(&self, path: &str) -> Result<()> {
        self.send(self.http.delete(self.url(path)))?;
        Ok(())
    }
}

fn failure(code: u16, text: &str) -> ApiFailure {
    let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or("").to_string();
    let causes = v
        .pointer("/details/causes")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let f = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                    (f("field"), f("message"))
                })
                .collect()
        })
        .unwrap_or_default();
    let message = if v.is_null() {
        format!("server answered {code}: {}", text.trim())
    } else {
        s("/message")
    };
    ApiFailure {
        code,
        reason: s("/reason"),
        message,
        causes,
    }
}
