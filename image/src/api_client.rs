//! A small HTTP/1.1 client of the appliance's admin API (the `scoutvm`
//! CLI's `--node` mode, tests and the API bench): one keep-alive TCP
//! connection, `POST /v1/OP` with a JSON body and the bearer token, a
//! JSON answer. std only, no HTTP library: the server's answers always
//! carry `Content-Length`.

use scoutvm_net::api::json::{self, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Longest answer head and body the client reads.
const MAX_HEAD: usize = 16 << 10;
const MAX_ANSWER: usize = 16 << 20;
/// How long a connect or an answer may take (a stage of 128 KiB on a
/// loaded TCG guest takes well under this).
const TIMEOUT: Duration = Duration::from_secs(120);

/// Why a call failed.
#[derive(Debug)]
pub enum ApiError {
    /// The filesystem's errno (the API's `errno`), with the status.
    Errno(i32),
    /// Any other answer but 200: the status and the API's reason.
    Status(u16, String),
    /// No answer: connecting, writing, reading or a malformed answer.
    Io(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Errno(e) => write!(f, "{}", std::io::Error::from_raw_os_error(*e)),
            ApiError::Status(s, r) => write!(f, "HTTP {s}: {r}"),
            ApiError::Io(e) => write!(f, "{e}"),
        }
    }
}

pub struct ApiClient {
    addr: String,
    token: String,
    conn: Option<(BufReader<TcpStream>, TcpStream)>,
}

impl ApiClient {
    /// A client of `addr` (`HOST:PORT`); connects on the first call.
    pub fn new(addr: &str, token: &str) -> ApiClient {
        ApiClient {
            addr: addr.into(),
            token: token.into(),
            conn: None,
        }
    }

    fn connect(&self) -> Result<(BufReader<TcpStream>, TcpStream), ApiError> {
        let io = |e: std::io::Error| ApiError::Io(format!("{}: {e}", self.addr));
        let sa = self
            .addr
            .to_socket_addrs()
            .map_err(io)?
            .next()
            .ok_or_else(|| ApiError::Io(format!("{}: no address", self.addr)))?;
        let s = TcpStream::connect_timeout(&sa, TIMEOUT).map_err(io)?;
        s.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
        s.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
        s.set_nodelay(true).map_err(io)?;
        let r = s.try_clone().map_err(io)?;
        Ok((BufReader::new(r), s))
    }

    /// `POST /v1/op` with `body`: the status and the parsed answer.
    pub fn call_raw(&mut self, op: &str, body: &str) -> Result<(u16, Value), ApiError> {
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        let r = self.exchange_on(op, body);
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    fn exchange_on(&mut self, op: &str, body: &str) -> Result<(u16, Value), ApiError> {
        let io = |e: std::io::Error| ApiError::Io(format!("talking to the node: {e}"));
        let (reader, writer) = self.conn.as_mut().expect("connected above");
        let req = format!(
            "POST /v1/{op} HTTP/1.1\r\nHost: scoutvm\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.token,
            body.len()
        );
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        writer.write_all(&bytes).map_err(io)?;
        // the head, a line at a time
        let mut status = None;
        let mut length = None;
        let mut close = false;
        let mut head = 0usize;
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).map_err(io)?;
            if n == 0 {
                return Err(ApiError::Io("the node closed the connection".into()));
            }
            head += n;
            if head > MAX_HEAD {
                return Err(ApiError::Io("answer head too long".into()));
            }
            let line = line.trim_end();
            if status.is_none() {
                let code = line
                    .strip_prefix("HTTP/1.1 ")
                    .and_then(|s| s.get(..3))
                    .and_then(|s| s.parse::<u16>().ok())
                    .ok_or_else(|| ApiError::Io(format!("not an HTTP answer: {line:?}")))?;
                status = Some(code);
                continue;
            }
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse::<usize>().ok();
                } else if k.eq_ignore_ascii_case("connection") {
                    close = v.trim().eq_ignore_ascii_case("close");
                }
            }
        }
        let status = status.expect("set by the first line");
        let length = length.ok_or_else(|| ApiError::Io("answer without Content-Length".into()))?;
        if length > MAX_ANSWER {
            return Err(ApiError::Io("answer too long".into()));
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).map_err(io)?;
        if close {
            self.conn = None;
        }
        let v = json::parse(&body)
            .map_err(|e| ApiError::Io(format!("answer is not JSON: {}", e.reason)))?;
        Ok((status, v))
    }

    /// `POST /v1/op`: the answer of a 200, else why not.
    pub fn call(&mut self, op: &str, body: &str) -> Result<Value, ApiError> {
        let (status, v) = self.call_raw(op, body)?;
        if status == 200 {
            return Ok(v);
        }
        if let Some(e) = v.get("errno").and_then(Value::as_u64) {
            return Err(ApiError::Errno(e as i32));
        }
        let reason = v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no reason given");
        Err(ApiError::Status(status, reason.into()))
    }
}
