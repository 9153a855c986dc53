//! The tenant directory: accepted domains and connectors, indexed for the
//! lookups a policy makes through the `directory` interface.
//!
//! Indexes are built once per configuration and shared immutably (`Arc`)
//! between sessions, so a lookup costs a few hash probes whatever the number of
//! tenants: domains and certificate names by exact key, IP ranges by one probe
//! per distinct prefix length in use.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use attrelay_policy::model;
use ipnet::IpNet;

use crate::config::{Config, ConnectorType, Tenant};

/// Immutable, indexed tenant data.
#[derive(Debug, Default)]
pub struct Directory {
    connectors: Vec<model::Connector>,
    accepted: HashMap<String, Vec<String>>,
    tenants: HashMap<String, Vec<usize>>,
    domains: HashMap<String, String>,
    cert_names: HashMap<String, Vec<usize>>,
    /// prefix length -> network address -> connectors.
    v4: BTreeMap<u8, HashMap<u32, Vec<usize>>>,
    v6: BTreeMap<u8, HashMap<u128, Vec<usize>>>,
}

fn mask_v4(addr: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        addr & (u32::MAX << (32 - u32::from(len)))
    }
}

fn mask_v6(addr: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        addr & (u128::MAX << (128 - u32::from(len)))
    }
}

