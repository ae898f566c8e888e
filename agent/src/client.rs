//! One HTTP/1.1 request over TCP to an IP address, as the evaluator makes
//! them (`somastack_agent::http1` makes and reads the bytes): blocking, one
//! connection a request, everything within one deadline.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use somastack_agent::http1::{self, MAX_RESPONSE_BYTES, Response};

/// Waits until a TCP connection to `addr` succeeds, trying every half
/// second for at most `wait`: a pod that has just started may not be
/// admitted yet by the NetworkPolicies of what it calls (the policy
/// controller learns of the new pod's address a moment after it starts),
/// nor a Service just created be served yet. The last error when it never
/// connects.
pub fn wait_reachable(addr: SocketAddr, wait: Duration) -> Result<(), String> {
    let deadline = Instant::now() + wait;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("could not connect within {} s: {e}", wait.as_secs()));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// `POST path` with a JSON `body` to `addr`: the answer and how long it
/// took, or why there was none, all within `timeout`.
pub fn post_json(
    addr: SocketAddr,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(Response, Duration), String> {
    let start = Instant::now();
    let deadline = start + timeout;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let late = || format!("no answer within {} s", timeout.as_secs_f64());
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => late(),
        _ => format!("could not connect: {e}"),
    })?;
    stream
        .set_write_timeout(Some(left()))
        .and_then(|()| stream.write_all(&http1::post_json(addr, path, body)))
        .map_err(|e| format!("could not send the request: {e}"))?;
    let mut got: Vec<u8> = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if Instant::now() >= deadline {
            return Err(late());
        }
        stream
            .set_read_timeout(Some(left()))
            .map_err(|e| format!("could not read the answer: {e}"))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.len() > MAX_RESPONSE_BYTES {
                    return Err(format!("the answer is larger than {MAX_RESPONSE_BYTES} bytes"));
                }
                if http1::complete(&got) {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => return Err(late()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("could not read the answer: {e}")),
        }
    }
    let took = start.elapsed();
    http1::parse_response(&got).map(|r| (r, took))
}
