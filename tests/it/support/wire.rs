//! The relay over the wire, as most integration tests run it: the seed
//! fixture with its IP ranges moved into loopback (so IP connectors match
//! distinct 127.x client addresses), started in-process, delivering to a
//! recording sink.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use attrelay::relay::RelayHandle;

use super::relay::Setup;
use super::smtp::{Client, Sink};
use super::{Edit, Pki};

/// Contoso's on-premises range in the wire fixture, an unknown address, the
/// partner's range and the disabled connector's address.
pub const CONTOSO_IP: &str = "127.0.1.10";
pub const UNKNOWN_IP: &str = "127.0.2.77";
pub const PARTNER_IP: &str = "127.0.3.130";
pub const LITWARE_IP: &str = "127.0.4.200";

/// The seed fixture with its IP ranges moved into loopback, as text: the
/// start of every [`Setup`].
pub(super) fn wire_toml(pki: &Pki, server_lines: &str, sections: &str) -> String {
    let spool = pki.path("spool");
    let server = format!(
        "listen = [\"127.0.0.1:0\"]\nclient_ca = [\"ca.pem\"]\n{server_lines}\n\n[spool]\npath = {:?}\n\n{sections}\n",
        spool.display().to_string()
    );
    super::fixture_toml(&server)
        .edited("203.0.113.0/24", "127.0.1.0/24")
        .edited("192.0.2.128/25", "127.0.3.128/25")
        .edited("192.0.2.200", "127.0.4.200")
}

pub struct Relay {
    pub handle: RelayHandle,
    pub addr: SocketAddr,
    pub pki: Pki,
    pub sink: Sink,
}

impl Relay {
    /// The wire fixture with a 5 s idle timeout and `sections` merged in
    /// ([`Setup::merge`]), delivering to a fresh sink unless `sections`
    /// has a `[delivery]`.
    pub async fn start(sections: &str) -> Relay {
        Self::start_with("idle_timeout_secs = 5", sections).await
    }

    /// Like `start`, with `server_lines` (TOML keys) in `[server]`.
    pub async fn start_with(server_lines: &str, sections: &str) -> Relay {
        Setup::new()
            .merge(&format!("[server]\n{server_lines}\n"))
            .merge(sections)
            .start()
            .await
    }

    pub fn cert(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.pki.path(&format!("{name}.pem")),
            self.pki.path(&format!("{name}.key")),
        )
    }

    /// Connects from `source`, says EHLO, and does STARTTLS with `cert` if given.
    pub async fn session(&self, source: &str, cert: Option<&str>) -> Client {
        let (mut c, greeting) =
            Client::connect_from(self.addr, source.parse::<IpAddr>().unwrap()).await;
        assert_eq!(greeting.code, 220, "{greeting:?}");
        assert_eq!(c.cmd("EHLO client.example.test").await.code, 250);
        if let Some(name) = cert {
            let (pem, key) = self.cert(name);
            let r = c.starttls(Some((&pem, &key))).await;
            assert_eq!(r.code, 220, "{r:?}");
            let ehlo = c.cmd("EHLO client.example.test").await;
            assert_eq!(ehlo.code, 250);
            assert!(
                !ehlo.lines.iter().any(|l| l.contains("STARTTLS")),
                "no STARTTLS inside TLS: {ehlo:?}"
            );
        }
        c
    }
}

/// A recipient on the Internet: relaying to it is what attribution decides.
pub const EXT: &str = "someone@internet.example";

/// A body that exercises dot-stuffing: as sent on the wire, and as it must arrive.
pub fn body(subject: &str) -> (Vec<u8>, Vec<u8>) {
    let original = format!(
        "Subject: {subject}\r\nFrom: someone@example.test\r\nX-Attributed-Tenant: forged-by-client\r\n\r\nHello.\r\n.leading dot\r\n..two dots\r\n.\r\n\r\nlast line\r\n"
    );
    let mut wire = Vec::new();
    for line in original.split_inclusive("\r\n") {
        if line.starts_with('.') {
            wire.push(b'.');
        }
        wire.extend_from_slice(line.as_bytes());
    }
    wire.extend_from_slice(b".\r\n");
    let delivered = original.replace("X-Attributed-Tenant: forged-by-client\r\n", "");
    (wire, delivered.into_bytes())
}

/// The values of header field `name` in `message` (its header section).
pub fn header<'a>(message: &'a str, name: &str) -> Vec<&'a str> {
    let head = message.split("\r\n\r\n").next().unwrap_or("");
    head.split("\r\n")
        .filter_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim())
        })
        .collect()
}
