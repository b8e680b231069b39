//! The admin API's credentials: a bearer token made at the server's first start (or read from
//! `--admin-token-file`), kept mode 0600, and found by the CLI without configuration.
//!
//! The server writes its token to `DATA_DIR/admin-token` and, for the CLI, to a credentials file
//! named after the admin address under `$XDG_CONFIG_HOME/revisor/credentials` (else
//! `~/.config/revisor/credentials`), as k3s writes a kubeconfig for its own API. The CLI takes the
//! token from `--token-file` / `REVISOR_TOKEN_FILE` when given, else from the credentials file of the
//! address it talks to.

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The token's file in the data directory.
pub const TOKEN_FILE: &str = "admin-token";
/// A token shorter than this is refused: it could be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

/// The server's token: from `token_file` when given, else `data_dir/admin-token`, made (32 random
/// bytes, hex) with mode 0600 when missing.
pub fn server_token(data_dir: &Path, token_file: Option<&Path>) -> Result<String> {
    if let Some(f) = token_file {
        return read_token(f).with_context(|| format!("--admin-token-file {}", f.display()));
    }
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut f) => {
            let token = random_token().context("making the admin token")?;
            f.write_all(format!("{token}\n").as_bytes())
                .and_then(|_| f.sync_all())
                .with_context(|| format!("writing the admin token to {}", path.display()))?;
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mode = std::fs::metadata(&path)?.permissions().mode();
            if mode & 0o077 != 0 {
                bail!(
                    "{} can be read by other users (mode {:o}): run `chmod 600 {}`",
                    path.display(),
                    mode & 0o777,
                    path.display()
                );
            }
            read_token(&path)
        }
        Err(e) => Err(e).with_context(|| format!("creating the admin token {}", path.display())),
    }
}

/// A token from a file: its first line, trimmed; an error when it is empty or too short.
pub fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.len() < MIN_TOKEN_LEN {
        bail!(
            "{} holds no token of at least {MIN_TOKEN_LEN} characters (its first line is the token)",
            path.display()
        );
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("{}: a token is printable ASCII without spaces", path.display());
    }
    Ok(token)
}

fn random_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether two tokens are equal, in time that depends only on their lengths.
pub fn same(given: &[u8], want: &[u8]) -> bool {
    if given.len() != want.len() {
        return false;
    }
    given.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Where the CLI's credentials live: `$XDG_CONFIG_HOME/revisor/credentials`, else
/// `~/.config/revisor/credentials`.
pub fn credentials_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("revisor/credentials"));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|h| PathBuf::from(h).join(".config/revisor/credentials"))
}

/// The credentials file for the admin API at `url` (`http://127.0.0.1:7070` ->
/// `.../credentials/127.0.0.1_7070`).
pub fn credentials_path(url: &str) -> Option<PathBuf> {
    let authority = url.split("://").nth(1).unwrap_or(url).split('/').next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, p),
        _ => (host_port, if url.starts_with("https") { "443" } else { "80" }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host == "localhost" { "127.0.0.1" } else { host };
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b)) {
        return None;
    }
    Some(credentials_dir()?.join(format!("{}_{port}", host.replace(':', "-"))))
}

/// The CA certificate the server at `url` wrote for the CLI (beside its token).
pub fn ca_path(url: &str) -> Option<PathBuf> {
    credentials_path(url).map(|p| beside(&p, "crt"))
}

/// `path` with `.ext` added to its name (`127.0.0.1_7070` -> `127.0.0.1_7070.crt`).
fn beside(path: &Path, ext: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{ext}"));
    path.with_file_name(name)
}

/// Writes `token` and the CA `ca_pem` as the credentials of the admin API at `url` (directory 0700,
/// token 0600).
pub fn remember(url: &str, token: &str, ca_pem: &str) -> Result<PathBuf> {
    let path = remember_token(url, token)?;
    let ca = beside(&path, "crt");
    let tmp = beside(&path, &format!("crt.{}", std::process::id()));
    std::fs::write(&tmp, ca_pem).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &ca).with_context(|| format!("writing {}", ca.display()))?;
    Ok(path)
}

fn remember_token(url: &str, token: &str) -> Result<PathBuf> {
    let path = credentials_path(url).context("neither XDG_CONFIG_HOME nor HOME is set")?;
    let dir = path.parent().expect("credentials live in a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let tmp = dir.join(format!(
        ".{}.{}",
        std::process::id(),
        path.file_name().unwrap().to_string_lossy()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(format!("{token}\n").as_bytes())?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The token the CLI sends to `url`: from `explicit` (a file) when given, else the credentials file
/// of that address, if there is one.
pub fn client_token(url: &str, explicit: Option<&Path>) -> Result<Option<String>> {
    if let Some(f) = explicit {
        return read_token(f)
            .with_context(|| format!("--token-file {}", f.display()))
            .map(Some);
    }
    match credentials_path(url) {
        Some(p) if p.exists() => read_token(&p).map(Some),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_made_once_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = server_token(dir.path(), None).unwrap();
        assert_eq!(a.len(), 64);
        let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(server_token(dir.path(), None).unwrap(), a);
        // Readable by others: refused, with the fix.
        std::fs::set_permissions(dir.path().join(TOKEN_FILE), std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = server_token(dir.path(), None).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn token_files_must_hold_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        std::fs::write(&f, "short\n").unwrap();
        let e = format!("{:#}", server_token(dir.path(), Some(&f)).unwrap_err());
        assert!(e.contains("--admin-token-file") && e.contains("at least 16"), "{e}");
        std::fs::write(&f, "0123456789abcdef0123\nignored").unwrap();
        assert_eq!(server_token(dir.path(), Some(&f)).unwrap(), "0123456789abcdef0123");
    }

    #[test]
    fn comparison_and_credential_paths() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd") && !same(b"abc", b"abcd"));
        let p = |u: &str| credentials_path(u).map(|p| p.file_name().unwrap().to_string_lossy().into_owned());
        if credentials_dir().is_some() {
            assert_eq!(p("http://127.0.0.1:7070").as_deref(), Some("127.0.0.1_7070"));
            assert_eq!(p("http://localhost:7070/").as_deref(), Some("127.0.0.1_7070"));
            assert_eq!(p("https://[::1]:7443").as_deref(), Some("--1_7443"));
            assert_eq!(p("http://a/../../x:1").as_deref(), Some("a_80"));
        }
    }
}
