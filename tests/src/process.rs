//! Processes the tests start and stop, as an init system or a user would:
//! workspace binaries that serve HTTP on `127.0.0.1:0` and announce the
//! address they got on stdout, and their SIGTERM.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts `binary` with `args` and reads its first line of stdout,
/// `<banner><address>` (e.g. `somastack-agent listening on 127.0.0.1:40123`):
/// the child (killed when dropped) and `http://<address>`.
pub async fn spawn_announced(binary: &Path, args: &[&str], banner: &str) -> (Child, String) {
    let mut child = Command::new(binary)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("{} prints its address within 30s", binary.display()))
        .expect("read stdout")
        .expect("a line on stdout");
    let addr = line
        .strip_prefix(banner)
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
    let base = format!("http://{addr}");
    (child, base)
}

/// A plain-http client: TLS (a reqwest feature in this workspace) set up with
/// the ring provider and no roots, so a test needs neither a process-wide
/// provider nor a CA bundle; no proxy from the environment.
pub fn plain_http_client() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .build()
        .expect("client")
}

/// Sends SIGTERM to `child` (with `kill`, as a user would) and waits for it
/// to exit, at most `within`; its exit status.
pub async fn sigterm(child: &mut Child, within: Duration) -> ExitStatus {
    let pid = child.id().expect("the process is running").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "kill -TERM {pid}: {sent}");
    tokio::time::timeout(within, child.wait())
        .await
        .unwrap_or_else(|_| panic!("the process exits within {within:?} of SIGTERM"))
        .expect("its exit status")
}
