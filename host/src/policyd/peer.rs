//! Who is on the other end of a policy-service connection, as the
//! per-client limit counts it.
//!
//! Any local user can bind any address of 127.0.0.0/8 (and the host's own
//! addresses), so counting local TCP clients by address lets one user open
//! the per-client limit's worth of connections from each of many addresses
//! and take every slot. A TCP client on this host is therefore counted by
//! the user owning its socket, which the kernel tells for exactly that
//! socket (`sock_diag`, as `ss` asks it: one lookup by the connection's
//! addresses and ports, whatever the number of sockets). A remote client is
//! counted by address, and a UNIX-socket client by `SO_PEERCRED`'s uid.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::directory::canonical_ip;

/// The name `peer` is counted under for a connection to our `local`
/// address: `uid N` when the kernel knows the client's socket (it is on
/// this host), else its address.
pub fn client_of(peer: SocketAddr, local: SocketAddr) -> String {
    match socket_owner(peer, local) {
        Some(uid) => format!("uid {uid}"),
        None => canonical_ip(peer.ip()).to_string(),
    }
}

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLMSG_ERROR` (linux/netlink.h).
const NLMSG_ERROR: u16 = 2;
/// `INET_DIAG_NOCOOKIE`: look the socket up by addresses alone.
const NO_COOKIE: u32 = u32::MAX;
/// A netlink header, then an `inet_diag_req_v2` (family, protocol, ext,
/// pad, states) and its 48-byte `inet_diag_sockid`.
const REQUEST_LEN: usize = 16 + 8 + 48;
/// Where the uid is in an `inet_diag_msg` after the netlink header: four
/// bytes of family and state, the socket id, then expires, rqueue, wqueue.
const UID_AT: usize = 16 + 4 + 48 + 12;

/// The uid owning the client end (`client`) of a TCP connection to
/// `server`, when that socket is on this host.
fn socket_owner(client: SocketAddr, server: SocketAddr) -> Option<u32> {
    let (c, s) = (canonical_ip(client.ip()), canonical_ip(server.ip()));
    let family = match (c, s) {
        (IpAddr::V4(_), IpAddr::V4(_)) => libc::AF_INET,
        (IpAddr::V6(_), IpAddr::V6(_)) => libc::AF_INET6,
        _ => return None,
    };
    let request = diag_request(family as u8, (c, client.port()), (s, server.port()));
    // SAFETY: `socket` takes no pointers; a descriptor it returns is owned
    // by the `OwnedFd` from here on.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return None;
    }
    // SAFETY: `raw` is a descriptor just opened and owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: the buffer is `request`, alive and `request.len()` long.
    let sent = unsafe { libc::send(fd.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
    if sent != request.len() as isize {
        return None;
    }
    let mut reply = [0u8; 512];
    // The kernel answers within the send; never wait all the same.
    // SAFETY: `reply` is writable for its whole length during the call.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            reply.as_mut_ptr().cast(),
            reply.len(),
            libc::MSG_DONTWAIT,
        )
    };
    let reply = reply.get(..usize::try_from(n).ok()?)?;
    uid_in(reply, client.port(), server.port())
}

/// The netlink request for the socket with local end `ours` and remote
/// end `theirs`.
fn diag_request(family: u8, ours: (IpAddr, u16), theirs: (IpAddr, u16)) -> Vec<u8> {
    let address = |ip: IpAddr| -> [u8; 16] {
        let mut a = [0u8; 16];
        match ip {
            IpAddr::V4(v4) => a[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => a = v6.octets(),
        }
        a
    };
    let mut r = Vec::with_capacity(REQUEST_LEN);
    r.extend_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    r.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    r.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    r.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    r.extend_from_slice(&0u32.to_ne_bytes()); // to the kernel
    r.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    r.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    r.extend_from_slice(&ours.1.to_be_bytes());
    r.extend_from_slice(&theirs.1.to_be_bytes());
    r.extend_from_slice(&address(ours.0));
    r.extend_from_slice(&address(theirs.0));
    r.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    r.extend_from_slice(&NO_COOKIE.to_ne_bytes());
    r.extend_from_slice(&NO_COOKIE.to_ne_bytes());
    r
}

/// The uid of a `sock_diag` answer about the socket with these ports; not
/// for an error (no such socket on this host) or anything else.
fn uid_in(reply: &[u8], our_port: u16, their_port: u16) -> Option<u32> {
    let kind = u16::from_ne_bytes(reply.get(4..6)?.try_into().ok()?);
    if kind == NLMSG_ERROR || kind != SOCK_DIAG_BY_FAMILY {
        return None;
    }
    let ports = reply.get(20..24)?;
    if ports[..2] != our_port.to_be_bytes() || ports[2..] != their_port.to_be_bytes() {
        return None;
    }
    Some(u32::from_ne_bytes(
        reply.get(UID_AT..UID_AT + 4)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_client_is_counted_by_its_user_whatever_its_address() {
        let uid = rustix::process::getuid().as_raw();
        for (listen, from) in [("127.0.0.1", "127.0.5.1"), ("127.0.0.1", "127.0.0.1")] {
            let listener = std::net::TcpListener::bind((listen, 0)).unwrap();
            let local = listener.local_addr().unwrap();
            let socket = socket2_free_connect(from, local);
            let (_, peer) = listener.accept().unwrap();
            assert_eq!(peer, socket.local_addr().unwrap());
            assert_eq!(client_of(peer, local), format!("uid {uid}"), "from {from}");
        }
        let listener = std::net::TcpListener::bind("[::1]:0");
        if let Ok(listener) = listener {
            let local = listener.local_addr().unwrap();
            let _client = std::net::TcpStream::connect(local).unwrap();
            let (_, peer) = listener.accept().unwrap();
            assert_eq!(client_of(peer, local), format!("uid {uid}"), "over IPv6");
        }
    }

    #[test]
    fn a_client_the_kernel_does_not_know_is_counted_by_address() {
        let local: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let remote: SocketAddr = "192.0.2.7:1234".parse().unwrap();
        assert_eq!(client_of(remote, local), "192.0.2.7");
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:1234".parse().unwrap();
        assert_eq!(client_of(mapped, local), "192.0.2.7");
    }

    /// A TCP connection to `to` from the address `from`.
    fn socket2_free_connect(from: &str, to: SocketAddr) -> std::net::TcpStream {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind(SocketAddr::new(from.parse().unwrap(), 0)).unwrap();
            s.connect(to).await.unwrap().into_std().unwrap()
        })
    }
}
