//! `somastack-agent connect ADDRESS`: one TCP connection attempt, for tests
//! of what a pod may reach (the image is `FROM scratch`: no shell, no curl).
//! Run in a pod with `kubectl exec POD -- /somastack-agent connect IP:PORT`.
//!
//! The outcome is printed on one line whose first word names it, and is
//! the exit code, so a test (or a user) can tell a connection a
//! NetworkPolicy dropped (no answer: `timeout`) from one it rejected or that
//! nothing listens for (`refused`):
//!
//! | first word | exit code | meaning |
//! |---|---|---|
//! | `connected` | 0 | the TCP handshake completed |
//! | `timeout` | 1 | no answer within the timeout (packets dropped) |
//! | `refused` | 3 | refused or unreachable (a reset or an ICMP error: rejected) |
//! | `error` | 4 | any other failure (for example no route) |
//!
//! Addresses are IP:PORT only: a pod here has no resolver to ask, and a
//! name would never be looked up.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// What one connection attempt came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Connected,
    TimedOut,
    Refused(String),
    Failed(String),
}

impl Outcome {
    /// The process exit code for this outcome (2 is clap's usage error).
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Connected => 0,
            Outcome::TimedOut => 1,
            Outcome::Refused(_) => 3,
            Outcome::Failed(_) => 4,
        }
    }
}

/// One attempt to connect to `addr`, given up after `timeout`; the
/// connection, when made, is closed at once.
pub fn attempt(addr: SocketAddr, timeout: Duration) -> Outcome {
    match TcpStream::connect_timeout(&addr, timeout) {
        Ok(_) => Outcome::Connected,
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => Outcome::TimedOut,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::ConnectionReset
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::PermissionDenied
            ) =>
        {
            Outcome::Refused(e.to_string())
        }
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// The line `connect` prints: the outcome's word, the address and how long
/// the attempt took.
pub fn report(addr: SocketAddr, outcome: &Outcome, took: Duration) -> String {
    let ms = took.as_millis();
    match outcome {
        Outcome::Connected => format!("connected {addr} in {ms} ms"),
        Outcome::TimedOut => format!("timeout {addr}: no answer after {ms} ms"),
        Outcome::Refused(why) => format!("refused {addr} after {ms} ms: {why}"),
        Outcome::Failed(why) => format!("error {addr} after {ms} ms: {why}"),
    }
}

/// `--timeout`: `2s`, `500ms`, or a number of seconds; more than zero, at
/// most five minutes.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    somastack_agent::parse_duration(
        "timeout",
        text,
        Duration::from_millis(1),
        Duration::from_secs(300),
    )
}

/// Runs one attempt and prints its line; the exit code.
pub fn run(addr: SocketAddr, timeout: Duration) -> u8 {
    let start = Instant::now();
    let outcome = attempt(addr, timeout);
    println!("{}", report(addr, &outcome, start.elapsed()));
    outcome.exit_code()
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::time::Duration;

    use super::{Outcome, attempt, parse_timeout, report};

    #[test]
    fn a_listening_port_is_connected_and_a_closed_one_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let open = listener.local_addr().expect("its address");
        assert_eq!(attempt(open, Duration::from_secs(2)), Outcome::Connected);

        // A port that was just free: nothing listens there now.
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
            l.local_addr().expect("its address")
        };
        let outcome = attempt(closed, Duration::from_secs(2));
        assert!(matches!(outcome, Outcome::Refused(_)), "{outcome:?}");
        assert_eq!(outcome.exit_code(), 3);
        let line = report(closed, &outcome, Duration::from_millis(1));
        assert!(
            line.starts_with(&format!("refused {closed} after 1 ms: ")),
            "{line}"
        );
    }

    #[test]
    fn timeouts_read_as_users_write_them() {
        assert_eq!(parse_timeout("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(
            parse_timeout("0s"),
            Err("timeout \"0s\" must be between 1ms and 300s".to_string())
        );
        assert!(parse_timeout("10m").is_err());
        assert!(parse_timeout("forever").is_err());
        assert!(parse_timeout("301s").is_err());
    }

    #[test]
    fn every_outcome_has_its_own_exit_code() {
        let codes = [
            Outcome::Connected.exit_code(),
            Outcome::TimedOut.exit_code(),
            Outcome::Refused(String::new()).exit_code(),
            Outcome::Failed(String::new()).exit_code(),
        ];
        assert_eq!(codes, [0, 1, 3, 4]);
    }
}
