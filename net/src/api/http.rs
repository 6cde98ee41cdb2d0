//! HTTP/1.1 framing for the admin API, sans-IO: [`parse_request`] cuts one
//! request (head by `httparse`, body by `Content-Length`) off the front of
//! the bytes a connection has received; [`Response::encode`] writes an
//! answer. Bounded: the head to [`MAX_HEAD`] bytes and [`MAX_HEADERS`]
//! headers, the body to [`MAX_BODY`]; no chunked bodies (an agent sends
//! `Content-Length`, as curl does).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 8 << 10;
/// Most headers in a request.
pub const MAX_HEADERS: usize = 32;
/// Largest request body: a stage of 192 KiB in base64 and its fields.
pub const MAX_BODY: usize = 260 << 10;

/// One whole request.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target as sent (`/v1/stat`).
    pub path: String,
    /// The `Authorization` header's value.
    pub authorization: Option<Vec<u8>>,
    pub body: Vec<u8>,
    /// The client asked to close after this answer (or speaks HTTP/1.0).
    pub close: bool,
}

/// What the bytes received so far hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole request yet; `expect_continue`: the head is complete
    /// and asks for `100 Continue` before sending its body.
    Incomplete { expect_continue: bool },
    /// A request and how many bytes it took.
    Done(Request, usize),
    /// Not a request we take: answer this and close.
    Bad(Response),
}

/// An answer: a status, a JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
    /// Close the connection after it.
    pub close: bool,
}

impl Response {
    pub fn json(status: u16, body: String) -> Response {
        Response {
            status,
            body,
            close: false,
        }
    }

    /// An error answer: `{"error":REASON}` on one line.
    pub fn error(status: u16, reason: &str) -> Response {
        let mut w = super::json::ObjWriter::new();
        w.str("error", reason);
        Response::json(status, w.finish())
    }

    fn closing(mut self) -> Response {
        self.close = true;
        self
    }

    /// The bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.status,
            reason(self.status),
            self.body.len() + 1
        );
        if self.status == 401 {
            head.push_str("WWW-Authenticate: Bearer realm=\"scoutvm\"\r\n");
        }
        if self.status == 405 {
            head.push_str("Allow: POST\r\n");
        }
        if self.close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out.push(b'\n');
        out
    }
}

/// The reason phrase of the statuses the API sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

fn bad(status: u16, why: &str) -> Parsed {
    Parsed::Bad(Response::error(status, why).closing())
}

/// Look for one request at the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD {
                bad(431, "request head over 8 KiB")
            } else {
                Parsed::Incomplete {
                    expect_continue: false,
                }
            };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return bad(431, "more than 32 headers");
        }
        Err(e) => return bad(400, &format!("malformed request head: {e}")),
    };
    if head_len > MAX_HEAD {
        return bad(431, "request head over 8 KiB");
    }
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return bad(400, "malformed request line");
    };
    let mut close = version == 0;
    let mut length: Option<usize> = None;
    let mut authorization = None;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let value = h.value;
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = core::str::from_utf8(value)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<usize>().ok());
            match (n, length) {
                (None, _) => return bad(400, "bad Content-Length"),
                (Some(n), Some(m)) if n != m => return bad(400, "conflicting Content-Length"),
                (Some(n), _) => length = Some(n),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return bad(
                501,
                "Transfer-Encoding is not supported; send Content-Length",
            );
        } else if h.name.eq_ignore_ascii_case("authorization") {
            if authorization.is_some() {
                return bad(400, "more than one Authorization header");
            }
            authorization = Some(value.to_vec());
        } else if h.name.eq_ignore_ascii_case("connection") {
            for t in value.split(|&b| b == b',') {
                let t = t.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            if !value.eq_ignore_ascii_case(b"100-continue") {
                return bad(400, "unknown Expect");
            }
            expect_continue = true;
        }
    }
    let length = length.unwrap_or(0);
    if length > MAX_BODY {
        return bad(413, "request body over 260 KiB");
    }
    let Some(total) = head_len.checked_add(length) else {
        return bad(413, "request body too large");
    };
    if buf.len() < total {
        return Parsed::Incomplete { expect_continue };
    }
    let request = Request {
        method: method.into(),
        path: path.into(),
        authorization,
        body: buf[head_len..total].to_vec(),
        close,
    };
    Parsed::Done(request, total)
}
