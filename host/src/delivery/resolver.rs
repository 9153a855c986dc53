//! The DNS resolver for MX delivery.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, NameServerConfigGroup, ResolverConfig,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;

/// The resolver for MX delivery, built once and shared by every attempt (so
/// its cache is too): the system's (`/etc/resolv.conf`) unless `servers`
/// names recursive resolvers to ask instead (`[delivery] dns_servers`).
pub fn resolver(servers: &[SocketAddr]) -> Result<TokioResolver, String> {
    let mut builder = if servers.is_empty() {
        TokioResolver::builder_tokio()
            .map_err(|e| format!("reading the system DNS configuration: {e}"))?
    } else {
        let mut group = NameServerConfigGroup::new();
        for s in servers {
            group.push(NameServerConfig::new(*s, Protocol::Udp));
            group.push(NameServerConfig::new(*s, Protocol::Tcp));
        }
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], group),
            TokioConnectionProvider::default(),
        )
    };
    let opts = builder.options_mut();
    opts.timeout = Duration::from_secs(5);
    opts.attempts = 2;
    // Both families: an MX host reachable over only one of them is tried
    // on that one.
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // Names in mail are absolute; no search list.
    opts.ndots = 0;
    // EDNS: a domain with many MX hosts answers past 512 bytes, which
    // without it means a truncated reply and a retry over TCP (or none).
    opts.edns0 = true;
    Ok(builder.build())
}
