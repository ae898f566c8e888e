//! `somastack-operator`: the operator binary.
//!
//! ```text
//! somastack-operator run [--kubeconfig PATH]   run the controllers
//! somastack-operator crd [--out-dir DIR]       print (or write) the CRDs
//! ```

mod cli;
mod crds;
mod error;
mod run;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd(args) => crds::print(&args),
        Command::Run(args) => run::main(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("somastack-operator: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
