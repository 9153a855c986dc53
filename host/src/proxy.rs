//! The PROXY protocol (HAProxy's, versions 1 and 2) on the relay's TCP
//! listeners: behind a TCP load balancer every client would otherwise look
//! like the balancer, so no IP connector could match, and the logs and
//! `Received:` would name the balancer.
//!
//! A header is honoured only from the configured balancers (`proxy_from`):
//! from anyone else, a connection is closed without a word (a client that
//! could state its own address would choose the tenant it is attributed
//! to). A header that is malformed, too long or too slow closes the
//! connection too. Exactly the header's bytes are read, never more: what
//! follows is the client's. Parsing is the `ppp` crate's.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use ppp::{HeaderResult, PartialResult, v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt};

/// How long a balancer may take to send the header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A version 1 header is at most 107 bytes, CRLF included (the spec's bound).
const MAX_V1: usize = 107;
/// The addresses and TLVs a version 2 header may carry at most (HAProxy's
/// own headers, TLS details included, are well under it).
const MAX_V2_PAYLOAD: usize = 1024;
/// The version 2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// `proxy_protocol` / `proxy_from` of a listener.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxySettings {
    /// Connections from `from` start with a PROXY header.
    pub enabled: bool,
    /// The balancers' addresses.
    pub from: Vec<IpNet>,
}

/// Why a connection was closed before its session.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error("{0} is not a configured balancer (proxy_from); closed")]
    NotABalancer(IpAddr),
    #[error("no PROXY header within {}s; closed", HEADER_TIMEOUT.as_secs())]
    Timeout,
    #[error("malformed PROXY header ({0}); closed")]
    Malformed(String),
    #[error("the connection ended before its PROXY header")]
    Eof,
}

impl ProxySettings {
    /// The client's address for a connection from `peer`: `peer` itself
    /// when the protocol is off, else the address the balancer's header
    /// states (or `peer` for a header that states none: a `LOCAL` health
    /// check, `UNKNOWN`).
    pub async fn client<S: AsyncRead + Unpin>(
        &self,
        stream: &mut S,
        peer: SocketAddr,
    ) -> Result<SocketAddr, ProxyError> {
        if !self.enabled {
            return Ok(peer);
        }
        let ip = crate::directory::canonical_ip(peer.ip());
        if !self.from.iter().any(|n| n.contains(&ip)) {
            return Err(ProxyError::NotABalancer(ip));
        }
        let header = tokio::time::timeout(HEADER_TIMEOUT, read_header(stream))
            .await
            .map_err(|_| ProxyError::Timeout)??;
        stated(&header, peer)
    }
}

/// Exactly the header's bytes.
async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, ProxyError> {
    let eof = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ProxyError::Eof,
        _ => ProxyError::Malformed(e.to_string()),
    };
    let mut head = [0u8; 16];
    stream.read_exact(&mut head[..6]).await.map_err(eof)?;
    if head[..6] == V2_SIGNATURE[..6] {
        stream.read_exact(&mut head[6..]).await.map_err(eof)?;
        let len = u16::from_be_bytes([head[14], head[15]]) as usize;
        if len > MAX_V2_PAYLOAD {
            return Err(ProxyError::Malformed(format!(
                "a version 2 header of {len} bytes, more than {MAX_V2_PAYLOAD}"
            )));
        }
        let mut header = head.to_vec();
        header.resize(16 + len, 0);
        stream.read_exact(&mut header[16..]).await.map_err(eof)?;
        return Ok(header);
    }
    if &head[..6] != b"PROXY " {
        return Err(ProxyError::Malformed("neither version 1 nor 2".into()));
    }
    let mut header = head[..6].to_vec();
    while !header.ends_with(b"\r\n") {
        if header.len() >= MAX_V1 {
            return Err(ProxyError::Malformed(format!(
                "a version 1 header longer than {MAX_V1} bytes"
            )));
        }
        header.push(stream.read_u8().await.map_err(eof)?);
    }
    Ok(header)
}

