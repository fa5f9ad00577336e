//! A FastCGI client for the node router: how a request reaches PHP-FPM, as Platform.sh's PHP
//! containers pass it (one connection per request, the responder role). The answer is a CGI
//! response (a `Status` header, other headers, a blank line, the body), streamed back as it comes.
//!
//! It only ever talks to the web process's own socket, so it trusts the length fields it reads
//! no more than the protocol bounds them (16-bit records), and gives up on a header section
//! larger than [`MAX_HEADER_BYTES`].

use std::path::Path;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode, header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::locations::Script;

/// Where the app's folder is inside its sandbox.
const APP_INSIDE: &str = "/app";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const VERSION: u8 = 1;
const BEGIN_REQUEST: u8 = 1;
const END_REQUEST: u8 = 3;
const PARAMS: u8 = 4;
const STDIN: u8 = 5;
const STDOUT: u8 = 6;
const STDERR: u8 = 7;
const RESPONDER: u16 = 1;
const REQUEST_ID: u16 = 1;
/// The most content one record carries.
const MAX_RECORD: usize = 65_535;
/// A CGI header section larger than this is no answer the app meant.
const MAX_HEADER_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FastCgiError {
    #[error("cannot talk to PHP-FPM: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot read the request's body: {0}")]
    Body(BoxError),
    #[error("PHP-FPM answered {0}")]
    Protocol(&'static str),
}

/// The CGI variables of `request` for `script`, as the app sees its files (under `/app`). The
/// client's headers become `HTTP_*` variables, except `Proxy`, whose `HTTP_PROXY` would tell
/// the app's HTTP clients to send everything through the client's proxy (httpoxy).
pub fn cgi_params(script: &Script, request: &Request<Incoming>) -> Vec<(String, String)> {
    let app = Path::new(APP_INSIDE);
    let uri = request.uri();
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let (server_name, server_port) = match host.rsplit_once(':') {
        Some((name, port)) if port.parse::<u16>().is_ok() => (name, port),
        _ => (host, "80"),
    };
    let forwarded = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    };
    let client = forwarded("x-forwarded-for")
        .and_then(|list| list.split(',').next().map(|c| c.trim().to_owned()))
        .unwrap_or_else(|| "127.0.0.1".into());
    let mut params = vec![
        ("GATEWAY_INTERFACE", "CGI/1.1".to_owned()),
        ("SERVER_SOFTWARE", "lockstep".to_owned()),
        ("SERVER_PROTOCOL", "HTTP/1.1".to_owned()),
        ("REQUEST_METHOD", request.method().to_string()),
        (
            "REQUEST_URI",
            uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
        ),
        ("QUERY_STRING", uri.query().unwrap_or("").to_owned()),
        ("SCRIPT_NAME", script.script_name.clone()),
        ("DOCUMENT_URI", script.script_name.clone()),
        (
            "SCRIPT_FILENAME",
            app.join(&script.path).to_string_lossy().into_owned(),
        ),
        (
            "DOCUMENT_ROOT",
            app.join(&script.document_root)
                .to_string_lossy()
                .into_owned(),
        ),
        ("SERVER_NAME", server_name.to_owned()),
        ("SERVER_PORT", server_port.to_owned()),
        ("REMOTE_ADDR", client),
        ("REMOTE_PORT", "0".to_owned()),
    ];
    if forwarded("x-forwarded-proto").as_deref() == Some("https") {
        params.push(("HTTPS", "on".to_owned()));
    }
    let mut params: Vec<(String, String)> = params
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
    for (name, value) in request.headers() {
        let Ok(value) = value.to_str() else { continue };
        let variable = match name.as_str() {
            "content-type" => "CONTENT_TYPE".to_owned(),
            "content-length" => "CONTENT_LENGTH".to_owned(),
            "proxy" => continue,
            other => format!("HTTP_{}", other.to_ascii_uppercase().replace('-', "_")),
        };
        match params.iter_mut().find(|(n, _)| *n == variable) {
            // Repeated headers are one variable, as a CGI server joins them.
            Some((_, joined)) => {
                joined.push_str(", ");
                joined.push_str(value);
            }
            None => params.push((variable, value.to_owned())),
        }
    }
    params
}

