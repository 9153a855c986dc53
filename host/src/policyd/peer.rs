//! Who is on the other end of a policy-service connection, as the
//! per-client limit counts it.
//!
//! Any local user can bind any address of 127.0.0.0/8, so counting loopback
//! TCP clients by address lets one user open the per-client limit's worth
//! of connections from each of many addresses and take every slot. A
//! loopback client is therefore counted by the user owning its socket, as
//! the kernel lists it in `/proc/net/tcp` and `/proc/net/tcp6` (a UNIX-socket
//! client is counted by `SO_PEERCRED`'s uid, and a remote one by address).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::directory::canonical_ip;

/// The name `peer` is counted under for a connection to our `local`
/// address: `uid N` for a loopback client whose socket the kernel lists,
/// else its address.
pub fn client_of(peer: SocketAddr, local: SocketAddr) -> String {
    let ip = canonical_ip(peer.ip());
    if ip.is_loopback()
        && let Some(uid) = loopback_owner(peer, local)
    {
        return format!("uid {uid}");
    }
    ip.to_string()
}

/// The uid owning the client end (`peer`) of a loopback connection to
/// `local`, from the kernel's socket tables.
fn loopback_owner(peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            owner_in(&text, peer, local)
        })
}

/// The uid of the row of a `/proc/net/tcp`-format `table` whose local end
/// is `peer` and remote end `local`: the client's own socket.
fn owner_in(table: &str, peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    let same = |a: Option<SocketAddr>, b: SocketAddr| {
        a.is_some_and(|a| a.port() == b.port() && canonical_ip(a.ip()) == canonical_ip(b.ip()))
    };
    table.lines().skip(1).find_map(|row| {
        let fields: Vec<&str> = row.split_whitespace().collect();
        let (ours, theirs, uid) = (fields.get(1)?, fields.get(2)?, fields.get(7)?);
        (same(endpoint(ours), peer) && same(endpoint(theirs), local))
            .then(|| uid.parse().ok())
            .flatten()
    })
}

/// `ADDR:PORT` as the kernel writes it: the address as 32-bit words in
/// host byte order, each in hex; the port in hex.
fn endpoint(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut octets = [0u8; 16];
            for i in 0..4 {
                octets[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_socket_row_gives_its_owner() {
        // Rows as Linux writes them on a little-endian machine: the
        // client 127.0.5.1:40000 (uid 1000) connected to 127.0.0.1:10040,
        // and the relay's own end of it (uid 0).
        let v4 = |a: [u8; 4]| format!("{:08X}", u32::from_ne_bytes(a));
        let table = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: {}:9CB8 {}:9C40 01 00000000:00000000 00:00000000 00000000  0        0 1 1\n   1: {}:9C40 {}:9CB8 01 00000000:00000000 00:00000000 00000000  1000     0 2 1\n",
            v4([127, 0, 0, 1]),
            v4([127, 0, 5, 1]),
            v4([127, 0, 5, 1]),
            v4([127, 0, 0, 1]),
        );
        let peer: SocketAddr = "127.0.5.1:40000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:40120".parse().unwrap();
        assert_eq!(owner_in(&table, peer, local), Some(1000));
        let stranger: SocketAddr = "127.0.5.2:40000".parse().unwrap();
        assert_eq!(owner_in(&table, stranger, local), None);
    }

    #[test]
    fn ipv6_endpoints_are_read_word_by_word() {
        let words: String = [
            [0u8, 0, 0, 0],
            [0, 0, 0, 0],
            [0, 0, 0xff, 0xff],
            [127, 0, 0, 1],
        ]
        .iter()
        .map(|w| format!("{:08X}", u32::from_ne_bytes(*w)))
        .collect();
        let e = endpoint(&format!("{words}:0019")).unwrap();
        assert_eq!(e, "[::ffff:127.0.0.1]:25".parse().unwrap());
        assert_eq!(canonical_ip(e.ip()), IpAddr::from([127, 0, 0, 1]));
    }

    #[test]
    fn a_loopback_client_of_this_process_is_counted_by_its_user() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(local).unwrap();
        let (_, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let uid = rustix::process::getuid().as_raw();
        assert_eq!(client_of(peer, local), format!("uid {uid}"));
        let remote: SocketAddr = "192.0.2.7:1234".parse().unwrap();
        assert_eq!(client_of(remote, local), "192.0.2.7");
    }
}
