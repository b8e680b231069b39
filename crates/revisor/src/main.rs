//! The `revisor` binary: parses the command line and runs it; errors are printed once, with their causes.

use clap::Parser;
use revisor::cli;

/// mimalloc: the gateway allocates per request, and glibc's malloc showed up in its profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == revisor_runtime::prefork::COMMAND) {
        // Inherited by every child it forks, as `model-server` would set it for itself below.
        no_transparent_huge_pages();
        revisor_runtime::prefork::serve(run);
    }
    std::process::exit(run(args))
}

/// Everything `main` does after collecting its arguments; the pre-fork server's children start here.
fn run(args: Vec<std::ffi::OsString>) -> i32 {
    let cli = cli::Cli::parse_from(args);
    logs(cli.log_format);
    // Not for `demo` either: the flag survives fork and exec, and the `revisor serve` it starts would
    // inherit it.
    if matches!(cli.command, cli::Command::Serve { .. } | cli::Command::Demo) {
        revisor_model::purge_freed_memory_after(std::time::Duration::from_secs(2));
    } else {
        no_transparent_huge_pages();
    }
    if !cli.command.is_server() {
        die_quietly_when_output_is_closed();
    }
    match cli::run(cli) {
        Err(e) if !is_broken_pipe(&e) => {
            eprintln!("error: {e:#}");
            1
        }
        _ => 0,
    }
}

/// Log lines on standard error, as `--log-format` says, filtered by `REVISOR_LOG` (else `RUST_LOG`,
/// else `info`); colours only on a terminal (a replica's log file gets none).
fn logs(format: cli::LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("REVISOR_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| "info".into());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        cli::LogFormat::Text => fmt.init(),
        cli::LogFormat::Json => fmt.json().flatten_event(true).init(),
    }
}

/// Turns transparent huge pages off for this process: mimalloc asks for them on its arena, so each
/// first touch of a 2 MiB region zeroes a whole huge page, which a short-lived command or a model
/// server starting pays for (revisor-local also sets `MIMALLOC_ALLOW_THP=0` for the replicas that run
/// this binary, which takes effect before the first allocation). `serve` keeps them: its steady
/// state ran with less CPU with them (bench/RESULTS.md).
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(2) with integer arguments changes only this process's THP flag.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `revisor get services | head -1`: once the reader of standard output is gone, end the way a Unix tool
/// does, killed by SIGPIPE without a word, instead of panicking in `println!` (Rust ignores SIGPIPE, so a
/// write to a closed pipe is an error, and the print macros panic on it). Servers keep ignoring it: their
/// clients hang up all the time.
fn die_quietly_when_output_is_closed() {
    // SAFETY: only restores the default action of SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
