//! Minimal HTTP/1.1 for tests: GET and POST (one request per connection), and a webhook
//! receiver that can be told to fail.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// The id of the API token test gateways are given ([`TEST_TOKEN`]).
pub const TEST_TOKEN_ID: &str = "00000000";
/// The secret of [`TEST_TOKEN`].
pub const TEST_TOKEN_SECRET: &str =
    "7e57000000000000000000000000000000000000000000000000000000000000";
/// The `operate` API token the system tests' gateways know and [`get`] and [`post`] send.
pub const TEST_TOKEN: &str =
    "cst_00000000_7e57000000000000000000000000000000000000000000000000000000000000";

/// `GET path` on `addr` with [`TEST_TOKEN`]: status code and body.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(
        addr,
        "GET",
        path,
        "",
        &[("Authorization", &format!("Bearer {TEST_TOKEN}"))],
    )
    .await
}

/// `POST path` with a JSON `body` on `addr` with [`TEST_TOKEN`]: status code and body.
pub async fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    let auth = format!("Bearer {TEST_TOKEN}");
    request(addr, "POST", path, body, &[("Authorization", &auth)]).await
}

/// `method path` with `body` and `headers` on `addr`: status code, headers and body.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let (status, head, body) = exchange(addr, method, path, body, headers).await;
    (status, head, body)
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let (status, _, body) = exchange(addr, method, path, body, headers).await;
    (status, body)
}

async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_owned(), b.to_owned()))
        .unwrap_or_default();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    (status, head, body)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// A webhook (or any HTTP) receiver on a free loopback port: answers robots' `{"errcode":0}`
/// with 200, or `fail_status` while `failing` is set, and keeps the bodies it accepted.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Bodies answered with 200, in order.
    pub accepted: Arc<Mutex<Vec<serde_json::Value>>>,
    /// Answer `fail_status` (503 unless changed) while set.
    pub failing: Arc<AtomicBool>,
    /// The status of refusals.
    pub fail_status: Arc<AtomicU16>,
    /// Answer `204 No Content` instead of the robot's 200 (an InfluxDB write API).
    pub no_content: Arc<AtomicBool>,
    /// Requests refused.
    pub refused: Arc<AtomicUsize>,
}

impl Webhook {
    /// Starts it (on the current tokio runtime).
    pub async fn start(failing: bool) -> Webhook {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hook = Webhook {
            addr: listener.local_addr().unwrap(),
            accepted: Arc::default(),
            failing: Arc::new(AtomicBool::new(failing)),
            fail_status: Arc::new(AtomicU16::new(503)),
            no_content: Arc::default(),
            refused: Arc::default(),
        };
        let h = hook.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, h.clone()));
            }
        });
        hook
    }
}

/// Serves requests on one (keep-alive) connection.
async fn serve(stream: tokio::net::TcpStream, hook: Webhook) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0;
        let mut line = String::new();
        let mut started = false;
        loop {
            line.clear();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() && started {
                break;
            }
            started = true;
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        let reply = if hook.failing.load(Ordering::SeqCst) {
            hook.refused.fetch_add(1, Ordering::SeqCst);
            format!(
                "HTTP/1.1 {} Refused\r\nContent-Length: 0\r\n\r\n",
                hook.fail_status.load(Ordering::SeqCst)
            )
        } else if hook.no_content.load(Ordering::SeqCst) {
            hook.accepted.lock().unwrap().push(serde_json::Value::Null);
            "HTTP/1.1 204 No Content\r\n\r\n".to_owned()
        } else {
            let value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            hook.accepted.lock().unwrap().push(value);
            let ok = r#"{"errcode":0,"errmsg":"ok"}"#;
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{ok}",
                ok.len()
            )
        };
        if reader.get_mut().write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}
