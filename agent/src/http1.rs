//! The little HTTP/1.1 the evaluator speaks: one `POST` with a JSON body to
//! an IP address (a pod here has no resolver), `Connection: close`, and the
//! answer's status and body. The bytes are made and read here; the socket is
//! the binary's (`client.rs`).

use std::net::SocketAddr;

/// The most an answer may hold, head and body: a summary of a document is
/// far smaller; anything larger is not an answer of the contract.
pub const MAX_RESPONSE_BYTES: usize = 2 * 1024 * 1024;

/// The request bytes: `POST <path>` to `addr` with a JSON `body`.
pub fn post_json(addr: SocketAddr, path: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Accept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// An answer: its status code and its body (de-chunked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Where the head of `bytes` ends (after the blank line), once it has.
fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// How the body's length is known.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

struct Head {
    status: u16,
    framing: Framing,
    len: usize,
}

fn parse_head(bytes: &[u8]) -> Result<Option<Head>, String> {
    let Some(len) = head_end(bytes) else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&bytes[..len]).map_err(|_| "the answer's head is not text".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!(
            "not an HTTP/1 answer: {:?}",
            crate::truncate(status_line, 60)
        ));
    }
    let status: u16 = code
        .parse()
        .ok()
        .filter(|c| (100..=599).contains(c))
        .ok_or_else(|| format!("no status code in {:?}", crate::truncate(status_line, 60)))?;
    let mut framing = Framing::UntilClose;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("transfer-encoding") && value.to_ascii_lowercase().contains("chunked") {
            framing = Framing::Chunked;
        } else if name.eq_ignore_ascii_case("content-length") && framing != Framing::Chunked {
            let n = value
                .parse()
                .map_err(|_| format!("Content-Length {value:?} is not a number"))?;
            framing = Framing::Length(n);
        }
    }
    Ok(Some(Head { status, framing, len }))
}

/// Whether `bytes` already hold a whole answer (so the reader can stop
/// before the server closes the connection): a head and, when its length
/// is given, that many bytes of body.
pub fn complete(bytes: &[u8]) -> bool {
    match parse_head(bytes) {
        Ok(Some(Head {
            framing: Framing::Length(n),
            len,
            ..
        })) => bytes.len() >= len + n,
        Ok(Some(Head {
            framing: Framing::Chunked,
            len,
            ..
        })) => dechunk(&bytes[len..]).is_ok(),
        // An error is final: reading more will not mend it.
        Err(_) => true,
        _ => false,
    }
}

/// The answer in `bytes`, everything the server sent before closing.
pub fn parse_response(bytes: &[u8]) -> Result<Response, String> {
    let head = parse_head(bytes)?.ok_or_else(|| {
        if bytes.is_empty() {
            "the connection closed without an answer".to_string()
        } else {
            "the connection closed in the middle of the answer's head".to_string()
        }
    })?;
    let rest = &bytes[head.len..];
    let body = match head.framing {
        Framing::Length(n) if rest.len() < n => {
            return Err(format!("the answer ended after {} of its {n} bytes", rest.len()));
        }
        Framing::Length(n) => rest[..n].to_vec(),
        Framing::Chunked => dechunk(rest)?,
        Framing::UntilClose => rest.to_vec(),
    };
    Ok(Response {
        status: head.status,
        body,
    })
}

/// A chunked body's bytes; an error until its last (empty) chunk is there.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("the chunked answer ended early")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| "a chunk size is not text")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("chunk size {size_text:?} is not hex"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size + 2 {
            return Err("the chunked answer ended early".into());
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_names_its_length_and_closes() {
        let addr: SocketAddr = "10.0.0.7:8080".parse().unwrap();
        let req = String::from_utf8(post_json(addr, "/v1/summarize", b"{\"a\":1}")).unwrap();
        assert!(
            req.starts_with("POST /v1/summarize HTTP/1.1\r\nHost: 10.0.0.7:8080\r\n"),
            "{req}"
        );
        assert!(req.contains("\r\nContent-Length: 7\r\n"), "{req}");
        assert!(req.contains("\r\nConnection: close\r\n"), "{req}");
        assert!(req.ends_with("\r\n\r\n{\"a\":1}"), "{req}");
    }

    #[test]
    fn answers_with_a_length_chunks_or_until_close() {
        let sized = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert!(complete(sized));
        assert!(!complete(&sized[..sized.len() - 1]));
        assert_eq!(
            parse_response(sized),
            Ok(Response {
                status: 200,
                body: b"hello".to_vec()
            })
        );
        assert_eq!(
            parse_response(&sized[..sized.len() - 2]),
            Err("the answer ended after 3 of its 5 bytes".to_string())
        );

        let chunked = b"HTTP/1.1 422 Unprocessable Entity\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert!(complete(chunked));
        assert!(!complete(&chunked[..chunked.len() - 7]));
        assert_eq!(parse_response(chunked).unwrap().body, b"abcde");
        assert_eq!(parse_response(chunked).unwrap().status, 422);

        let closed = b"HTTP/1.0 500 Internal Server Error\r\n\r\noops";
        assert!(!complete(closed));
        assert_eq!(parse_response(closed).unwrap().body, b"oops");
    }

    #[test]
    fn what_is_not_an_answer_says_why() {
        assert_eq!(
            parse_response(b""),
            Err("the connection closed without an answer".to_string())
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(
            parse_response(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
                .unwrap_err()
                .starts_with("not an HTTP/1 answer")
        );
        assert!(complete(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"));
        assert!(
            parse_response(b"HTTP/1.1 abc\r\n\r\n")
                .unwrap_err()
                .starts_with("no status code")
        );
    }
}
