//! A tiny authoritative DNS server over UDP for MX delivery tests: answers
//! MX and A queries from a fixed zone, NODATA for a name that exists with
//! other types, NXDOMAIN for a name that does not exist.

use std::net::{Ipv4Addr, SocketAddr};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, MX};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

/// One record of the zone.
#[derive(Clone, Debug)]
pub enum Rec {
    Mx(u16, &'static str),
    A(Ipv4Addr),
}

pub struct Dns {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn name(n: &str) -> Name {
    let mut n = Name::from_ascii(n).unwrap();
    n.set_fqdn(true);
    n
}

/// Serves `zone` (owner name, record) on a loopback UDP port.
pub async fn start(zone: Vec<(&'static str, Rec)>) -> Dns {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut reply = Message::new();
            reply
                .set_id(query.id())
                .set_message_type(MessageType::Response)
                .set_op_code(query.op_code())
                .set_authoritative(true)
                .set_recursion_desired(query.recursion_desired())
                .set_recursion_available(true);
            let mut code = ResponseCode::NoError;
            for q in query.queries() {
                reply.add_query(q.clone());
                let qname = q.name().to_ascii().to_ascii_lowercase();
                let qname = qname.trim_end_matches('.');
                let owned: Vec<&Rec> = zone
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(qname))
                    .map(|(_, r)| r)
                    .collect();
                if owned.is_empty() {
                    code = ResponseCode::NXDomain;
                    continue;
                }
                for r in owned {
                    let rdata = match (r, q.query_type()) {
                        (Rec::Mx(p, host), RecordType::MX) => RData::MX(MX::new(*p, name(host))),
                        (Rec::A(ip), RecordType::A) => RData::A(A(*ip)),
                        _ => continue,
                    };
                    reply.add_answer(Record::from_rdata(name(qname), 60, rdata));
                }
            }
            reply.set_response_code(code);
            // Answer EDNS with EDNS, so that replies past 512 bytes (forty
            // MX records) reach a resolver that offered a larger size.
            if let Some(edns) = query.extensions().clone() {
                reply.set_edns(edns);
            }
            if let Ok(bytes) = reply.to_vec() {
                let _ = socket.send_to(&bytes, peer).await;
            }
        }
    });
    Dns { addr, task }
}
