//! Server configuration: `revisor.toml` as written, then checked and resolved into what `serve` uses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use revisor_api::units::parse_go_duration;
use revisor_api::Defaults;
use revisor_autoscaler::AutoscalerConfig;
use revisor_controller::gc::GcConfig;
use revisor_gateway::GatewayConfig;
use revisor_local::ImageCommand;
use serde::Deserialize;

pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:7070";
pub const DEFAULT_GATEWAY_ADDR: &str = "127.0.0.1:8080";
pub const DEFAULT_DOMAIN: &str = "localhost";

/// The file as written; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub gateway: RawGateway,
    #[serde(default)]
    pub runtime: RawRuntime,
    /// Knative's config-autoscaler keys, values as TOML numbers, booleans or strings.
    #[serde(default)]
    pub autoscaler: BTreeMap<String, toml::Value>,
    /// Knative's config-gc keys (revision garbage collection).
    #[serde(default)]
    pub gc: BTreeMap<String, toml::Value>,
    /// Local commands for images whose containers give none.
    #[serde(default)]
    pub images: BTreeMap<String, ImageCommand>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawGateway {
    pub max_header_bytes: Option<usize>,
    pub max_body_bytes: Option<u64>,
    pub activation_queue_depth: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawRuntime {
    pub progress_deadline: Option<String>,
    pub termination_grace_period: Option<String>,
    /// Fork replicas of revisor itself from a pre-fork server (default) instead of exec'ing them.
    pub prefork: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawServer {
    pub data_dir: Option<PathBuf>,
    pub admin_addr: Option<String>,
    pub gateway_addr: Option<String>,
    pub domain: Option<String>,
    /// The admin API's token file (else DATA_DIR/admin-token).
    pub admin_token_file: Option<PathBuf>,
    /// More names (DNS or IP) the admin API's certificate covers.
    #[serde(default)]
    pub admin_tls_san: Vec<String>,
    /// Knative's config-network `rollout-duration` (seconds, or a Go duration).
    pub rollout_duration: Option<toml::Value>,
}

/// Flags of `revisor serve`, which override the file.
#[derive(Debug, Default, Clone)]
pub struct ServeFlags {
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub admin_addr: Option<String>,
    pub gateway_addr: Option<String>,
    pub domain: Option<String>,
    pub admin_token_file: Option<PathBuf>,
    pub admin_tls_san: Vec<String>,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// Where the admin token is read from; `None`: DATA_DIR/admin-token.
    pub admin_token_file: Option<PathBuf>,
    /// Names the admin API's certificate covers beside loopback and the bound address.
    pub admin_tls_sans: Vec<String>,
    pub admin_addr: SocketAddr,
    pub gateway_addr: SocketAddr,
    pub domain: String,
    pub defaults: Defaults,
    pub gateway: GatewayConfig,
    pub images: BTreeMap<String, ImageCommand>,
    pub progress_deadline: Duration,
    pub termination_grace: Duration,
    /// Replicas running revisor itself are forked from a pre-fork server (`[runtime] prefork`).
    pub prefork: bool,
    pub autoscaler: AutoscalerConfig,
    pub gc: GcConfig,
    pub rollout_duration: Duration,
}

/// A table of Knative keys with TOML values, as the strings a ConfigMap would hold.
fn knative_map(section: &str, raw: &BTreeMap<String, toml::Value>) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for (k, v) in raw {
        let s = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => bail!("[{section}] {k}: expected a string, number or boolean, got {other}"),
        };
        map.insert(k.clone(), s);
    }
    Ok(map)
}

/// Reads `[gc]`: Knative's config-gc keys.
pub fn gc_config(raw: &BTreeMap<String, toml::Value>) -> Result<GcConfig> {
    GcConfig::from_map(&knative_map("gc", raw)?).map_err(|e| anyhow::anyhow!("[gc] in the config file: {e}"))
}

/// Reads `[autoscaler]`: Knative's keys, each value a string, number or boolean as in a ConfigMap.
pub fn autoscaler_config(raw: &BTreeMap<String, toml::Value>) -> Result<AutoscalerConfig> {
    let map = knative_map("autoscaler", raw)?;
    AutoscalerConfig::from_map(&map).map_err(|e| anyhow::anyhow!("[autoscaler] in the config file: {e}"))
}

