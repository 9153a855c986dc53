//! The directory lint: what a configuration that loads may still get
//! wrong, each with the line to fix (`attrelay directory lint`; `serve`,
//! `check`, `config test` and reloads say the same). The configuration's
//! own warnings (a host-name connector whose domain is not accepted) come
//! with it; this module adds what needs every tenant at once:
//!
//! - certificate names that connectors of two tenants match (which one
//!   takes a certificate depends on accepted domains and specificity);
//! - one tenant's IP range overlapping another's;
//! - a tenant whose every on-premises connector is disabled, or which has
//!   none (its servers cannot relay);
//! - the grants an operator regrets: a range wider than a /16 (IPv4) or
//!   /48 (IPv6), the whole Internet above all;
//! - certificate-based connectors while no `client_ca` is configured
//!   (no certificate can ever verify, so they never match).
//!
//! Each check is near-linear in the number of connectors (sorted sweeps
//! and lookups by domain), so that it runs at every start and reload of a
//! directory of a hundred thousand tenants; each class is capped at
//! [`MAX_PER_CLASS`] findings, the rest counted.

use std::collections::HashMap;
use std::net::IpAddr;

use attrelay_policy::certname;
use attrelay_policy::model::{Connector, ConnectorKind};
use ipnet::IpNet;

use crate::config::{Config, ConfigWarning};

/// Findings of one class shown at most; the rest are counted in one line.
pub const MAX_PER_CLASS: usize = 50;
/// The widest IPv4 range a connector should grant without a warning.
pub const WIDEST_V4: u8 = 16;
/// The widest IPv6 range a connector should grant without a warning.
pub const WIDEST_V6: u8 = 48;

/// A connector as the checks see it: where it is written, and whose.
struct Site<'a> {
    tenant_index: usize,
    index: usize,
    line: usize,
    connector: &'a Connector,
}

impl Site<'_> {
    fn key(&self, field: &str) -> String {
        format!(
            "tenant[{}].connector[{}].{field}",
            self.tenant_index, self.index
        )
    }
}

/// Every finding of the lint beyond the configuration's own warnings.
pub fn findings(config: &Config) -> Vec<ConfigWarning> {
    let sites: Vec<Site<'_>> = config
        .tenants
        .iter()
        .enumerate()
        .flat_map(|(ti, t)| {
            t.connectors.iter().enumerate().map(move |(ci, c)| Site {
                tenant_index: ti,
                index: ci,
                line: t.connector_lines.get(ci).copied().unwrap_or(t.line),
                connector: c,
            })
        })
        .collect();
    let on_prem: Vec<&Site<'_>> = sites
        .iter()
        .filter(|s| s.connector.kind == ConnectorKind::OnPremises && s.connector.enabled)
        .collect();
    let mut out = Vec::new();
    out.extend(capped(wide_ranges(&on_prem)));
    out.extend(capped(overlapping_ranges(&on_prem)));
    out.extend(capped(shared_certificate_names(config, &on_prem)));
    out.extend(capped(no_way_in(config)));
    out.extend(certificates_without_ca(config, &on_prem));
    out
}

/// The configuration's warnings and the lint's, in one report.
pub fn report(config: &Config) -> Vec<ConfigWarning> {
    let mut all = config.warnings.clone();
    all.extend(findings(config));
    all
}

/// At most [`MAX_PER_CLASS`] of `found`, then a line counting the rest.
fn capped(mut found: Vec<ConfigWarning>) -> Vec<ConfigWarning> {
    if found.len() > MAX_PER_CLASS {
        let rest = found.len() - MAX_PER_CLASS;
        let first = found[0].clone();
        found.truncate(MAX_PER_CLASS);
        found.push(ConfigWarning {
            line: first.line,
            key: first.key,
            message: format!("... and {rest} more like the above"),
        });
    }
    found
}

fn nets(c: &Connector) -> impl Iterator<Item = IpNet> + '_ {
    c.sender_ip_addresses
        .iter()
        .filter_map(|a| crate::directory::parse_net(a).ok())
}

