//! `nexa`: the Nexa Forge node binary.
//!
//! - `nexa up` — a control plane and one local worker in one process, data in `./var/`: the
//!   platform on a laptop with one command.
//! - `nexa server` — the control plane: the job store and the QUIC port workers join.
//! - `nexa worker` — a worker that joins a control plane and runs jobs.
//! - `nexa bench` — the platform measured: scenarios run in this process or against a
//!   running control plane, results as JSON, and two results compared.

mod bench;
mod cli;
mod http;
mod http_worker;
mod node;
mod options;

use std::process::ExitCode;

use clap::Parser;

use crate::options::{Cli, Command, LogFormat};

/// mimalloc rather than the system's malloc: training steps free and allocate the same large
/// buffers over and over, and glibc's malloc returns them to the system and faults them in
/// again each time (see the root manifest).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("NEXA_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A benchmark's report is its output: the nodes it runs say only what goes wrong.
    let level = match cli.command {
        // (Workers leaving at its end, or stopped on purpose, are not news.)
        Command::Bench(_) => "warn,nexa_actors::control::quic=error,nexa_actors::worker=error",
        _ => "info",
    };
    init_logging(cli.log_format, level);
    let result = match cli.command {
        Command::Token(cmd) => cli::token(cmd),
        Command::Store(cmd) => cli::store(cmd),
        Command::Bench(cmd) => bench::run(cmd),
        node @ (Command::Up(_) | Command::Server(_) | Command::Worker(_)) => run_node(node),
        client => cli::run(client),
    };
    result.unwrap_or_else(|e| {
        eprintln!("nexa: {e:#}");
        ExitCode::FAILURE
    })
}

/// Runs a node command (`up`, `server`, `worker`) on the async runtime.
fn run_node(command: Command) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        match command {
            Command::Server(args) => node::server(args).await,
            Command::Worker(args) => node::worker(args).await,
            Command::Up(args) => node::up(args).await,
            _ => Err(anyhow::anyhow!("not a node command")),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
