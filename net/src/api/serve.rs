//! One API connection: read requests off a [`ByteStream`], answer them in
//! order (HTTP/1.1 keep-alive, no pipelining in parallel), close on
//! `Connection: close`, end of stream or a request we cannot frame.

use alloc::vec::Vec;

use super::handler::Api;
use super::http::{parse_request, Parsed, CONTINUE, MAX_BODY, MAX_HEAD};
use crate::p9::ByteStream;

/// Bytes read at a time.
const READ_CHUNK: usize = 16 << 10;

/// Serve requests on `stream` until it closes.
pub async fn serve<S: ByteStream>(api: &Api, stream: &S) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = alloc::vec![0u8; READ_CHUNK];
    let mut continued = false;
    loop {
        match parse_request(&buf) {
            Parsed::Done(req, used) => {
                buf.drain(..used);
                continued = false;
                scoutvm_fs::counter!("api.requests").inc();
                let resp = api.handle(&req).await;
                if stream.write_all(&resp.encode()).await.is_err() || resp.close {
                    stream.close();
                    return;
                }
                continue;
            }
            Parsed::Bad(resp) => {
                scoutvm_fs::counter!("api.bad_requests").inc();
                let _ = stream.write_all(&resp.encode()).await;
                stream.close();
                return;
            }
            Parsed::Incomplete { expect_continue } => {
                if expect_continue && !continued {
                    continued = true;
                    if stream.write_all(CONTINUE).await.is_err() {
                        stream.close();
                        return;
                    }
                }
            }
        }
        debug_assert!(buf.len() <= MAX_HEAD + MAX_BODY);
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                stream.close();
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
