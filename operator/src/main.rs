//! `somastack-operator`: the operator binary.
//!
//! ```text
//! somastack-operator run [--kubeconfig PATH]   run the controllers
//! somastack-operator crd [--out-dir DIR]       print (or write) the CRDs
//! ```
//!
//! What users do with SomaStack objects (history, rollback, signing,
//! reviews, summaries) is the kubectl plugin's, `kubectl soma`
//! (`plugin/`, docs/kubectl-soma.md).

mod cli;
mod cluster;
mod crds;
mod error;
mod http;
mod leader;
mod memory;
mod metrics_auth;
mod run;
mod telemetry;
mod webhook;

use clap::Parser;

/// jemalloc, with background threads that return freed memory to the system
/// (after about 10 s unused); with glibc's allocator the operator kept the
/// peak of every burst of objects for good (hack/bench-memory.sh,
/// docs/operations.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use crate::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd(args) => crds::print(&args),
        Command::Run(args) => run::main(*args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // `somastack-operator crd | head`: the reader left; nothing to report.
        Err(error::Error::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("somastack-operator: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
