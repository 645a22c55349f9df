//! HTTP/1.1 on one connection, written for speed: the request bytes are built once, responses are
//! parsed in place with `httparse`, and bodies (Content-Length, chunked, or to the end of the
//! connection) are skipped without copying them anywhere.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Response headers larger than this are a protocol error.
const MAX_HEAD: usize = 64 * 1024;

/// What the generator needs of a response.
pub struct Response {
    pub status: u16,
    /// The value of the header the backend distribution is keyed by, when asked for.
    pub backend: Option<String>,
    pub bytes: u64,
    /// The server will close the connection after this response.
    pub close: bool,
}

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// The request, once: `METHOD path HTTP/1.1`, Host, the extra headers, Content-Length when
/// there is a body.
pub fn request(
    method: &str,
    path: &str,
    host: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    let mut out = r.into_bytes();
    out.extend_from_slice(body);
    out
}

pub struct Conn<S> {
    stream: S,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

enum Body {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(stream: S) -> Self {
        Conn {
            stream,
            buf: vec![0; 16 * 1024],
            start: 0,
            end: 0,
        }
    }

    /// Reads more bytes into the buffer; false at the end of the stream.
    async fn fill(&mut self) -> io::Result<bool> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < MAX_HEAD {
                self.buf.resize(self.buf.len() * 2, 0);
            } else {
                return Err(invalid("response head too large"));
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n > 0)
    }

    /// Consumes `n` body bytes.
    async fn skip(&mut self, mut n: u64) -> io::Result<()> {
        loop {
            let have = (self.end - self.start) as u64;
            if have >= n {
                self.start += n as usize;
                return Ok(());
            }
            n -= have;
            self.start = self.end;
            if !self.fill().await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// One line (without its CRLF) from the buffer.
    async fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = self.buf[self.start..self.end]
                .windows(2)
                .position(|w| w == b"\r\n")
            {
                let line =
                    String::from_utf8_lossy(&self.buf[self.start..self.start + i]).into_owned();
                self.start += i + 2;
                return Ok(line);
            }
            if self.end - self.start > 4096 {
                return Err(invalid("chunk line too long"));
            }
            if !self.fill().await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Sends `request` and reads the whole response.
    pub async fn exchange(
        &mut self,
        request: &[u8],
        head_only: bool,
        backend_header: Option<&str>,
    ) -> io::Result<Response> {
        self.stream.write_all(request).await?;
        loop {
            let (status, body, close, backend, head_len) = {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(&self.buf[self.start..self.end]) {
                    Ok(httparse::Status::Complete(n)) => {
                        let status = resp.code.unwrap_or(0);
                        let mut body = Body::UntilClose;
                        let mut close = resp.version == Some(0);
                        let mut backend = None;
                        for h in resp.headers.iter() {
                            if h.name.eq_ignore_ascii_case("content-length") {
                                let v = std::str::from_utf8(h.value)
                                    .ok()
                                    .and_then(|v| v.trim().parse().ok());
                                body =
                                    Body::Length(v.ok_or_else(|| invalid("bad Content-Length"))?);
                            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                                if h.value.eq_ignore_ascii_case(b"chunked") {
                                    body = Body::Chunked;
                                }
                            } else if h.name.eq_ignore_ascii_case("connection") {
                                if h.value.eq_ignore_ascii_case(b"close") {
                                    close = true;
                                } else if h.value.eq_ignore_ascii_case(b"keep-alive") {
                                    close = false;
                                }
                            }
                            if backend_header.is_some_and(|b| h.name.eq_ignore_ascii_case(b)) {
                                backend = Some(String::from_utf8_lossy(h.value).into_owned());
                            }
                        }
                        if head_only || status < 200 || status == 204 || status == 304 {
                            body = Body::None;
                        }
                        (status, body, close, backend, n)
                    }
                    Ok(httparse::Status::Partial) => {
                        if !self.fill().await? {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                        continue;
                    }
                    Err(e) => return Err(invalid(format!("bad response: {e}"))),
                }
            };
            self.start += head_len;
            if (100..200).contains(&status) {
                // An interim response (100 Continue): the real one follows.
                continue;
            }
            let mut bytes = head_len as u64;
            let close = match body {
                Body::None => close,
                Body::Length(n) => {
                    self.skip(n).await?;
                    bytes += n;
                    close
                }
                Body::Chunked => {
                    loop {
                        let line = self.line().await?;
                        let size = line.split(';').next().unwrap_or_default().trim();
                        let size =
                            u64::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
                        if size == 0 {
                            // Trailers, up to the empty line.
                            while !self.line().await?.is_empty() {}
                            break;
                        }
                        self.skip(size + 2).await?;
                        bytes += size;
                    }
                    close
                }
                Body::UntilClose => {
                    loop {
                        bytes += (self.end - self.start) as u64;
                        self.start = self.end;
                        if !self.fill().await? {
                            break;
                        }
                    }
                    true
                }
            };
            return Ok(Response {
                status,
                backend,
                bytes,
                close,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The response, and what was read past it.
    async fn answer(wire: &'static [u8], header: Option<&str>) -> io::Result<(Response, Vec<u8>)> {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let mut req = [0u8; 256];
            let _ = server.read(&mut req).await;
            // Dribble the answer in small pieces.
            for chunk in wire.chunks(7) {
                let _ = server.write_all(chunk).await;
                tokio::task::yield_now().await;
            }
        });
        let mut c = Conn::new(client);
        let r = c
            .exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false, header)
            .await?;
        Ok((r, c.buf[c.start..c.end].to_vec()))
    }

    #[tokio::test]
    async fn bodies_of_every_framing_are_consumed_exactly() {
        let (r, left) = answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Backend: b2\r\n\r\nhelloHTTP/1.1",
            Some("x-backend"),
        )
        .await
        .unwrap();
        assert_eq!(
            (r.status, r.backend.as_deref(), r.close),
            (200, Some("b2"), false)
        );
        assert!(
            b"HTTP/1.1".starts_with(&left),
            "the next response's bytes stay in the buffer"
        );
        let (r, left) = answer(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n", None).await.unwrap();
        assert_eq!((r.status, left.len()), (404, 0));
        let (r, _) = answer(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 503 Busy\r\n\r\nuntil the end",
            None,
        )
        .await
        .unwrap();
        assert_eq!((r.status, r.close), (503, true));
    }

    #[tokio::test]
    async fn broken_answers_are_errors_of_their_class() {
        let e = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", None)
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let e = answer(b"NOT HTTP\r\n\r\n", None).await.err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let e = answer(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", None)
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