/// Runs one request: `params` are the CGI variables (`SCRIPT_FILENAME`, `REQUEST_METHOD`...),
/// `body` the request's body, sent as the script's standard input.
pub async fn request(
    socket: &Path,
    params: &[(String, String)],
    mut body: Incoming,
) -> Result<Response<BoxBody<Bytes, BoxError>>, FastCgiError> {
    let mut stream = UnixStream::connect(socket).await?;
    let mut begin = Vec::with_capacity(8);
    begin.extend_from_slice(&RESPONDER.to_be_bytes());
    begin.extend_from_slice(&[0; 6]);
    let mut out = Vec::new();
    push_record(&mut out, BEGIN_REQUEST, &begin);
    let encoded = encode_params(params);
    for chunk in encoded.chunks(MAX_RECORD) {
        push_record(&mut out, PARAMS, chunk);
    }
    push_record(&mut out, PARAMS, &[]);
    stream.write_all(&out).await?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| FastCgiError::Body(e.into()))?;
        if let Ok(data) = frame.into_data() {
            let mut out = Vec::with_capacity(data.len() + 16);
            for chunk in data.chunks(MAX_RECORD) {
                push_record(&mut out, STDIN, chunk);
            }
            stream.write_all(&out).await?;
        }
    }
    let mut end = Vec::new();
    push_record(&mut end, STDIN, &[]);
    stream.write_all(&end).await?;

    let mut reader = Records { stream };
    let mut head = BytesMut::new();
    let (headers_end, rest) = loop {
        match reader.next().await? {
            Some(Record::Stdout(data)) => {
                head.extend_from_slice(&data);
                if let Some((end, skip)) = find_blank_line(&head) {
                    let rest = head.split_off(end + skip).freeze();
                    break (end, rest);
                }
                if head.len() > MAX_HEADER_BYTES {
                    return Err(FastCgiError::Protocol("with a header section too large"));
                }
            }
            Some(Record::Stderr(text)) => log_stderr(&text),
            None => return Err(FastCgiError::Protocol("nothing before ending the request")),
        }
    };
    let mut response = parse_head(&head[..headers_end])?;
    let (frames, incoming) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(8);
    tokio::spawn(async move {
        if !rest.is_empty() && frames.send(Ok(Frame::data(rest))).await.is_err() {
            return;
        }
        loop {
            match reader.next().await {
                Ok(Some(Record::Stdout(data))) => {
                    if frames.send(Ok(Frame::data(data))).await.is_err() {
                        return;
                    }
                }
                Ok(Some(Record::Stderr(text))) => log_stderr(&text),
                Ok(None) => return,
                Err(error) => {
                    let _ = frames.send(Err(error.into())).await;
                    return;
                }
            }
        }
    });
    let body = StreamBody::new(stream_of(incoming));
    *response.body_mut() = BodyExt::boxed(body);
    Ok(response)
}

fn stream_of<T>(
    mut receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |context| receiver.poll_recv(context))
}

fn log_stderr(text: &[u8]) {
    tracing::info!(target: "php", "{}", String::from_utf8_lossy(text).trim_end());
}

fn push_record(out: &mut Vec<u8>, kind: u8, content: &[u8]) {
    let padding = (8 - content.len() % 8) % 8;
    out.extend_from_slice(&[VERSION, kind]);
    out.extend_from_slice(&REQUEST_ID.to_be_bytes());
    out.extend_from_slice(&(content.len() as u16).to_be_bytes());
    out.extend_from_slice(&[padding as u8, 0]);
    out.extend_from_slice(content);
    out.extend(std::iter::repeat_n(0, padding));
}

