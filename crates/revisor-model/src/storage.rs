//! Where models come from: local paths and `file://` URIs as they are, `http://` and `https://`
//! downloaded into a cache, verified by an optional sha256 and not downloaded again while it matches.

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

fn hex_digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
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
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The local file for a model URI, downloading it if needed; checks `sha256` when given.
pub fn fetch(uri: &str, sha256: Option<&str>, cache: &Path) -> Result<PathBuf, LoadError> {
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
        download(uri, want.as_deref(), cache)?
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

fn download(uri: &str, want: Option<&str>, cache: &Path) -> Result<PathBuf, LoadError> {
    let err = |message: String| LoadError {
        uri: uri.to_string(),
        message,
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
    let resp = client
        .get(uri)
        .send()
        .map_err(|e| err(format!("download failed: {e}")))?;
    if !resp.status().is_success() {
        return Err(err(format!("download failed: the server answered {}", resp.status())));
    }
    let bytes = resp
        .bytes()
        .map_err(|e| err(format!("download failed while reading: {e}")))?;
    let got = hex_digest(&bytes);
    if let Some(w) = want {
        if got != w {
            return Err(err(format!(
                "sha256 mismatch: the download has {got}, --sha256 says {w}"
            )));
        }
    }
    // Write beside the target and rename, so a crash never leaves a half-written model in the cache.
    let tmp = cache.join(format!(".download-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| err(format!("cannot write the cache: {e}")))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| err(format!("cannot write the cache: {e}")))?;
    std::fs::rename(&tmp, &target).map_err(|e| err(format!("cannot write the cache: {e}")))?;
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
            let e = fetch(uri, None, cache.path()).unwrap_err().to_string();
            let abs = cwd.join("no-such-iris-v1.onnx");
            assert!(e.contains(&abs.display().to_string()), "{e}");
            assert!(e.contains("relative to the model server's working directory"), "{e}");
            assert!(e.contains("workingDir"), "{e}");
        }
        let e = fetch("/no/such/model.onnx", None, cache.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot read /no/such/model.onnx") && !e.contains("relative"),
            "{e}"
        );
    }
}
