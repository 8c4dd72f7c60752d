//! HTTP plumbing shared by the server backends: one agent with timeouts, byte-level line
//! splitting for streamed bodies, and the mapping from transport failures to
//! [`BackendError`]s that name the fix.

use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

use super::{BackendError, BackendOptions};

/// The longest single line a streamed body may carry before it is refused.
pub(crate) const MAX_LINE_BYTES: usize = 16 << 20;
/// How much of an error body is kept for a message.
const MAX_ERROR_BODY: u64 = 64 << 10;

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Generous: a large prompt on a CPU can take minutes before its first token.
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(600);

pub(crate) fn agent(opts: &BackendOptions) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(opts.timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT))
        .timeout_read(opts.timeout.unwrap_or(DEFAULT_READ_TIMEOUT))
        .build()
}

/// Splits a byte stream into lines without ever decoding a partial line: a UTF-8
/// character split across two network reads stays intact because bytes are buffered
/// until the `\n` arrives. A trailing `\r` is removed; the final line may lack its `\n`.
pub struct LineReader<R: Read> {
    inner: BufReader<R>,
    max_line: usize,
}

impl<R: Read> LineReader<R> {
    pub fn new(inner: R) -> LineReader<R> {
        LineReader::with_limit(inner, MAX_LINE_BYTES)
    }

    /// A reader that refuses lines longer than `max_line` bytes (an `InvalidData` error).
    pub fn with_limit(inner: R, max_line: usize) -> LineReader<R> {
        LineReader {
            inner: BufReader::new(inner),
            max_line,
        }
    }

    /// The next line's bytes without its terminator, or `None` at the end of the stream.
    pub fn next_line(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut line = Vec::new();
        loop {
            let available = match self.inner.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                return Ok(if line.is_empty() {
                    None
                } else {
                    Some(trim_cr(line))
                });
            }
            let (taken, done) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    line.extend_from_slice(&available[..i]);
                    (i + 1, true)
                }
                None => {
                    line.extend_from_slice(available);
                    (available.len(), false)
                }
            };
            self.inner.consume(taken);
            if line.len() > self.max_line {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a streamed line is longer than {} bytes", self.max_line),
                ));
            }
            if done {
                return Ok(Some(trim_cr(line)));
            }
        }
    }
}

fn trim_cr(mut line: Vec<u8>) -> Vec<u8> {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    line
}

/// A failed call, split into what the backend-specific mapping needs.
pub(crate) enum Failure {
    /// The server answered with an error status; the body is kept (capped).
    Status { status: u16, body: String },
    /// No answer: connection refused, DNS, timeout, bad URL.
    Transport { detail: String },
}

impl From<ureq::Error> for Failure {
    fn from(e: ureq::Error) -> Failure {
        match e {
            ureq::Error::Status(status, resp) => Failure::Status {
                status,
                body: read_capped(resp),
            },
            ureq::Error::Transport(t) => Failure::Transport {
                detail: transport_detail(&t),
            },
        }
    }
}

fn transport_detail(t: &ureq::Transport) -> String {
    use std::error::Error as _;
    // The innermost cause reads best ("Connection refused (os error 111)").
    if let Some(src) = t.source() {
        return src.to_string();
    }
    match t.message() {
        Some(msg) => format!("{}: {msg}", t.kind()),
        None => t.kind().to_string(),
    }
}

/// An error body, at most [`MAX_ERROR_BODY`] bytes, decoded lossily.
pub(crate) fn read_capped(resp: ureq::Response) -> String {
    let mut buf = Vec::new();
    let _ = resp
        .into_reader()
        .take(MAX_ERROR_BODY)
        .read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim().to_string()
}

/// A whole (small) body as JSON.
pub(crate) fn read_json(
    resp: ureq::Response,
    url: &str,
) -> Result<serde_json::Value, BackendError> {
    let mut buf = Vec::new();
    resp.into_reader()
        .take(MAX_LINE_BYTES as u64)
        .read_to_end(&mut buf)
        .map_err(|e| BackendError::StreamBroken {
            url: url.to_string(),
            detail: e.to_string(),
        })?;
    serde_json::from_slice(&buf).map_err(|e| BackendError::Protocol {
        url: url.to_string(),
        detail: format!("expected JSON: {e}"),
    })
}

/// The message inside an error body (`{"error": "..."}` or `{"error": {"message": ...}}`),
/// or the body itself.
pub(crate) fn error_message(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
        if let Some(msg) = json_error(&v) {
            return msg;
        }
    }
    body.to_string()
}

/// The `error` field of a JSON value, as text, if there is one.
pub(crate) fn json_error(v: &serde_json::Value) -> Option<String> {
    let e = v.get("error")?;
    if e.is_null() {
        return None;
    }
    Some(match e {
        serde_json::Value::String(s) => s.clone(),
        other => other
            .get("message")
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| other.to_string()),
    })
}

/// `scheme://host:port` of a URL (everything before the path).
pub(crate) fn origin(url: &str) -> String {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after_scheme..].find('/') {
        Some(i) => url[..after_scheme + i].to_string(),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out its bytes in fixed pieces, like a network socket.
    struct Pieces {
        data: Vec<u8>,
        pos: usize,
        step: usize,
    }

    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    fn lines(data: &str, step: usize) -> Vec<String> {
        let mut r = LineReader::new(Pieces {
            data: data.as_bytes().to_vec(),
            pos: 0,
            step,
        });
        let mut out = Vec::new();
        while let Some(line) = r.next_line().expect("read") {
            out.push(String::from_utf8(line).expect("whole characters"));
        }
        out
    }

    #[test]
    fn split_characters_stay_whole_at_every_read_size() {
        let text = "café 東京\r\n🚀 ok\n\nlast";
        for step in 1..8 {
            assert_eq!(lines(text, step), vec!["café 東京", "🚀 ok", "", "last"]);
        }
    }

    #[test]
    fn overlong_lines_are_refused() {
        let mut r = LineReader::with_limit(&b"0123456789\n"[..], 4);
        assert!(r.next_line().is_err());
    }

    #[test]
    fn origin_strips_the_path() {
        assert_eq!(origin("http://127.0.0.1:8080/v1"), "http://127.0.0.1:8080");
        assert_eq!(origin("https://h.example"), "https://h.example");
    }

    #[test]
    fn error_bodies_yield_their_message() {
        assert_eq!(
            error_message(r#"{"error":"model not found"}"#),
            "model not found"
        );
        assert_eq!(
            error_message(r#"{"error":{"message":"bad key"}}"#),
            "bad key"
        );
        assert_eq!(error_message("plain"), "plain");
    }
}
