//! The `revisor` binary: parses the command line and runs it; errors are printed once, with their causes.

use clap::Parser;
use revisor::cli;

/// mimalloc: the gateway allocates per request, and glibc's malloc showed up in its profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    no_transparent_huge_pages();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("REVISOR_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = cli::Cli::parse();
    if !cli.command.is_server() {
        die_quietly_when_output_is_closed();
    }
    if let Err(e) = cli::run(cli) {
        if is_broken_pipe(&e) {
            return;
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Turns transparent huge pages off for this process. mimalloc asks for them on its 1 GiB arena, so
/// every first touch of a 2 MiB region zeroes a whole huge page: a model server's start-up spent most
/// of its time there (a cold start took 38-48 ms with them, 12-20 ms without, bench/RESULTS.md), and
/// each replica kept megabytes it never used. The setting is inherited by children; the runtime gives
/// the replicas it starts the system's default again.
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
