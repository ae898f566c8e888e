//! `somastack-operator`: the operator binary.
//!
//! ```text
//! somastack-operator run [--kubeconfig PATH]   run the controllers
//! somastack-operator crd [--out-dir DIR]       print (or write) the CRDs
//! somastack-operator history NAME -n NS        list an Installation's revisions
//! somastack-operator rollback NAME -n NS --to-revision N
//! somastack-operator payload -f capsule.yaml   bytes a publisher signs
//! somastack-operator drills [-n NS] [-o json]   the disaster-drill summary
//! somastack-operator projects [-n NS] [-o json] the KAMACHIQ summary
//! somastack-operator retry-failed NAME -n NS    run a project's failed tasks again
//! ```

mod cli;
mod cluster;
mod crds;
mod drills;
mod error;
mod http;
mod leader;
mod memory;
mod payload;
mod projects;
mod revisions;
mod run;
mod summary;
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
        Command::Rollback(args) => revisions::rollback(args),
        Command::History(args) => revisions::history(args),
        Command::Payload(args) => payload::print(&args),
        Command::Drills(args) => drills::summary_command(args),
        Command::Projects(args) => projects::summary_command(args),
        Command::RetryFailed(args) => projects::retry_failed_command(args),
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