/// Ranges wider than a /16 or a /48; the whole address space above all.
fn wide_ranges(sites: &[&Site<'_>]) -> Vec<ConfigWarning> {
    let mut out = Vec::new();
    for s in sites {
        for net in nets(s.connector) {
            let (widest, everything) = match net {
                IpNet::V4(_) => (WIDEST_V4, "0.0.0.0/0"),
                IpNet::V6(_) => (WIDEST_V6, "::/0"),
            };
            let message = if net.prefix_len() == 0 {
                format!(
                    "{everything} makes every address on the Internet tenant {}'s server: anyone who writes MAIL FROM in one of its domains can relay through this relay; list the tenant's own servers",
                    s.connector.tenant
                )
            } else if net.prefix_len() < widest {
                format!(
                    "{net} is wider than a /{widest}: every address in it may relay as tenant {}; list the tenant's own servers",
                    s.connector.tenant
                )
            } else {
                continue;
            };
            out.push(ConfigWarning {
                line: s.line,
                key: s.key("sender_ip_addresses"),
                message,
            });
        }
    }
    out
}

/// A range's first and last address, in its own family.
fn span(net: &IpNet) -> (u128, u128) {
    let wide = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    };
    (wide(net.network()), wide(net.broadcast()))
}

/// Other tenants' ranges a range is compared with, at most; the rest are
/// counted.
const RIVALS_NAMED: usize = 3;

