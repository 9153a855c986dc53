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

/// The admin endpoint of the running relay, as `attrelay queue` reaches it:
/// one connection, kept open for the requests that follow (an action on a
/// hundred thousand messages opens one connection, not a hundred thousand).
pub struct Endpoint {
    addr: SocketAddr,
    token: Option<String>,
    connection: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>,
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
            connection: None,
        })
    }

    /// Sends `method path` and returns the status and the answer's text.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
    ) -> Result<(StatusCode, String), UsageError> {
        let addr = self.addr;
        tokio::time::timeout(REQUEST_TIMEOUT, self.send(method, path))
            .await
            .map_err(|_| {
                UsageError(format!(
                    "the admin endpoint http://{addr} did not answer within {}s",
                    REQUEST_TIMEOUT.as_secs()
                ))
            })?
    }

    fn unreachable(&self, e: &dyn std::fmt::Display) -> UsageError {
        UsageError(format!(
            "the relay runs (it holds the spool's lock) but its admin endpoint http://{} cannot be reached: {e}",
            self.addr
        ))
    }

    /// The open connection, or a new one when the endpoint closed it (it
    /// closes each after a while).
    async fn ready(
        &mut self,
    ) -> Result<&mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>, UsageError> {
        if let Some(c) = &mut self.connection
            && c.ready().await.is_err()
        {
            self.connection = None;
        }
        if self.connection.is_none() {
            let tcp = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| self.unreachable(&e))?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| self.unreachable(&e))?;
            tokio::spawn(connection);
            self.connection = Some(sender);
        }
        let addr = self.addr;
        self.connection
            .as_mut()
            .ok_or_else(|| UsageError(format!("no connection to http://{addr}")))
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
    ) -> Result<(StatusCode, String), UsageError> {
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
        let sent = self.ready().await?.send_request(request).await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                self.connection = None;
                return Err(self.unreachable(&e));
            }
        };
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| self.unreachable(&e))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}
