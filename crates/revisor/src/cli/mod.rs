//! The command line: flags as clap parses them, then one function per command.

mod apply;
mod describe;
pub mod export;
mod get;
mod rollout;
mod simulate;
mod table;
mod traffic;

use std::path::PathBuf;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::client::Client;
use crate::config::{ServeFlags, ServerConfig, DEFAULT_ADMIN_ADDR};

#[derive(Debug, Parser)]
#[command(
    name = "revisor",
    version,
    about = "Knative-style revisions and progressive delivery for ML models, in one binary"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// How log lines are written to standard error: `text` for people, `json` (one object per line,
    /// with its fields) for log collectors. Which lines: `REVISOR_LOG` or `RUST_LOG` (default `info`).
    #[arg(long, global = true, value_enum, env = "REVISOR_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `--server`, on the commands that talk to the admin API (and, through `rollout`, its subcommands).
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArg {
    /// The revisor server to talk to.
    #[arg(long, global = true, env = "REVISOR_SERVER", default_value_t = format!("https://{DEFAULT_ADMIN_ADDR}"))]
    pub server: String,
    /// The file holding the server's admin token [default: the credentials the server wrote for its
    /// address under ~/.config/revisor/credentials].
    #[arg(long, global = true, env = "REVISOR_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The CA that signed the server's certificate [default: the one the server wrote beside its
    /// credentials, else the system's].
    #[arg(long, global = true, env = "REVISOR_CA_FILE", value_name = "FILE")]
    pub certificate_authority: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: store, controller and admin API.
    Serve {
        /// Config file (revisor.toml); flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the state lives [default: $XDG_STATE_HOME/revisor].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Admin API address [default: 127.0.0.1:7070].
        #[arg(long)]
        admin_addr: Option<String>,
        /// Gateway address; service URLs use its port [default: 127.0.0.1:8080].
        #[arg(long)]
        gateway_addr: Option<String>,
        /// Domain of service URLs [default: localhost].
        #[arg(long)]
        domain: Option<String>,
        /// What runs the revisions: this machine, or a Kubernetes cluster with Knative Serving.
        #[arg(long, value_enum, default_value_t = BackendArg::Local)]
        backend: BackendArg,
        /// With --backend knative: the kubeconfig [default: $KUBECONFIG, ~/.kube/config, or in-cluster].
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// With --backend knative: the kubeconfig context [default: its current context].
        #[arg(long)]
        context: Option<String>,
        /// With --backend knative: the one namespace to work in [default: every namespace].
        #[arg(long)]
        namespace: Option<String>,
        /// With --backend knative: the Prometheus that scrapes Knative's queue-proxies (for analysis).
        #[arg(long)]
        prometheus: Option<String>,
        /// The admin API's bearer token, from this file [default: DATA_DIR/admin-token, made at first
        /// start with mode 0600].
        #[arg(long)]
        admin_token_file: Option<PathBuf>,
        /// Another name (DNS or IP) the admin API's certificate covers; repeat for more.
        #[arg(long)]
        admin_tls_san: Vec<String>,
    },
    /// Serve one ONNX model over the Open Inference Protocol (what a model revision runs).
    ModelServer {
        /// The model: a path, file://, http:// or https:// URI.
        #[arg(long)]
        model: String,
        /// The model file's expected sha256 (hex); a download is checked against it and cached by it.
        #[arg(long)]
        sha256: Option<String>,
        /// Where downloaded models are cached [default: $REVISOR_MODEL_CACHE, else ~/.cache/revisor/models].
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// The largest model download accepted, in bytes: a larger one fails start-up and leaves nothing
        /// in the cache.
        #[arg(long, default_value_t = revisor_model::storage::DEFAULT_MAX_MODEL_BYTES)]
        max_model_bytes: u64,
        /// The model's name in URLs.
        #[arg(long, default_value = "model")]
        name: String,
        /// The model's version.
        #[arg(long, default_value = "1")]
        version: String,
        /// Port to listen on [default: $PORT].
        #[arg(long)]
        port: Option<u16>,
        /// Merge concurrent requests into batches of up to this many rows (dynamic batching).
        #[arg(long)]
        max_batch_size: Option<usize>,
        /// How long a batch waits for more requests (Go duration, like 2ms).
        #[arg(long, default_value = "1ms")]
        max_batch_delay: String,
        /// Address to listen on (0.0.0.0 in a container).
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// The inference engine: tract (built in) or ONNX Runtime (loaded from --onnxruntime-lib).
        #[arg(long, value_enum, default_value_t = EngineArg::Tract)]
        engine: EngineArg,
        /// The ONNX Runtime shared library for --engine onnxruntime (PyPI's onnxruntime ships one as
        /// onnxruntime/capi/libonnxruntime.so.<version>).
        #[arg(long, env = "REVISOR_ONNXRUNTIME_LIB")]
        onnxruntime_lib: Option<PathBuf>,
    },
    /// Write an ONNX model as the ONNX Runtime engine opens it, with revisor's load-time rewrites, and
    /// say what was rewritten.
    RewriteModel {
        /// The ONNX model file.
        #[arg(long)]
        model: PathBuf,
        /// Where to write the model as ONNX Runtime gets it (the same bytes when nothing applies).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write the example models (tabular v1, v2 and a faulty v3) into a directory.
    ExampleModels {
        /// The directory to write them into (created if missing).
        #[arg(long, default_value = "models")]
        out: PathBuf,
    },
    /// Create or update resources from manifest files (YAML or JSON, several documents each).
    Apply {
        /// Manifest files; `-` reads standard input.
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// Namespace of objects that name none; an object naming another one is refused.
        #[arg(short, long, value_parser = object_name)]
        namespace: Option<String>,
        /// Check everything on the server, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not wait for the controller to observe the change.
        #[arg(long, conflicts_with = "wait")]
        no_wait: bool,
        /// Wait until every applied service is Ready and print its URL; fail with the revision's reason
        /// if it is not Ready within --timeout.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits (Go duration, like 90s or 5m).
        #[arg(long, default_value = "5m", requires = "wait")]
        timeout: String,
        /// Take fields that another field manager owns (with --backend knative; as kubectl's).
        #[arg(long)]
        force_conflicts: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List services, revisions or Rollouts.
    Get {
        /// What to list: services (ksvc, svc), revisions (rev) or rollouts (ro).
        kind: Kind,
        /// Only this one.
        #[arg(value_parser = object_name)]
        name: Option<String>,
        /// The namespace to look in.
        #[arg(short, long, default_value = "default", value_parser = object_name)]
        namespace: String,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Only objects with these labels: key=value[,key=value].
        #[arg(short = 'l', long, conflicts_with = "name")]
        selector: Option<String>,
        /// After the list, keep printing objects as they change (every second), until interrupted.
        #[arg(short, long)]
        watch: bool,
        /// A table, or the objects as YAML or JSON.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Show a service, a revision or a Rollout in detail.
    Describe {
        /// What to show: a service (ksvc, svc), a revision (rev) or a rollout (ro).
        kind: Kind,
        /// Its name.
        #[arg(value_parser = object_name)]
        name: String,
        /// Its namespace.
        #[arg(short, long, default_value = "default", value_parser = object_name)]
        namespace: String,
        /// Print the object as YAML or JSON instead of the description.
        #[arg(short, long, value_enum)]
        output: Option<ObjectOutput>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Delete a service (with its revisions), a revision or a Rollout.
    Delete {
        /// What to delete: a service (ksvc, svc), a revision (rev) or a rollout (ro).
        kind: Kind,
        /// Its name.
        #[arg(value_parser = object_name)]
        name: String,
        /// Its namespace.
        #[arg(short, long, default_value = "default", value_parser = object_name)]
        namespace: String,
        /// Delete a revision even though traffic, a tag or a Rollout references it.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Change a service's traffic split and tags, kn-style.
    Traffic {
        /// The service.
        #[arg(value_parser = object_name)]
        service: String,
        /// Its namespace.
        #[arg(short, long, default_value = "default", value_parser = object_name)]
        namespace: String,
        /// REF=PERCENT, where REF is a revision, a tag or @latest; one target left out gets the rest.
        #[arg(long = "traffic", value_delimiter = ',')]
        traffic: Vec<String>,
        /// REVISION=TAG (REVISION may be @latest).
        #[arg(long = "tag", value_delimiter = ',')]
        tags: Vec<String>,
        /// Remove a tag.
        #[arg(long = "untag", value_delimiter = ',')]
        untags: Vec<String>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Show the output of a revision's replicas.
    Logs {
        /// The revision.
        #[arg(value_parser = object_name)]
        revision: String,
        /// Its namespace.
        #[arg(short, long, default_value = "default", value_parser = object_name)]
        namespace: String,
        /// Keep printing new output.
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Show the whole thing in a minute or two: a model rolled out to live traffic, a canary
    /// promoted on live metrics, a faulty one rolled back by itself. Needs nothing else running.
    Demo,
    /// Write Services (and their Rollouts) for another tool: Knative YAML for kubectl, or a Pulumi
    /// program (YAML or Python) declaring the same Knative Service.
    Export {
        /// Manifest files to export (without the server).
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
        /// A service to export from the server, with its Rollout.
        #[arg(value_parser = object_name)]
        service: Option<String>,
        /// The namespace of the service, and of manifest objects that name none.
        #[arg(short, long, default_value = "default", value_parser = object_name)]
        namespace: String,
        /// What to write.
        #[arg(long, value_enum, default_value_t = export::Format::Knative)]
        format: export::Format,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Print the Rollout CustomResourceDefinition (rollouts.revisor.dev) for `kubectl apply`.
    Crd,
    /// Run a Rollout many times on a simulated clock against synthetic traffic (the real state machine
    /// and analysis), and say how often and how fast it promotes or rolls back.
    Simulate {
        /// A manifest file holding the Rollout (other documents in it are ignored).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// The scenario: rate, duration, and each revision's errorRate and latency (median, sigma).
        #[arg(long)]
        scenario: PathBuf,
        /// Rollouts to simulate, with seeds 0, 1, ... (each reproduces on its own).
        #[arg(long, default_value_t = 1000)]
        seeds: u64,
        /// A summary table, or one JSON object per seed and then `{"summary": ...}`.
        #[arg(short, long, value_enum, default_value_t = SimOutput::Table)]
        output: SimOutput,
    },
    /// Operate a Rollout: status, watch, promote, abort, retry, pause, resume, undo.
    Rollout {
        #[command(subcommand)]
        command: rollout::RolloutCommand,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Show a service's events.
    Events {
        /// The service.
        #[arg(value_parser = object_name)]
        service: String,
        /// Its namespace.
        #[arg(short, long, default_value = "default", value_parser = object_name)]
        namespace: String,
        /// A table, or the events as YAML or JSON.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Print a kubeconfig for the server (its URL, its CA and the admin token), so that kubectl and
    /// Kubernetes client libraries reach it with no flags:
    /// `revisor kubeconfig > ~/.kube/revisor && kubectl --kubeconfig ~/.kube/revisor get ksvc`
    Kubeconfig {
        #[command(flatten)]
        server: ServerArg,
    },
    /// Open the dashboard (`/ui` on the admin address) in a browser, logged in with the admin token;
    /// prints the link too (it carries the token: keep it to yourself).
    Dashboard {
        #[command(flatten)]
        server: ServerArg,
        /// Only print the link.
        #[arg(long)]
        no_browser: bool,
    },
    /// Print a shell completion script: `source <(revisor completions bash)`, or save it where the
    /// shell loads completions from.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

impl Command {
    /// The admin API a command talks to, or `None` for one that talks to no server.
    pub fn server(&self) -> Option<&str> {
        self.server_arg().map(|s| s.server.as_str())
    }

    /// The `--server` and `--token-file` of a command that talks to the admin API.
    pub fn server_arg(&self) -> Option<&ServerArg> {
        match self {
            Command::Apply { server, .. }
            | Command::Get { server, .. }
            | Command::Describe { server, .. }
            | Command::Delete { server, .. }
            | Command::Traffic { server, .. }
            | Command::Logs { server, .. }
            | Command::Export { server, .. }
            | Command::Rollout { server, .. }
            | Command::Events { server, .. }
            | Command::Kubeconfig { server }
            | Command::Dashboard { server, .. } => Some(server),
            Command::Serve { .. }
            | Command::ModelServer { .. }
            | Command::ExampleModels { .. }
            | Command::RewriteModel { .. }
            | Command::Demo
            | Command::Crd
            | Command::Simulate { .. }
            | Command::Completions { .. } => None,
        }
    }

    /// Whether the command runs a server, which must outlive clients that hang up on it.
    pub fn is_server(&self) -> bool {
        matches!(
            self,
            Command::Serve { .. } | Command::ModelServer { .. } | Command::Demo
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SimOutput {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineArg {
    /// tract, built into revisor.
    Tract,
    /// ONNX Runtime, loaded from --onnxruntime-lib.
    Onnxruntime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Knative Services (also service, ksvc, svc).
    #[value(alias = "service", alias = "ksvc", alias = "svc")]
    Services,
    /// Revisions (also revision, rev).
    #[value(alias = "revision", alias = "rev")]
    Revisions,
    /// Rollouts (also rollout, ro).
    #[value(alias = "rollout", alias = "ro")]
    Rollouts,
}

impl Kind {
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Services => "services",
            Kind::Revisions => "revisions",
            Kind::Rollouts => "rollouts",
        }
    }

    /// The API group path the kind lives under.
    pub fn base(self) -> &'static str {
        match self {
            Kind::Rollouts => crate::client::ROLLOUTS,
            _ => crate::client::SERVING,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// Revisions as local processes behind revisor's gateway.
    Local,
    /// Knative Serving on a Kubernetes cluster; revisor drives the Rollouts.
    Knative,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// The objects as YAML.
    Yaml,
    /// The objects as JSON.
    Json,
}

/// What `describe` and `rollout status` print instead of their text: the object itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ObjectOutput {
    /// The object as YAML.
    Yaml,
    /// The object as JSON.
    Json,
}

impl From<ObjectOutput> for Output {
    fn from(o: ObjectOutput) -> Output {
        match o {
            ObjectOutput::Yaml => Output::Yaml,
            ObjectOutput::Json => Output::Json,
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    if let Command::Serve {
        config,
        data_dir,
        admin_addr,
        gateway_addr,
        domain,
        backend,
        kubeconfig,
        context,
        namespace,
        prometheus,
        admin_token_file,
        admin_tls_san,
    } = cli.command
    {
        let cfg = ServerConfig::resolve(ServeFlags {
            config,
            data_dir,
            admin_addr,
            gateway_addr,
            domain,
            admin_token_file,
            admin_tls_san,
        })?;
        if backend == BackendArg::Local {
            // Before any thread starts (the lifeline is forked; see revisor-runtime's lifeline.rs).
            if let Err(e) = revisor_runtime::lifeline::start() {
                tracing::warn!(
                    "no lifeline for the replicas ({e}): if this server is killed, its replicas are ended at its next start"
                );
            }
        }
        let rt = tokio::runtime::Runtime::new()?;
        return match backend {
            BackendArg::Local => {
                let cluster_flags = [
                    ("--kubeconfig", kubeconfig.is_some()),
                    ("--context", context.is_some()),
                    ("--namespace", namespace.is_some()),
                    ("--prometheus", prometheus.is_some()),
                ];
                if let Some((flag, _)) = cluster_flags.iter().find(|(_, set)| *set) {
                    anyhow::bail!("{flag} needs --backend knative");
                }
                rt.block_on(crate::server::serve(cfg))
            }
            BackendArg::Knative => rt.block_on(crate::server::serve_knative(
                cfg,
                crate::server::KnativeFlags {
                    kubeconfig,
                    context,
                    namespace,
                    prometheus,
                },
            )),
        };
    }
    match &cli.command {
        Command::ModelServer {
            model,
            sha256,
            cache_dir,
            max_model_bytes,
            name,
            version,
            port,
            host,
            max_batch_size,
            max_batch_delay,
            engine,
            onnxruntime_lib,
        } => {
            let engine = match (engine, onnxruntime_lib) {
                (EngineArg::Tract, _) => revisor_model::model::Engine::Tract,
                (EngineArg::Onnxruntime, Some(lib)) => revisor_model::model::Engine::OnnxRuntime { library: lib.clone() },
                (EngineArg::Onnxruntime, None) => anyhow::bail!(
                    "--engine onnxruntime needs the ONNX Runtime library: pass --onnxruntime-lib PATH or set REVISOR_ONNXRUNTIME_LIB"
                ),
            };
            let source = crate::model_server::Source {
                uri: model,
                sha256: sha256.as_deref(),
                cache: cache_dir.clone(),
                max_bytes: *max_model_bytes,
                engine,
            };
            let batching = crate::model_server::batching(*max_batch_size, max_batch_delay)?;
            return crate::model_server::run(&source, name, version, host, *port, batching);
        }
        Command::ExampleModels { out } => return crate::model_server::write_examples(out),
        Command::RewriteModel { model, out } => return crate::model_server::rewrite_model(model, out),
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "revisor", &mut std::io::stdout().lock());
            return Ok(());
        }
        Command::Demo => return crate::demo::run(),
        Command::Kubeconfig { server } => {
            print!("{}", kubeconfig(server)?);
            return Ok(());
        }
        Command::Dashboard { server, no_browser } => return dashboard(server, *no_browser),
        Command::Crd => {
            print!("{}", serde_norway::to_string(&revisor_api::rollout::crd())?);
            return Ok(());
        }
        Command::Simulate {
            file,
            scenario,
            seeds,
            output,
        } => return simulate::run(file, scenario, *seeds, *output == SimOutput::Json),
        Command::Export {
            files,
            service: None,
            namespace,
            format,
            server: _,
        } => {
            let objects = export::objects(None, files, None, namespace)?;
            print!("{}", export::render(&objects, *format)?);
            return Ok(());
        }
        _ => {}
    }
    let server = cli
        .command
        .server_arg()
        .expect("commands without a server are handled above");
    let client = Client::with_credentials(
        &server.server,
        server.token_file.as_deref(),
        server.certificate_authority.as_deref(),
    )?;
    match cli.command {
        Command::Serve { .. }
        | Command::ModelServer { .. }
        | Command::ExampleModels { .. }
        | Command::RewriteModel { .. }
        | Command::Demo
        | Command::Crd
        | Command::Simulate { .. }
        | Command::Kubeconfig { .. }
        | Command::Dashboard { .. }
        | Command::Completions { .. } => {
            unreachable!("handled above")
        }
        Command::Apply {
            files,
            namespace,
            dry_run,
            no_wait,
            wait,
            timeout,
            force_conflicts,
            server: _,
        } => apply::run(
            &client,
            &files,
            namespace.as_deref(),
            apply::Flags {
                dry_run,
                wait: apply::Wait::from_flags(wait, no_wait, &timeout)?,
                force_conflicts,
            },
        ),
        Command::Get {
            kind,
            name,
            namespace,
            all_namespaces,
            selector,
            watch,
            output,
            server: _,
        } => {
            let ns = if all_namespaces { None } else { Some(namespace.as_str()) };
            let query = get::Query {
                kind,
                name: name.as_deref(),
                ns,
                selector: get::selector(selector.as_deref())?,
            };
            get::run(&client, &query, output, watch)
        }
        Command::Describe {
            kind,
            name,
            namespace,
            output,
            server: _,
        } => describe::run(&client, kind, &name, &namespace, output),
        Command::Delete {
            kind,
            name,
            namespace,
            force,
            server: _,
        } => {
            let plural = kind.plural();
            let force = if force { "?force=true" } else { "" };
            client.delete(&format!(
                "{}/namespaces/{namespace}/{plural}/{name}{force}",
                kind.base()
            ))?;
            println!("{}/{name} deleted", &plural[..plural.len() - 1]);
            Ok(())
        }
        Command::Traffic {
            service,
            namespace,
            traffic,
            tags,
            untags,
            server: _,
        } => traffic::run(
            &client,
            &service,
            &namespace,
            revisor_traffic::TrafficEdit { traffic, tags, untags },
        ),
        Command::Logs {
            revision,
            namespace,
            follow,
            server: _,
        } => {
            let path = format!(
                "{}/namespaces/{namespace}/revisions/{revision}/log?follow={follow}",
                crate::client::SERVING
            );
            client.stream_to(&path, &mut std::io::stdout().lock())
        }
        Command::Events {
            service,
            namespace,
            output,
            server: _,
        } => describe::events(&client, &service, &namespace, output),
        Command::Export {
            files,
            service,
            namespace,
            format,
            server: _,
        } => {
            let objects = export::objects(Some(&client), &files, service.as_deref(), &namespace)?;
            print!("{}", export::render(&objects, format)?);
            Ok(())
        }
        Command::Rollout { command, server: _ } => {
            let code = rollout::run(&client, command)?;
            if code != 0 {
                use std::io::Write;
                let _ = std::io::stdout().flush();
                std::process::exit(code);
            }
            Ok(())
        }
    }
}

/// A name or namespace as the CLI puts it into a URL: a DNS-1123 label, so that nothing like
/// `../services/x` can turn a request into another one.
pub(crate) fn object_name(s: &str) -> Result<String, String> {
    match revisor_api::names::dns1123_label_error(s) {
        None => Ok(s.to_string()),
        Some(e) => Err(e),
    }
}

/// Prints an aligned table (for other modules of the binary).
pub fn table_print(headers: &[&str], rows: &[Vec<String>]) {
    table::print(headers, rows)
}

/// Prints a value as YAML or JSON.
pub fn print_value(v: &serde_json::Value, output: Output) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(v)?),
        _ => print!("{}", serde_norway::to_string(v)?),
    }
    Ok(())
}

/// A kubeconfig for the admin API at `server.server`: the token and CA the CLI would use (from
/// `--token-file` and `--certificate-authority`, else those the server wrote for this address).
/// The admin token for `server`, or an error that says where it is found.
fn token_of(server: &ServerArg) -> Result<String> {
    let url = server.server.trim_end_matches('/');
    crate::auth::client_token(url, server.token_file.as_deref())?.ok_or_else(|| {
        anyhow::anyhow!(
            "no admin token for {url}: run this on the server's machine (its token is in \
             ~/.config/revisor/credentials), or pass --token-file FILE"
        )
    })
}

/// `revisor dashboard`: the login link (which sets the cookie and goes to `/ui`), printed, and opened
/// in the desktop's browser unless `--no-browser`. The browser is given a file that redirects to the
/// link (in the credentials directory, readable by this user only), not the link itself: a command
/// line is visible to every user of the machine (`ps`).
fn dashboard(server: &ServerArg, no_browser: bool) -> Result<()> {
    let url = server.server.trim_end_matches('/');
    let link = format!("{url}{}?token={}", crate::admin::guard::LOGIN, token_of(server)?);
    println!("{link}");
    if no_browser {
        return Ok(());
    }
    let opened = redirect_file(&link).and_then(|page| {
        let status = std::process::Command::new("xdg-open")
            .arg(&page)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "xdg-open {}: {status}", page.display());
        Ok(())
    });
    if let Err(e) = opened {
        eprintln!("could not open a browser ({e:#}): open the link above");
    }
    Ok(())
}

/// A page, readable by this user only, that sends a browser on to `link`.
fn redirect_file(link: &str) -> Result<std::path::PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = crate::auth::credentials_dir().ok_or_else(|| anyhow::anyhow!("no home directory"))?;
    std::fs::create_dir_all(&dir)?;
    let page = dir.join("dashboard.html");
    let escaped = link.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;");
    let _ = std::fs::remove_file(&page);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&page)?;
    writeln!(
        f,
        "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=\"0; url={escaped}\">\
         <title>revisor</title><a href=\"{escaped}\">revisor's dashboard</a>"
    )?;
    Ok(page)
}

fn kubeconfig(server: &ServerArg) -> Result<String> {
    use base64::Engine;
    let url = server.server.trim_end_matches('/');
    let token = token_of(server)?;
    let ca = match &server.certificate_authority {
        Some(f) => Some(std::fs::read(f).map_err(|e| anyhow::anyhow!("--certificate-authority {}: {e}", f.display()))?),
        None => crate::auth::ca_path(url)
            .filter(|p| p.exists())
            .map(std::fs::read)
            .transpose()?,
    };
    let mut cluster = serde_json::json!({ "server": url });
    if let Some(pem) = ca.filter(|_| url.starts_with("https://")) {
        cluster["certificate-authority-data"] = base64::engine::general_purpose::STANDARD.encode(pem).into();
    }
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "revisor", "cluster": cluster }],
        "users": [{ "name": "revisor", "user": { "token": token } }],
        "contexts": [{ "name": "revisor", "context": { "cluster": "revisor", "user": "revisor", "namespace": "default" } }],
        "current-context": "revisor",
    });
    Ok(serde_norway::to_string(&config)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command and every argument says what it is for in `--help` (clap's own help and version
    /// flags aside).
    #[test]
    fn every_command_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("`{path}` argument {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(format!("`{path}`"));
                }
                walk(sub, &path, missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "revisor", &mut missing);
        assert!(missing.is_empty(), "no help text:\n{}", missing.join("\n"));
    }

    #[test]
    fn only_commands_that_talk_to_a_server_take_server() {
        let mut cmd = Cli::command();
        cmd.build();
        let takes = |path: &[&str]| {
            let mut c = &cmd;
            for name in path {
                c = c.find_subcommand(name).unwrap();
            }
            c.get_arguments().any(|a| a.get_id() == "server")
        };
        for path in [
            &["apply"][..],
            &["get"],
            &["describe"],
            &["delete"],
            &["traffic"],
            &["logs"],
            &["events"],
            &["export"],
            &["rollout"],
            &["rollout", "status"],
            &["rollout", "undo"],
        ] {
            assert!(takes(path), "{path:?} has no --server");
        }
        for path in [
            &["serve"][..],
            &["model-server"],
            &["demo"],
            &["example-models"],
            &["crd"],
            &["completions"],
        ] {
            assert!(!takes(path), "{path:?} has --server");
        }
        assert!(!cmd.get_arguments().any(|a| a.get_id() == "server"));
    }

    #[test]
    fn server_goes_before_or_after_a_rollout_subcommand() {
        for args in [
            &["revisor", "rollout", "--server", "http://h:1", "status", "r"][..],
            &["revisor", "rollout", "status", "r", "--server", "http://h:1"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert_eq!(cli.command.server(), Some("http://h:1"), "{args:?}");
        }
    }
}