/// One tenant's range overlapping another tenant's: both identify the same
/// servers, and the sender domain alone then tells the tenants apart. IPv4
/// and IPv6 each swept apart, ranges sorted by start, the ranges still open
/// (reaching the current start) kept by their end.
fn overlapping_ranges(sites: &[&Site<'_>]) -> Vec<ConfigWarning> {
    let mut out = Vec::new();
    for v4 in [true, false] {
        // One entry per range and tenant: a tenant's own duplicates
        // overlap nothing of anyone else's twice.
        let mut ranges: Vec<(u128, u128, IpNet, &Site<'_>)> = sites
            .iter()
            .flat_map(|s| nets(s.connector).map(move |n| (n, *s)))
            .filter(|(n, _)| matches!(n, IpNet::V4(_)) == v4)
            .map(|(n, s)| (span(&n).0, span(&n).1, n, s))
            .collect();
        ranges.sort_by(|a, b| {
            (a.0, std::cmp::Reverse(a.1), &a.3.connector.tenant).cmp(&(
                b.0,
                std::cmp::Reverse(b.1),
                &b.3.connector.tenant,
            ))
        });
        ranges.dedup_by(|a, b| {
            a.0 == b.0 && a.1 == b.1 && a.3.connector.tenant == b.3.connector.tenant
        });
        let mut open: std::collections::BinaryHeap<std::cmp::Reverse<(u128, usize)>> =
            Default::default();
        for (i, (start, end, net, site)) in ranges.iter().enumerate() {
            while open
                .peek()
                .is_some_and(|std::cmp::Reverse((e, _))| e < start)
            {
                open.pop();
            }
            let rivals: Vec<usize> = open
                .iter()
                .map(|std::cmp::Reverse((_, j))| *j)
                .filter(|j| ranges[*j].3.connector.tenant != site.connector.tenant)
                .take(RIVALS_NAMED + 1)
                .collect();
            if let Some(&first) = rivals.first() {
                let (_, _, wide, owner) = &ranges[first];
                let more = if rivals.len() > RIVALS_NAMED {
                    " (and ranges of other tenants too)"
                } else {
                    ""
                };
                out.push(ConfigWarning {
                    line: site.line,
                    key: site.key("sender_ip_addresses"),
                    message: format!(
                        "{net} of {} overlaps {wide} of {} (line {}){more}: a server there is identified for both tenants, and only its MAIL FROM domain tells them apart",
                        site.connector.label(),
                        owner.connector.label(),
                        owner.line
                    ),
                });
            }
            open.push(std::cmp::Reverse((*end, i)));
        }
    }
    out
}

/// Whether connector `c`'s certificate name's domain is an accepted domain
/// of its own tenant: then it attributes by certificate (step 2);
/// otherwise it only identifies the server (step 3).
fn certificate_based(c: &Connector, accepted: &HashMap<&str, &str>) -> bool {
    c.tls_sender_certificate_name
        .as_deref()
        .is_some_and(|n| accepted.get(certname::domain_of(n)) == Some(&c.tenant.as_str()))
}

/// Connectors of different tenants whose certificate names cover some of
/// the same names. Looked up by the domains a name or wildcard covers
/// (each connector costs its labels), one finding per connector however
/// many rivals share its name.
fn shared_certificate_names(config: &Config, sites: &[&Site<'_>]) -> Vec<ConfigWarning> {
    let accepted: HashMap<&str, &str> = config
        .tenants
        .iter()
        .flat_map(|t| {
            t.accepted_domains
                .iter()
                .map(move |d| (d.as_str(), t.id.as_str()))
        })
        .collect();
    // Connectors by the exact name, and wildcards by the domain they cover
    // (`*.d` covers `d` and below).
    let mut exact: HashMap<&str, Group<'_>> = HashMap::new();
    let mut wildcards: HashMap<&str, Group<'_>> = HashMap::new();
    for s in sites {
        let Some(name) = s.connector.tls_sender_certificate_name.as_deref() else {
            continue;
        };
        let group = match name.strip_prefix("*.") {
            Some(domain) => wildcards.entry(domain).or_default(),
            None => exact.entry(name).or_default(),
        };
        group.add(s);
    }
    let mut out = Vec::new();
    for s in sites {
        let Some(name) = s.connector.tls_sender_certificate_name.as_deref() else {
            continue;
        };
        let own = s.connector.tenant.as_str();
        let mut groups: Vec<&Group<'_>> = Vec::new();
        if !certname::is_wildcard(name) {
            groups.extend(exact.get(name));
        }
        let mut d = certname::domain_of(name);
        loop {
            groups.extend(wildcards.get(d));
            match d.split_once('.') {
                Some((_, parent)) if parent.contains('.') => d = parent,
                _ => break,
            }
        }
        let rivals: usize = groups.iter().map(|g| g.others(own)).sum();
        let Some(rival) = groups.iter().find_map(|g| g.first_other(own)) else {
            continue;
        };
        let kind = |c: &Connector| {
            if certificate_based(c, &accepted) {
                "certificate-based: it attributes a certificate to its tenant"
            } else {
                "its domain is not accepted by its tenant: it only identifies the server"
            }
        };
        let rival_name = rival
            .connector
            .tls_sender_certificate_name
            .as_deref()
            .unwrap_or_default();
        out.push(ConfigWarning {
            line: s.line,
            key: s.key("tls_sender_certificate_name"),
            message: format!(
                "{} ({name}; {}) matches some certificate names that {} connector(s) of other tenants match too, first {} ({rival_name}, line {}; {}): where several certificate-based connectors match, the most specific name takes the certificate (a tie attributes it to no tenant), and connectors that only identify the server leave the choice to the sender domain; make sure each tenant's servers present names no other tenant's connector matches",
                s.connector.label(),
                kind(s.connector),
                rivals,
                rival.connector.label(),
                rival.line,
                kind(rival.connector)
            ),
        });
    }
    out
}

/// Connectors sharing one certificate name (or wildcard domain), counted
/// by tenant so that "the others" costs nothing to find.
#[derive(Default)]
struct Group<'a> {
    sites: Vec<&'a Site<'a>>,
    by_tenant: HashMap<&'a str, usize>,
    /// The first site of each of the first two tenants seen.
    firsts: Vec<&'a Site<'a>>,
}

impl<'a> Group<'a> {
    fn add(&mut self, s: &'a Site<'a>) {
        let tenant = s.connector.tenant.as_str();
        let n = self.by_tenant.entry(tenant).or_default();
        if *n == 0 && self.firsts.len() < 2 {
            self.firsts.push(s);
        }
        *n += 1;
        self.sites.push(s);
    }

    /// How many of its connectors belong to another tenant than `own`.
    fn others(&self, own: &str) -> usize {
        self.sites.len() - self.by_tenant.get(own).copied().unwrap_or(0)
    }

    fn first_other(&self, own: &str) -> Option<&'a Site<'a>> {
        self.firsts
            .iter()
            .find(|s| s.connector.tenant != own)
            .copied()
    }
}

/// Tenants whose servers cannot relay: no on-premises connector at all,
/// or only disabled ones.
fn no_way_in(config: &Config) -> Vec<ConfigWarning> {
    let mut out = Vec::new();
    for (ti, t) in config.tenants.iter().enumerate() {
        if t.accepted_domains.is_empty() {
            continue;
        }
        let on_prem: Vec<(usize, &Connector)> = t
            .connectors
            .iter()
            .enumerate()
            .filter(|(_, c)| c.kind == ConnectorKind::OnPremises)
            .collect();
        let message = if on_prem.is_empty() {
            format!(
                "tenant {} has accepted domains but no on-premises connector: it receives mail, and its own servers cannot relay any",
                t.id
            )
        } else if on_prem.iter().all(|(_, c)| !c.enabled) {
            let names: Vec<String> = on_prem
                .iter()
                .map(|(_, c)| format!("'{}'", c.name))
                .collect();
            format!(
                "every on-premises connector of tenant {} is disabled ({}): its servers cannot relay; enable one",
                t.id,
                names.join(", ")
            )
        } else {
            continue;
        };
        let (line, key) = match on_prem.first() {
            Some((ci, _)) => (
                t.connector_lines.get(*ci).copied().unwrap_or(t.line),
                format!("tenant[{ti}].connector[{ci}].enabled"),
            ),
            None => (t.line, format!("tenant[{ti}]")),
        };
        out.push(ConfigWarning { line, key, message });
    }
    out
}

/// Certificate-based connectors with no CA to verify a certificate
/// against: no certificate verifies, so none of them can ever match.
fn certificates_without_ca(config: &Config, sites: &[&Site<'_>]) -> Vec<ConfigWarning> {
    if !config.server.client_ca.is_empty() {
        return Vec::new();
    }
    let with_names: Vec<&&Site<'_>> = sites
        .iter()
        .filter(|s| s.connector.tls_sender_certificate_name.is_some())
        .collect();
    let Some(first) = with_names.first() else {
        return Vec::new();
    };
    vec![ConfigWarning {
        line: first.line,
        key: first.key("tls_sender_certificate_name"),
        message: format!(
            "{} connector(s) attribute by certificate, starting with {}, but [server] client_ca is not set: no client certificate can verify, so none of them ever matches; set client_ca to the CA that issues your tenants' server certificates",
            with_names.len(),
            first.connector.label()
        ),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn lint(text: &str) -> Vec<String> {
        let config = Config::parse(Path::new("relay.toml"), text).unwrap();
        findings(&config)
            .into_iter()
            .map(|w| format!("{}: {}: {}", w.line, w.key, w.message))
            .collect()
    }

    fn tenant(id: &str, domain: &str, connector: &str) -> String {
        format!(
            "[[tenant]]\nid = \"{id}\"\naccepted_domains = [\"{domain}\"]\n[[tenant.connector]]\nname = \"{id}\"\ntype = \"on-premises\"\n{connector}\n"
        )
    }

    const CA: &str = "[server]\nclient_ca = [\"ca.pem\"]\n";

    #[test]
    fn the_whole_internet_and_wide_ranges() {
        let found = lint(&format!(
            "{CA}{}{}",
            tenant("a", "a.example", "sender_ip_addresses = [\"0.0.0.0/0\"]"),
            tenant(
                "b",
                "b.example",
                "sender_ip_addresses = [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.0/24\"]"
            )
        ));
        let text = found.join("\n");
        assert!(
            text.contains("0.0.0.0/0 makes every address on the Internet tenant a's server"),
            "{text}"
        );
        assert!(text.contains("10.0.0.0/8 is wider than a /16"), "{text}");
        assert!(text.contains("2001:db8::/32 is wider than a /48"), "{text}");
        assert!(!text.contains("192.0.2.0/24 is wider"), "{text}");
        // The whole Internet overlaps every other tenant's range too.
        assert!(
            text.contains("overlaps 0.0.0.0/0 of connector 'a' (tenant a)"),
            "{text}"
        );
        assert!(
            found[0].starts_with("7: tenant[0].connector[0].sender_ip_addresses"),
            "{found:?}"
        );
    }

    #[test]
    fn ranges_of_two_tenants_that_overlap() {
        let found = lint(&format!(
            "{CA}{}{}{}",
            tenant("a", "a.example", "sender_ip_addresses = [\"192.0.2.0/24\"]"),
            tenant(
                "b",
                "b.example",
                "sender_ip_addresses = [\"192.0.2.128/25\"]"
            ),
            tenant(
                "c",
                "c.example",
                "sender_ip_addresses = [\"198.51.100.0/24\"]"
            )
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("192.0.2.128/25 of connector 'b' (tenant b) overlaps 192.0.2.0/24 of connector 'a' (tenant a)"), "{found:?}");
    }

    #[test]
    fn one_certificate_name_two_tenants() {
        let found = lint(&format!(
            "{CA}{}{}{}",
            tenant(
                "a",
                "shared.example",
                "tls_sender_certificate_name = \"*.shared.example\""
            ),
            tenant(
                "b",
                "b.example",
                "tls_sender_certificate_name = \"*.shared.example\""
            ),
            tenant(
                "c",
                "c.example",
                "tls_sender_certificate_name = \"mail.shared.example\""
            )
        ));
        assert_eq!(found.len(), 3, "one finding per connector: {found:?}");
        let a = found
            .iter()
            .find(|f| f.contains("connector 'a' (tenant a) (*.shared.example; certificate-based"))
            .unwrap_or_else(|| panic!("{found:?}"));
        // A connector is compared with the names at and above its own (a
        // wildcard finds the narrower names that match it from theirs).
        assert!(a.contains("1 connector(s) of other tenants match too, first connector 'b' (tenant b) (*.shared.example, line 14; its domain is not accepted by its tenant"), "{a}");
        let c = found
            .iter()
            .find(|f| {
                f.contains(
                    "connector 'c' (tenant c) (mail.shared.example; its domain is not accepted",
                )
            })
            .unwrap_or_else(|| panic!("{found:?}"));
        assert!(
            c.contains("2 connector(s) of other tenants match too, first connector 'a' (tenant a)"),
            "{c}"
        );
    }

    #[test]
    fn a_thousand_tenants_on_one_name_cost_one_finding_each() {
        let mut text = CA.to_string();
        for i in 0..1000 {
            text += &tenant(
                &format!("t{i}"),
                &format!("t{i}.example"),
                "tls_sender_certificate_name = \"*.hoster.example\"",
            );
        }
        let found = lint(&text);
        assert_eq!(found.len(), MAX_PER_CLASS + 1, "{:?}", found.last());
        assert!(
            found.last().unwrap().contains("and 950 more"),
            "{:?}",
            found.last()
        );
        assert!(
            found[0].contains("999 connector(s) of other tenants"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn identical_and_nested_ranges_of_three_tenants() {
        let found = lint(&format!(
            "{CA}{}{}{}",
            tenant("a", "a.example", "sender_ip_addresses = [\"10.1.0.0/16\"]"),
            tenant("b", "b.example", "sender_ip_addresses = [\"10.1.2.0/24\"]"),
            tenant(
                "c",
                "c.example",
                "sender_ip_addresses = [\"10.1.2.0/24\", \"2001:db8:5::/48\"]"
            )
        ));
        let text = found.join("\n");
        assert!(
            text.contains(
                "10.1.2.0/24 of connector 'b' (tenant b) overlaps 10.1.0.0/16 of connector 'a'"
            ),
            "{text}"
        );
        assert!(
            text.contains("10.1.2.0/24 of connector 'c' (tenant c) overlaps"),
            "{text}"
        );
        // IPv4 and IPv6 are apart: an IPv6 range overlaps no IPv4 one.
        assert_eq!(found.len(), 2, "{text}");
    }

    #[test]
    fn tenants_that_cannot_relay_and_certificates_without_a_ca() {
        let found = lint(&format!(
            "{}{}[[tenant]]\nid = \"c\"\naccepted_domains = [\"c.example\"]\n",
            tenant(
                "a",
                "a.example",
                "tls_sender_certificate_name = \"*.a.example\""
            ),
            tenant(
                "b",
                "b.example",
                "sender_ip_addresses = [\"192.0.2.1\"]\nenabled = false"
            )
        ));
        let text = found.join("\n");
        assert!(
            text.contains("every on-premises connector of tenant b is disabled"),
            "{text}"
        );
        assert!(
            text.contains("tenant c has accepted domains but no on-premises connector"),
            "{text}"
        );
        assert!(
            text.contains("client_ca is not set: no client certificate can verify"),
            "{text}"
        );
    }

    #[test]
    fn a_clean_directory_has_nothing_to_say() {
        let found = lint(&format!(
            "{CA}{}{}",
            tenant(
                "a",
                "a.example",
                "sender_ip_addresses = [\"192.0.2.0/24\"]\ntls_sender_certificate_name = \"*.a.example\""
            ),
            tenant(
                "b",
                "b.example",
                "sender_ip_addresses = [\"198.51.100.0/24\"]"
            )
        ));
        assert!(found.is_empty(), "{found:?}");
    }
}
