//! A real HTTP/1.1 server on loopback for tests of what the operator does
//! with the endpoints tenants name (planners): answers what a test tells
//! it, counts the requests it gets, and can hold a request without ever
//! answering, as a hung service does.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// What the server does with one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Answer at once with this status code, content type and body.
    Now(u16, &'static str, Vec<u8>),
    /// Never answer: keep the connection open until the server is dropped.
    Hang,
}

impl Reply {
    /// A JSON answer.
    pub fn json(code: u16, body: &serde_json::Value) -> Reply {
        Reply::Now(code, "application/json", body.to_string().into_bytes())
    }
}

/// The server; it stops (and closes every connection) when dropped.
pub struct Server {
    pub port: u16,
    requests: Arc<AtomicUsize>,
    held: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts a held request while it is held.
struct Held(Arc<AtomicUsize>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Server {
    /// Starts a server on a free loopback port; `reply` decides each answer
    /// from the request body.
    pub async fn start(reply: impl Fn(&[u8]) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let port = listener.local_addr().expect("bound").port();
        let requests = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(AtomicUsize::new(0));
        let reply = Arc::new(reply);
        let (r, h) = (requests.clone(), held.clone());
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (reply, r, h) = (reply.clone(), r.clone(), h.clone());
                connections.spawn(async move {
                    let _ = serve(stream, reply.as_ref(), &r, &h).await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Server {
            port,
            requests,
            held,
            task,
        }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Requests received so far (each counted once its body is read).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Requests being held unanswered now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }
}

/// Reads one HTTP/1.1 request (head, then a body of its Content-Length):
/// the bytes and where the body starts; `None` if the client closed first.
pub async fn read_request(stream: &mut TcpStream) -> std::io::Result<Option<(Vec<u8>, usize)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head_end, length) = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (end + 4, length);
        }
    };
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(Some((buf, head_end)))
}

async fn serve(
    mut stream: TcpStream,
    reply: &(dyn Fn(&[u8]) -> Reply + Send + Sync),
    requests: &AtomicUsize,
    held: &Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let Some((buf, head_end)) = read_request(&mut stream).await? else {
        return Ok(());
    };
    requests.fetch_add(1, Ordering::SeqCst);
    match reply(&buf[head_end..]) {
        Reply::Hang => {
            held.fetch_add(1, Ordering::SeqCst);
            let _held = Held(held.clone());
            std::future::pending::<()>().await;
            Ok(())
        }
        Reply::Now(code, content_type, body) => {
            let head = format!(
                "HTTP/1.1 {code} Test\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&body).await?;
            stream.shutdown().await
        }
    }
}
