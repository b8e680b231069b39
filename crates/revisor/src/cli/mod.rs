//! The command line: flags as clap parses them, then one function per command.

mod apply;
mod describe;
pub mod export;
mod get;
mod rollout;
mod table;
mod traffic;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

use crate::client::Client;
use crate::config::{ServeFlags, ServerConfig, DEFAULT_ADMIN_ADDR};

#[derive(Debug, Parser)]
#[command(
    name = "revisor",
    version,
    about = "Knative-style revisions and progressive delivery for ML models, in one binary"
)]
pub struct Cli {
    /// The revisor server to talk to.
    #[arg(long, global = true, env = "REVISOR_SERVER", default_value_t = format!("http://{DEFAULT_ADMIN_ADDR}"))]
    pub server: String,
    #[command(subcommand)]
    pub command: Command,
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
    /// Write the example models (tabular v1, v2 and a faulty v3) into a directory.
    ExampleModels {
        #[arg(long, default_value = "models")]
        out: PathBuf,
    },
    /// Create or update resources from manifest files (YAML or JSON, several documents each).
    Apply {
        /// Manifest files; `-` reads standard input.
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        #[arg(short, long)]
        namespace: Option<String>,
        /// Check everything on the server, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not wait for the controller to observe the change.
        #[arg(long)]
        no_wait: bool,
        /// Take fields that another field manager owns (with --backend knative; as kubectl's).
        #[arg(long)]
        force_conflicts: bool,
    },
    /// List services or revisions.
    Get {
        kind: Kind,
        name: Option<String>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show a service in detail.
    Describe {
        kind: Kind,
        name: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Delete a service (with its revisions) or one revision.
    Delete {
        kind: Kind,
        name: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Change a service's traffic split and tags, kn-style.
    Traffic {
        service: String,
        #[arg(short, long, default_value = "default")]
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
    },
    /// Show the output of a revision's replicas.
    Logs {
        revision: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Keep printing new output.
        #[arg(short, long)]
        follow: bool,
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
        service: Option<String>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[arg(long, value_enum, default_value_t = export::Format::Knative)]
        format: export::Format,
    },
    /// Print the Rollout CustomResourceDefinition (rollouts.revisor.dev) for `kubectl apply`.
    Crd,
    /// Operate a Rollout: status, watch, promote, abort, retry, pause, resume, undo.
    Rollout {
        #[command(subcommand)]
        command: rollout::RolloutCommand,
    },
    /// Show a service's events.
    Events {
        service: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineArg {
    Tract,
    Onnxruntime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    #[value(alias = "service", alias = "ksvc", alias = "svc")]
    Services,
    #[value(alias = "revision", alias = "rev")]
    Revisions,
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
    Table,
    Yaml,
    Json,
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
    } = cli.command
    {
        let cfg = ServerConfig::resolve(ServeFlags {
            config,
            data_dir,
            admin_addr,
            gateway_addr,
            domain,
        })?;
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
                engine,
            };
            let batching = crate::model_server::batching(*max_batch_size, max_batch_delay)?;
            return crate::model_server::run(&source, name, version, host, *port, batching);
        }
        Command::ExampleModels { out } => return crate::model_server::write_examples(out),
        Command::Demo => return crate::demo::run(),
        Command::Crd => {
            print!("{}", serde_yaml::to_string(&revisor_api::rollout::crd())?);
            return Ok(());
        }
        Command::Export {
            files,
            service: None,
            namespace,
            format,
        } => {
            let objects = export::objects(None, files, None, namespace)?;
            print!("{}", export::render(&objects, *format)?);
            return Ok(());
        }
        _ => {}
    }
    let client = Client::new(&cli.server)?;
    match cli.command {
        Command::Serve { .. }
        | Command::ModelServer { .. }
        | Command::ExampleModels { .. }
        | Command::Demo
        | Command::Crd => {
            unreachable!("handled above")
        }
        Command::Apply {
            files,
            namespace,
            dry_run,
            no_wait,
            force_conflicts,
        } => apply::run(
            &client,
            &files,
            namespace.as_deref(),
            apply::Flags {
                dry_run,
                wait: !no_wait,
                force_conflicts,
            },
        ),
        Command::Get {
            kind,
            name,
            namespace,
            all_namespaces,
            output,
        } => {
            let ns = if all_namespaces { None } else { Some(namespace.as_str()) };
            get::run(&client, kind, name.as_deref(), ns, output)
        }
        Command::Describe { kind, name, namespace } => describe::run(&client, kind, &name, &namespace),
        Command::Delete { kind, name, namespace } => {
            let plural = kind.plural();
            client.delete(&format!("{}/namespaces/{namespace}/{plural}/{name}", kind.base()))?;
            println!("{}/{name} deleted", &plural[..plural.len() - 1]);
            Ok(())
        }
        Command::Traffic {
            service,
            namespace,
            traffic,
            tags,
            untags,
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
        } => describe::events(&client, &service, &namespace, output),
        Command::Export {
            files,
            service,
            namespace,
            format,
        } => {
            let objects = export::objects(Some(&client), &files, service.as_deref(), &namespace)?;
            print!("{}", export::render(&objects, format)?);
            Ok(())
        }
        Command::Rollout { command } => {
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

/// Prints an aligned table (for other modules of the binary).
pub fn table_print(headers: &[&str], rows: &[Vec<String>]) {
    table::print(headers, rows)
}

/// Prints a value as YAML or JSON.
pub fn print_value(v: &serde_json::Value, output: Output) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(v)?),
        _ => print!("{}", serde_yaml::to_string(v)?),
    }
    Ok(())
}