/// Name-value pairs, each length in one byte below 128, else four with the top bit set.
fn encode_params(params: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    let length = |out: &mut Vec<u8>, length: usize| {
        if length < 128 {
            out.push(length as u8);
        } else {
            out.extend_from_slice(&((length as u32) | 0x8000_0000).to_be_bytes());
        }
    };
    for (name, value) in params {
        length(&mut out, name.len());
        length(&mut out, value.len());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// Where the header section ends (`\r\n\r\n`, or `\n\n` from a careless script), and the
/// length of that separator.
fn find_blank_line(data: &[u8]) -> Option<(usize, usize)> {
    let crlf = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    let lf = data.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The CGI header section as a response: `Status: 404 Not Found` sets the status; a
/// `Location` without one redirects with 302, as CGI says.
fn parse_head(head: &[u8]) -> Result<Response<BoxBody<Bytes, BoxError>>, FastCgiError> {
    let text = std::str::from_utf8(head)
        .map_err(|_| FastCgiError::Protocol("headers that are not text"))?;
    let mut response = Response::new(BodyExt::boxed(
        http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}),
    ));
    let mut status = None;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or(FastCgiError::Protocol("a header line without a colon"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or_default();
            status = Some(
                code.parse::<u16>()
                    .ok()
                    .and_then(|code| StatusCode::from_u16(code).ok())
                    .ok_or(FastCgiError::Protocol("a status that is no HTTP status"))?,
            );
            continue;
        }
        let name = header::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| FastCgiError::Protocol("a header name that is not valid"))?;
        let value = header::HeaderValue::from_str(value)
            .map_err(|_| FastCgiError::Protocol("a header value that is not valid"))?;
        response.headers_mut().append(name, value);
    }
    *response.status_mut() = match status {
        Some(status) => status,
        None if response.headers().contains_key(header::LOCATION) => StatusCode::FOUND,
        None => StatusCode::OK,
    };
    Ok(response)
}

enum Record {
    Stdout(Bytes),
    Stderr(Bytes),
}

struct Records {
    stream: UnixStream,
}

impl Records {
    /// The next output record; `None` once the request ended.
    async fn next(&mut self) -> Result<Option<Record>, FastCgiError> {
        loop {
            let mut header = [0u8; 8];
            match self.stream.read_exact(&mut header).await {
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(FastCgiError::Protocol("by closing the connection early"));
                }
                Err(error) => return Err(error.into()),
            }
            let length = u16::from_be_bytes([header[4], header[5]]) as usize;
            let padding = header[6] as usize;
            let mut content = vec![0u8; length + padding];
            self.stream.read_exact(&mut content).await?;
            content.truncate(length);
            match header[1] {
                STDOUT if length > 0 => return Ok(Some(Record::Stdout(Bytes::from(content)))),
                STDERR if length > 0 => return Ok(Some(Record::Stderr(Bytes::from(content)))),
                END_REQUEST => return Ok(None),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_and_values_take_four_length_bytes() {
        let long = "x".repeat(200);
        let encoded = encode_params(&[("A".into(), long.clone())]);
        assert_eq!(encoded[0], 1);
        assert_eq!(&encoded[1..5], &(200u32 | 0x8000_0000).to_be_bytes());
        assert_eq!(&encoded[5..6], b"A");
        assert_eq!(encoded.len(), 6 + 200);
    }

    #[test]
    fn records_are_padded_to_eight_bytes() {
        let mut out = Vec::new();
        push_record(&mut out, STDIN, b"hello");
        assert_eq!(out.len(), 8 + 5 + 3);
        assert_eq!(out[6], 3);
        assert_eq!(u16::from_be_bytes([out[4], out[5]]), 5);
    }

    #[test]
    fn a_cgi_status_and_headers_become_the_response() {
        let response =
            parse_head(b"Status: 404 Not Found\r\nContent-Type: text/plain\r\nX-A: 1\r\nX-A: 2")
                .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()["content-type"], "text/plain");
        assert_eq!(response.headers().get_all("x-a").iter().count(), 2);
        let redirect = parse_head(b"Location: /elsewhere").unwrap();
        assert_eq!(redirect.status(), StatusCode::FOUND);
        assert!(parse_head(b"Status: nine").is_err());
        assert!(parse_head(b"no colon here").is_err());
    }

    #[test]
    fn the_header_section_ends_at_the_first_blank_line() {
        assert_eq!(find_blank_line(b"A: 1\r\n\r\nbody\n\n"), Some((4, 4)));
        assert_eq!(find_blank_line(b"A: 1\n\nbody"), Some((4, 2)));
        assert_eq!(find_blank_line(b"A: 1\r\n"), None);
    }
}
