//! `kubectl-soma`: SomaStack in kubectl. kubectl runs it as `kubectl soma`
//! when it is on PATH (docs/kubectl-soma.md).
//!
//! ```text
//! kubectl soma status [-A]                         health of every SomaStack resource
//! kubectl soma capsule payload|sign|verify|approve|reject
//! kubectl soma installation history|rollback --to N|diff N M|gate [--override N --reason R]
//! kubectl soma drill run NAME | drill summary [-A]
//! kubectl soma project summary [-A] | retry-failed NAME | approve NAME | moderation NAME
//! kubectl soma killswitch engage BUNDLE --reason R | release BUNDLE [--reason R]
//! kubectl soma policy explain NAMESPACE
//! ```
//!
//! Exit codes: 0 success; 1 runtime or cluster error, or not found; 2 usage
//! error; 3 a check failed (e.g. a signature that does not verify, a
//! candidate revision its regression gate rejected, a project moderation
//! refused).

mod capsule;
mod cli;
mod cluster;
mod drill;
mod error;
mod health;
mod installation;
mod killswitch;
mod output;
mod policy;
mod project;
mod status;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    // Usage errors exit 2 here (clap), `-h` and `--version` 0.
    let cli = Cli::parse();
    let global = &cli.global;
    let result = match cli.command {
        Command::Status(listing) => status::command(global, listing),
        Command::Capsule(c) => capsule::command(global, c),
        Command::Installation(c) => installation::command(global, c),
        Command::Drill(c) => drill::command(global, c),
        Command::Project(c) => project::command(global, c),
        Command::Killswitch(c) => killswitch::command(global, c),
        Command::Policy(c) => policy::command(global, c),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // `kubectl soma ... | head`: the reader left; nothing to report.
        Err(error::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            std::process::ExitCode::from(err.exit_code())
        }
    }
}