pub const DEFAULT_PROGRESS_DEADLINE: &str = "600s";
pub const DEFAULT_TERMINATION_GRACE: &str = "10s";
/// Replicas of revisor itself are forked from the pre-fork server unless `[runtime] prefork = false`.
const DEFAULT_PREFORK: bool = true;

fn duration(key: &str, value: Option<&str>, default: &str) -> Result<Duration> {
    let v = value.unwrap_or(default);
    parse_go_duration(v).map_err(|e| anyhow::anyhow!("[runtime] {key}: {e}"))
}

impl RawConfig {
    pub fn load(path: &Path) -> Result<RawConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
    }
}

fn addr(what: &str, s: &str) -> Result<SocketAddr> {
    s.parse()
        .with_context(|| format!("{what} {s:?} is not an address like 127.0.0.1:7070"))
}

/// Where state lives when nobody says: `$XDG_STATE_HOME/revisor`, else `~/.local/state/revisor`.
pub fn default_data_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("revisor"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/state/revisor")),
        None => bail!("neither XDG_STATE_HOME nor HOME is set; pass --data-dir"),
    }
}

impl ServerConfig {
    pub fn resolve(flags: ServeFlags) -> Result<ServerConfig> {
        let raw = match &flags.config {
            Some(p) => RawConfig::load(p)?,
            None => RawConfig::default(),
        };
        let data_dir = match flags.data_dir.or(raw.server.data_dir) {
            Some(d) => d,
            None => default_data_dir()?,
        };
        let admin_addr = addr(
            "--admin-addr",
            flags
                .admin_addr
                .as_deref()
                .or(raw.server.admin_addr.as_deref())
                .unwrap_or(DEFAULT_ADMIN_ADDR),
        )?;
        let gateway_addr = addr(
            "--gateway-addr",
            flags
                .gateway_addr
                .as_deref()
                .or(raw.server.gateway_addr.as_deref())
                .unwrap_or(DEFAULT_GATEWAY_ADDR),
        )?;
        let domain = flags
            .domain
            .or(raw.server.domain)
            .unwrap_or_else(|| DEFAULT_DOMAIN.into());
        if domain.is_empty()
            || domain
                .split('.')
                .any(|l| revisor_api::names::dns1123_label_error(l).is_some())
        {
            bail!("--domain {domain:?} is not a DNS name like example.com or localhost");
        }
        raw.defaults
            .validate()
            .map_err(|e| anyhow::anyhow!("[defaults] in the config file: {e}"))?;
        let autoscaler = autoscaler_config(&raw.autoscaler)?;
        let gc = gc_config(&raw.gc)?;
        let rollout_duration = match &raw.server.rollout_duration {
            None => Duration::ZERO,
            Some(toml::Value::Integer(n)) if *n >= 0 => Duration::from_secs(*n as u64),
            Some(toml::Value::String(s)) => match s.parse::<u64>() {
                Ok(n) => Duration::from_secs(n),
                Err(_) => parse_go_duration(s).map_err(|e| anyhow::anyhow!("[server] rollout-duration: {e}"))?,
            },
            Some(other) => bail!("[server] rollout-duration: expected seconds or a duration like \"60s\", got {other}"),
        };
        let mut defaults = raw.defaults;
        defaults.allow_zero_initial_scale = autoscaler.allow_zero_initial_scale;
        defaults.max_scale_limit = autoscaler.max_scale_limit as i64;
        let mut gateway = GatewayConfig::default();
        if let Some(n) = raw.gateway.max_header_bytes {
            if n < 1024 {
                bail!("[gateway] max-header-bytes must be at least 1024, got {n}");
            }
            gateway.max_header_bytes = n;
        }
        if let Some(n) = raw.gateway.max_body_bytes {
            gateway.max_body_bytes = n;
        }
        if let Some(n) = raw.gateway.activation_queue_depth {
            if n == 0 {
                bail!("[gateway] activation-queue-depth must be at least 1");
            }
            gateway.activation_queue_depth = n;
        }
        for (image, cmd) in &raw.images {
            if cmd.command.is_empty() {
                bail!("[images.\"{image}\"] command must name a program");
            }
        }
        let progress_deadline = duration(
            "progress-deadline",
            raw.runtime.progress_deadline.as_deref(),
            DEFAULT_PROGRESS_DEADLINE,
        )?;
        let termination_grace = duration(
            "termination-grace-period",
            raw.runtime.termination_grace_period.as_deref(),
            DEFAULT_TERMINATION_GRACE,
        )?;
        Ok(ServerConfig {
            admin_token_file: flags.admin_token_file.or(raw.server.admin_token_file),
            admin_tls_sans: if flags.admin_tls_san.is_empty() {
                raw.server.admin_tls_san
            } else {
                flags.admin_tls_san
            },
            data_dir,
            admin_addr,
            gateway_addr,
            domain,
            defaults,
            gateway,
            images: raw.images,
            progress_deadline,
            termination_grace,
            prefork: raw.runtime.prefork.unwrap_or(DEFAULT_PREFORK),
            autoscaler,
            gc,
            rollout_duration,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_config_is_the_defaults() {
        let text = include_str!("../../../docs/revisor.example.toml");
        let raw: RawConfig = toml::from_str(text).expect("example config parses");
        assert_eq!(raw.defaults, Defaults::default());
        assert_eq!(raw.server.admin_addr.as_deref(), Some(DEFAULT_ADMIN_ADDR));
        assert_eq!(raw.server.gateway_addr.as_deref(), Some(DEFAULT_GATEWAY_ADDR));
        assert_eq!(raw.server.domain.as_deref(), Some(DEFAULT_DOMAIN));
        let g = GatewayConfig::default();
        assert_eq!(
            (raw.gateway.max_header_bytes, raw.gateway.max_body_bytes),
            (Some(g.max_header_bytes), Some(g.max_body_bytes))
        );
        assert_eq!(
            raw.runtime.progress_deadline.as_deref(),
            Some(DEFAULT_PROGRESS_DEADLINE)
        );
        assert_eq!(
            raw.runtime.termination_grace_period.as_deref(),
            Some(DEFAULT_TERMINATION_GRACE)
        );
        assert_eq!(raw.runtime.prefork, Some(DEFAULT_PREFORK));
        assert_eq!(raw.gateway.activation_queue_depth, Some(g.activation_queue_depth));
        assert_eq!(raw.images["example.com/hello:v1"].command[0], "sh");
        assert_eq!(
            raw.autoscaler.len(),
            revisor_autoscaler::config::KEYS.len(),
            "every key is documented"
        );
        assert_eq!(autoscaler_config(&raw.autoscaler).unwrap(), AutoscalerConfig::default());
        assert_eq!(
            raw.gc.len(),
            revisor_controller::gc::KEYS.len(),
            "every gc key is documented"
        );
        assert_eq!(gc_config(&raw.gc).unwrap(), GcConfig::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<RawConfig>("[server]\nadmin-adr = \"x\"\n")
            .unwrap_err()
            .to_string()
            .contains("admin-adr"));
        assert!(toml::from_str::<RawConfig>("[defaults]\nrevision-timeout = 1\n").is_err());
        let flags = ServeFlags {
            admin_addr: Some("nowhere".into()),
            data_dir: Some("/tmp/x".into()),
            ..Default::default()
        };
        assert!(ServerConfig::resolve(flags)
            .unwrap_err()
            .to_string()
            .contains("--admin-addr \"nowhere\""));
        let flags = ServeFlags {
            domain: Some("Bad_Domain".into()),
            data_dir: Some("/tmp/x".into()),
            ..Default::default()
        };
        assert!(ServerConfig::resolve(flags).is_err());
        let raw: RawConfig = toml::from_str("[autoscaler]\nstable-window = \"2s\"\n").unwrap();
        let err = autoscaler_config(&raw.autoscaler).unwrap_err().to_string();
        assert!(err.contains("[autoscaler]") && err.contains("stable-window"), "{err}");
        assert!(
            toml::from_str::<RawConfig>("[defaults]\nmax-scale-limit = 3\n").is_err(),
            "set under [autoscaler]"
        );
    }
}
