//! Where models come from: local paths and `file://` URIs as they are, `http://` and `https://`
//! downloaded into a cache (streamed to a temporary file, hashed on the way, up to a size limit, and
//! renamed into place only once whole and verified), verified by an optional sha256 and not downloaded
//! again while it matches.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::LoadError;

/// The cache for downloaded models: `$REVISOR_MODEL_CACHE`, else `$XDG_CACHE_HOME/revisor/models`,
/// else `~/.cache/revisor/models`.
pub fn default_cache() -> PathBuf {
    if let Some(d) = std::env::var_os("REVISOR_MODEL_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("revisor/models");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache/revisor/models")
}

/// The largest model download accepted unless told otherwise (`--max-model-bytes`): 2 GiB, the most
/// a single ONNX protobuf can hold.
pub const DEFAULT_MAX_MODEL_BYTES: u64 = 2 * 1024 * 1024 * 1024;

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_digest(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn file_digest(path: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// The local file for a model URI, downloading it (at most `max_bytes` of it) if needed; checks `sha256`
/// when given.
pub fn fetch(uri: &str, sha256: Option<&str>, cache: &Path, max_bytes: u64) -> Result<PathBuf, LoadError> {
    let err = |message: String| LoadError {
        uri: uri.to_string(),
        message,
    };
    let want = sha256.map(|s| s.trim().to_ascii_lowercase());
    if let Some(w) = &want {
        if w.len() != 64 || !w.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err(format!("--sha256 {w:?} is not 64 hexadecimal digits")));
        }
    }
    let remote = uri.starts_with("http://") || uri.starts_with("https://");
    let path = if remote {
        download(uri, want.as_deref(), cache, max_bytes)?
    } else if let Some(rest) = uri.strip_prefix("file://") {
        local(rest).map_err(err)?
    } else if uri.contains("://") {
        return Err(err(
            "unsupported storage URI: use a path, file://, http:// or https://".into()
        ));
    } else {
        local(uri).map_err(err)?
    };
    if let (Some(w), false) = (&want, remote) {
        let got = file_digest(&path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
        if &got != w {
            return Err(err(format!("sha256 mismatch: the file has {got}, --sha256 says {w}")));
        }
    }
    Ok(path)
}

/// A local model file as an absolute path; when it cannot be read, the error says where it looked and,
/// for a relative path, what it was relative to.
fn local(given: &str) -> Result<PathBuf, String> {
    let path = Path::new(given);
    let cwd = std::env::current_dir().unwrap_or_default();
    let abs = cwd.join(path);
    match std::fs::metadata(&abs) {
        Ok(_) => Ok(abs),
        Err(e) if path.is_relative() => Err(format!(
            "cannot read {}: {e} ({given:?} is relative to the model server's working directory {}: a \
             revision's replicas run in its container's workingDir, else where `revisor serve` was \
             started; give an absolute path, or an http(s):// URL with --sha256)",
            abs.display(),
            cwd.display()
        )),
        Err(e) => Err(format!("cannot read {}: {e}", abs.display())),
    }
}

fn download(uri: &str, want: Option<&str>, cache: &Path, max_bytes: u64) -> Result<PathBuf, LoadError> {
    let err = |message: String| LoadError {
        uri: uri.to_string(),
        message,
    };
    let too_large = || {
        err(format!(
            "the download is larger than the limit of {max_bytes} bytes (--max-model-bytes)"
        ))
    };
    std::fs::create_dir_all(cache)
        .map_err(|e| err(format!("cannot create the model cache {}: {e}", cache.display())))?;
    let name = match want {
        Some(w) => format!("sha256-{w}.onnx"),
        None => format!("url-{}.onnx", &hex_digest(uri.as_bytes())[..16]),
    };
    let target = cache.join(name);
    if let Some(w) = want {
        if target.is_file() && file_digest(&target).is_ok_and(|d| d == w) {
            tracing::info!("model {uri}: using the cached copy {}", target.display());
            return Ok(target);
        }
    }
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(600))
        .build()
        .map_err(|e| err(format!("cannot make an HTTP client: {e}")))?;
    let mut resp = client
        .get(uri)
        .send()
        .map_err(|e| err(format!("download failed: {e}")))?;
    if !resp.status().is_success() {
        return Err(err(format!("download failed: the server answered {}", resp.status())));
    }
    if let Some(n) = resp.content_length().filter(|n| *n > max_bytes) {
        return Err(err(format!(
            "the server announces {n} bytes, more than the limit of {max_bytes} bytes (--max-model-bytes)"
        )));
    }
    // Streamed into a temporary file beside the target, hashed on the way, and renamed into place only
    // once whole and verified: an error, or a crash, never leaves a partial model in the cache (the
    // temporary file is removed when dropped).
    let cache_error = |e: std::io::Error| err(format!("cannot write the cache {}: {e}", cache.display()));
    let mut tmp = tempfile::Builder::new()
        .prefix(".download-")
        .tempfile_in(cache)
        .map_err(cache_error)?;
    let mut hasher = Sha256::new();
    let mut total: u64 = 0;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match resp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(err(format!("download failed while reading: {e}"))),
        };
        total += n as u64;
        if total > max_bytes {
            return Err(too_large());
        }
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n]).map_err(cache_error)?;
    }
    let got = hex(&hasher.finalize());
    if let Some(w) = want {
        if got != w {
            return Err(err(format!(
                "sha256 mismatch: the download has {got}, --sha256 says {w}"
            )));
        }
    }
    tmp.as_file().sync_all().map_err(cache_error)?;
    tmp.persist(&target).map_err(|e| cache_error(e.error))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_relative_model_says_where_it_looked_and_relative_to_what() {
        let cache = tempfile::tempdir().unwrap();
        let cwd = std::env::current_dir().unwrap();
        for uri in ["no-such-iris-v1.onnx", "file://no-such-iris-v1.onnx"] {
            let e = fetch(uri, None, cache.path(), DEFAULT_MAX_MODEL_BYTES)
                .unwrap_err()
                .to_string();
            let abs = cwd.join("no-such-iris-v1.onnx");
            assert!(e.contains(&abs.display().to_string()), "{e}");
            assert!(e.contains("relative to the model server's working directory"), "{e}");
            assert!(e.contains("workingDir"), "{e}");
        }
        let e = fetch("/no/such/model.onnx", None, cache.path(), DEFAULT_MAX_MODEL_BYTES)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot read /no/such/model.onnx") && !e.contains("relative"),
            "{e}"
        );
    }
}