/// The client address a complete header states.
fn stated(header: &[u8], peer: SocketAddr) -> Result<SocketAddr, ProxyError> {
    let bad = |e: &dyn std::fmt::Debug| ProxyError::Malformed(format!("{e:?}"));
    let parsed = HeaderResult::parse(header);
    if parsed.is_incomplete() {
        return Err(ProxyError::Malformed("incomplete".into()));
    }
    let addr = match parsed {
        HeaderResult::V1(Ok(h)) => match h.addresses {
            v1::Addresses::Tcp4(a) => SocketAddr::new(a.source_address.into(), a.source_port),
            v1::Addresses::Tcp6(a) => SocketAddr::new(a.source_address.into(), a.source_port),
            v1::Addresses::Unknown => peer,
        },
        HeaderResult::V2(Ok(h)) => match (h.command, h.addresses) {
            (v2::Command::Local, _) => peer,
            (_, v2::Addresses::IPv4(a)) => SocketAddr::new(a.source_address.into(), a.source_port),
            (_, v2::Addresses::IPv6(a)) => SocketAddr::new(a.source_address.into(), a.source_port),
            (_, v2::Addresses::Unspecified) => peer,
            (_, v2::Addresses::Unix(_)) => {
                return Err(ProxyError::Malformed("a UNIX socket address".into()));
            }
        },
        HeaderResult::V1(Err(e)) => return Err(bad(&e)),
        HeaderResult::V2(Err(e)) => return Err(bad(&e)),
    };
    Ok(SocketAddr::new(
        crate::directory::canonical_ip(addr.ip()),
        addr.port(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ProxySettings {
        ProxySettings {
            enabled: true,
            from: vec!["127.0.0.1/32".parse().unwrap()],
        }
    }

    fn balancer() -> SocketAddr {
        "127.0.0.1:40000".parse().unwrap()
    }

    async fn client(bytes: &[u8], peer: SocketAddr) -> (Result<SocketAddr, ProxyError>, Vec<u8>) {
        let mut input = bytes;
        let r = settings().client(&mut input, peer).await;
        (r, input.to_vec())
    }

    #[tokio::test]
    async fn version_1_states_the_client_and_leaves_what_follows() {
        let (r, rest) = client(
            b"PROXY TCP4 203.0.113.10 127.0.0.1 51234 25\r\nEHLO x\r\n",
            balancer(),
        )
        .await;
        assert_eq!(r, Ok("203.0.113.10:51234".parse().unwrap()));
        assert_eq!(rest, b"EHLO x\r\n");
        let (r, _) = client(b"PROXY TCP6 2001:db8::25 ::1 51234 25\r\n", balancer()).await;
        assert_eq!(r, Ok("[2001:db8::25]:51234".parse().unwrap()));
        let (r, _) = client(b"PROXY UNKNOWN\r\n", balancer()).await;
        assert_eq!(r, Ok(balancer()));
    }

    #[tokio::test]
    async fn version_2_states_the_client_and_leaves_what_follows() {
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.extend_from_slice(&[
            0x21, 0x11, 0, 12, 203, 0, 113, 10, 127, 0, 0, 1, 0xc8, 0x22, 0, 25,
        ]);
        bytes.extend_from_slice(b"EHLO x\r\n");
        let (r, rest) = client(&bytes, balancer()).await;
        assert_eq!(r, Ok("203.0.113.10:51234".parse().unwrap()));
        assert_eq!(rest, b"EHLO x\r\n");
        // LOCAL (a health check): the balancer itself.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(client(&local, balancer()).await.0, Ok(balancer()));
    }

    #[tokio::test]
    async fn only_a_balancer_states_an_address() {
        let other: SocketAddr = "127.0.0.2:40000".parse().unwrap();
        let (r, rest) = client(b"PROXY TCP4 203.0.113.10 127.0.0.1 51234 25\r\n", other).await;
        assert_eq!(
            r,
            Err(ProxyError::NotABalancer("127.0.0.2".parse().unwrap()))
        );
        assert_eq!(rest.len(), 44, "nothing read from a stranger");
        let off = ProxySettings::default();
        let mut input: &[u8] = b"PROXY TCP4 203.0.113.10 127.0.0.1 51234 25\r\n";
        assert_eq!(off.client(&mut input, other).await, Ok(other));
    }

    #[tokio::test]
    async fn malformed_long_or_cut_headers_close_the_connection() {
        for bad in [
            &b"EHLO x\r\n"[..],
            b"PROXY TCP4 203.0.113.300 127.0.0.1 1 25\r\n",
            b"PROXY TCP4 203.0.113.10 127.0.0.1 51234 25 and then some more words to pass the bound of the spec which is one hundred and seven\r\n",
        ] {
            let (r, _) = client(bad, balancer()).await;
            assert!(matches!(r, Err(ProxyError::Malformed(_))), "{:?}: {r:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(
            client(b"PROXY TCP4 203.0", balancer()).await.0,
            Err(ProxyError::Eof)
        );
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(
            client(&huge, balancer()).await.0,
            Err(ProxyError::Malformed(_))
        ));
    }
}