/// A range as admins write it: a single address without its `/32` or `/128`.
pub fn net_text(n: &IpNet) -> String {
    if n.prefix_len() == n.max_prefix_len() {
        n.addr().to_string()
    } else {
        n.to_string()
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) are the IPv4 client they carry.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl Directory {
    pub fn from_config(config: &Config) -> Directory {
        Self::from_tenants(&config.tenants)
    }

    /// The built-in scenario fixture as a directory (for validating policies).
    pub fn from_fixture(fixture: &attrelay_policy::scenarios::MemoryDirectory) -> Directory {
        let tenants: Vec<Tenant> = fixture
            .tenants
            .iter()
            .map(|t| Tenant {
                id: t.id.clone(),
                accepted_domains: t.accepted_domains.clone(),
                line: 0,
                policy: None,
                connectors: t
                    .connectors
                    .iter()
                    .map(|c| crate::config::Connector {
                        name: c.name.clone(),
                        kind: match c.kind {
                            model::ConnectorKind::OnPremises => ConnectorType::OnPremises,
                            model::ConnectorKind::Partner => ConnectorType::Partner,
                        },
                        enabled: c.enabled,
                        sender_ip_addresses: c
                            .sender_ip_addresses
                            .iter()
                            .filter_map(|n| crate::config::parse_net(n).ok())
                            .collect(),
                        tls_sender_certificate_name: c.tls_sender_certificate_name.clone(),
                        sender_domains: c.sender_domains.clone(),
                        recipient_domains: c.recipient_domains.clone(),
                        restrict_domains_to_ip_addresses: c.restrict_domains_to_ip_addresses,
                        restrict_domains_to_certificate: c.restrict_domains_to_certificate,
                        line: 0,
                    })
                    .collect(),
            })
            .collect();
        Self::from_tenants(&tenants)
    }

    pub fn from_tenants(tenants: &[Tenant]) -> Directory {
        let mut d = Directory::default();
        for t in tenants {
            for domain in &t.accepted_domains {
                d.domains.insert(domain.clone(), t.id.clone());
            }
            d.accepted.insert(t.id.clone(), t.accepted_domains.clone());
            let mut ids = Vec::new();
            for c in &t.connectors {
                let idx = d.connectors.len();
                ids.push(idx);
                if let Some(n) = &c.tls_sender_certificate_name {
                    d.cert_names.entry(n.clone()).or_default().push(idx);
                }
                for net in &c.sender_ip_addresses {
                    match net {
                        IpNet::V4(n) => {
                            d.v4.entry(n.prefix_len())
                                .or_default()
                                .entry(u32::from(n.network()))
                                .or_default()
                                .push(idx)
                        }
                        IpNet::V6(n) => {
                            d.v6.entry(n.prefix_len())
                                .or_default()
                                .entry(u128::from(n.network()))
                                .or_default()
                                .push(idx)
                        }
                    }
                }
                d.connectors.push(model::Connector {
                    tenant: t.id.clone(),
                    name: c.name.clone(),
                    kind: match c.kind {
                        ConnectorType::OnPremises => model::ConnectorKind::OnPremises,
                        ConnectorType::Partner => model::ConnectorKind::Partner,
                    },
                    enabled: c.enabled,
                    sender_ip_addresses: c.sender_ip_addresses.iter().map(net_text).collect(),
                    tls_sender_certificate_name: c.tls_sender_certificate_name.clone(),
                    sender_domains: c.sender_domains.clone(),
                    recipient_domains: c.recipient_domains.clone(),
                    restrict_domains_to_ip_addresses: c.restrict_domains_to_ip_addresses,
                    restrict_domains_to_certificate: c.restrict_domains_to_certificate,
                });
            }
            d.tenants.insert(t.id.clone(), ids);
        }
        d
    }

    /// A tenant's accepted domains.
    pub fn accepted_domains(&self, tenant: &str) -> Vec<String> {
        self.accepted.get(tenant).cloned().unwrap_or_default()
    }

    /// Number of tenants.
    pub fn tenant_count(&self) -> usize {
        self.tenants.len()
    }

    /// Whether a tenant with this id exists.
    pub fn has_tenant(&self, id: &str) -> bool {
        self.tenants.contains_key(id)
    }

    /// Every connector, in configuration order.
    pub fn connectors(&self) -> &[model::Connector] {
        &self.connectors
    }

    fn pick(&self, idx: &[usize]) -> Vec<model::Connector> {
        idx.iter().map(|&i| self.connectors[i].clone()).collect()
    }

    fn ip_indexes(&self, ip: IpAddr) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::new();
        match canonical_ip(ip) {
            IpAddr::V4(v4) => {
                let a = u32::from(v4);
                for (len, map) in &self.v4 {
                    if let Some(ids) = map.get(&mask_v4(a, *len)) {
                        out.extend(ids);
                    }
                }
            }
            IpAddr::V6(v6) => {
                let a = u128::from(v6);
                for (len, map) in &self.v6 {
                    if let Some(ids) = map.get(&mask_v6(a, *len)) {
                        out.extend(ids);
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

impl model::Directory for Directory {
    fn connectors_by_ip(&self, ip: IpAddr) -> Vec<model::Connector> {
        self.pick(&self.ip_indexes(ip))
    }

    fn connectors_by_certificate_name(&self, name: &str) -> Vec<model::Connector> {
        let key = attrelay_policy::certname::normalize(name);
        self.cert_names
            .get(&key)
            .map(|ids| self.pick(ids))
            .unwrap_or_default()
    }

    fn connectors_of_tenant(&self, tenant: &str) -> Vec<model::Connector> {
        self.tenants
            .get(tenant)
            .map(|ids| self.pick(ids))
            .unwrap_or_default()
    }

    fn tenant_of_domain(&self, domain: &str) -> Option<String> {
        self.domains
            .get(&attrelay_policy::certname::normalize(domain))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attrelay_policy::model::Directory as _;
    use std::path::Path;

    #[test]
    fn lookups() {
        let cfg = Config::parse(
            Path::new("t.toml"),
            r#"
[[tenant]]
id = "contoso"
accepted_domains = ["contoso.com", "Contoso.NET."]
[[tenant.connector]]
name = "onprem"
type = "on-premises"
sender_ip_addresses = ["203.0.113.0/24", "198.51.100.7", "2001:db8::/32"]
tls_sender_certificate_name = "*.Contoso.com"
"#,
        )
        .unwrap();
        let d = Directory::from_config(&cfg);
        for ip in [
            "203.0.113.9",
            "198.51.100.7",
            "2001:db8::1",
            "::ffff:203.0.113.1",
        ] {
            assert_eq!(d.connectors_by_ip(ip.parse().unwrap()).len(), 1, "{ip}");
        }
        for ip in ["203.0.114.1", "198.51.100.8", "2001:db9::1"] {
            assert!(d.connectors_by_ip(ip.parse().unwrap()).is_empty(), "{ip}");
        }
        assert_eq!(d.connectors_by_certificate_name("*.contoso.com.").len(), 1);
        assert!(d.connectors_by_certificate_name("contoso.com").is_empty());
        assert_eq!(
            d.tenant_of_domain("CONTOSO.net").as_deref(),
            Some("contoso")
        );
        assert_eq!(d.tenant_of_domain("mail.contoso.com"), None);
    }
}
