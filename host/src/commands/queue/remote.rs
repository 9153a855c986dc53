//! Acting through the running relay: requests to its admin endpoint, with
//! its token, as `curl` would send them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

use super::super::UsageError;
use crate::admin::AdminSettings;

/// How long one request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The most of an answer that is read.
const MAX_ANSWER: usize = 1 << 20;

/// The admin endpoint of the running relay, as `attrelay queue` reaches it.
pub struct Endpoint {
    addr: SocketAddr,
    token: Option<String>,
}

impl Endpoint {
    /// The endpoint `settings` describe; its token read from `token_file`.
    pub fn new(settings: &AdminSettings) -> Result<Endpoint, UsageError> {
        let token = match &settings.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        UsageError(format!(
                            "{}: cannot read the admin token: {e}",
                            path.display()
                        ))
                    })?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        // A wildcard listener is reached on loopback.
        let ip = match settings.listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Ok(Endpoint {
            addr: SocketAddr::new(ip, settings.listen.port()),
            token,
        })
    }

    /// Sends `method path` and returns the status and the answer's text.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
    ) -> Result<(StatusCode, String), UsageError> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.send(method, path))
            .await
            .map_err(|_| {
                UsageError(format!(
                    "the admin endpoint http://{} did not answer within {}s",
                    self.addr,
                    REQUEST_TIMEOUT.as_secs()
                ))
            })?
    }

    async fn send(&self, method: Method, path: &str) -> Result<(StatusCode, String), UsageError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            UsageError(format!(
                "the relay runs (it holds the spool's lock) but its admin endpoint http://{} cannot be reached: {e}",
                self.addr
            ))
        };
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| unreachable(&e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.addr.to_string());
        if let Some(token) = &self.token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(UsageError::new)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(&e))?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}
