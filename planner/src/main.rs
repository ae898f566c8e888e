//! `somastack-planner`: the reference planner (docs/planner.md).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "somastack-planner",
    version,
    about = "The reference SomaStack planner: goal -> task DAG over HTTP"
)]
enum Command {
    /// Serve `POST /plan` and `GET /healthz`.
    Serve {
        /// Address to listen on (port 0 picks a free port). In a pod, the
        /// capsule sets PLANNER_LISTEN=0.0.0.0:8080 (the pod's own addresses).
        #[arg(long, env = "PLANNER_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Print the JSON Schema of the planner contract (docs/planner.schema.json).
    Schema,
}

fn main() -> ExitCode {
    match Command::parse() {
        Command::Schema => {
            print!("{}", somastack_crds::planner::contract_schema_pretty());
            ExitCode::SUCCESS
        }
        Command::Serve { listen } => {
            tracing_subscriber::fmt()
                .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .init();
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("somastack-planner: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(listen)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("somastack-planner: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn serve(listen: SocketAddr) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    // One line on stdout, after binding: callers (and tests) wait for it.
    println!("somastack-planner listening on {addr}");
    tracing::info!(%addr, "serving POST /plan and GET /healthz");
    somastack_planner::serve(listener, shutdown_signal())
        .await
        .map_err(|e| format!("serving on {addr}: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c: shutting down"),
        () = terminate => tracing::info!("SIGTERM: shutting down"),
    }
}
