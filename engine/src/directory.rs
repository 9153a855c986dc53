//! The tenant directory: accepted domains and connectors, indexed for the
//! lookups a policy makes through the `directory` interface.
//!
//! Indexes are built once per configuration and shared immutably (`Arc`)
//! between sessions, so a lookup costs a few hash probes whatever the number of
//! tenants: domains and certificate names by exact key, IP ranges by one probe
//! per distinct prefix length in use, recipients by exact (case-folded) key.
//!
//! It also holds the tenants' recipient lists (directory-based edge
//! blocking): a recipient in the accepted domains of a tenant that keeps a
//! list, and not on it, is refused at `RCPT TO` with Exchange Online's
//! `550 5.1.10 RESOLVER.ADR.RecipientNotFound` — before the `250` that would
//! otherwise end in a bounce to a possibly forged sender (backscatter).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use attrelay_policy::model;
use ipnet::IpNet;

use crate::address::Mailbox;

/// A tenant as the directory indexes it.
#[derive(Debug, Clone, Copy)]
pub struct TenantRecord<'a> {
    pub id: &'a str,
    /// Normalised (lower case, no trailing dot).
    pub accepted_domains: &'a [String],
    pub connectors: &'a [model::Connector],
    /// Its recipient list, canonical, when it keeps one.
    pub recipients: Option<&'a [Mailbox]>,
}

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
    /// tenant -> the [`recipient_key`]s of its recipient list, for tenants
    /// that keep one.
    recipients: HashMap<String, HashSet<String>>,
}

/// What a tenant's recipient list says about a recipient, asked at `RCPT TO`
/// before the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientCheck {
    /// Not for a tenant that keeps a recipient list: the domain is no
    /// accepted domain, or its tenant has no list. The policy alone decides.
    NotOurs,
    /// On the list of the tenant owning its domain (or its `postmaster`).
    Known,
    /// In an accepted domain of `tenant`, which keeps a list, and not on it:
    /// answer [`recipient_not_found_reply`].
    Unknown { tenant: String },
}

/// The reply code for a recipient missing from its tenant's list.
pub const RECIPIENT_NOT_FOUND_CODE: u16 = 550;
/// The enhanced status code Exchange Online gives it (the IANA registry has
/// X.1.10 as "recipient address has null MX", RFC 7505, but Exchange uses it
/// for directory-based edge blocking, and admins search for this exact
/// reply).
pub const RECIPIENT_NOT_FOUND_ENHANCED: &str = "5.1.10";
/// The longest address echoed in the reply: a path is at most 256 octets
/// (RFC 5321 4.5.3.1.3), and a reply line must stay within 512.
const MAX_ECHOED_ADDRESS: usize = 256;

/// The verdict's machine-readable reason (logs, metrics, decision log).
pub const RECIPIENT_NOT_FOUND_REASON: &str = "recipient-not-found";

/// `address` as it may be echoed to the client and into logs: the address
/// is client-controlled, so anything but printable ASCII becomes `?` and it
/// is cut at 256 characters, keeping a reply one valid line whatever is
/// passed.
fn echoed(address: &str) -> String {
    address
        .chars()
        .take(MAX_ECHOED_ADDRESS)
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// The text of the `550 5.1.10` reply, as Exchange Online words it, naming
/// `address`.
pub fn recipient_not_found_text(address: &str) -> String {
    format!(
        "RESOLVER.ADR.RecipientNotFound; Recipient {} not found by SMTP address lookup",
        echoed(address)
    )
}

/// The whole reply line (without CRLF):
/// `550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient <address> not found by SMTP address lookup`.
pub fn recipient_not_found_reply(address: &str) -> String {
    format!(
        "{RECIPIENT_NOT_FOUND_CODE} {RECIPIENT_NOT_FOUND_ENHANCED} {}",
        recipient_not_found_text(address)
    )
}

/// The same refusal as a verdict, for front ends that log, count and
/// answer verdicts ([`crate::evaluation`], `attrelay check`, the Postfix
/// policy service): attributed to `tenant`, whose list it is.
pub fn recipient_not_found_verdict(address: &str, tenant: &str) -> model::Verdict {
    model::Verdict {
        explanation: vec![format!(
            "{} is in an accepted domain of tenant {tenant}, which keeps a recipient list (recipients / recipients_file), and is not on it",
            echoed(address)
        )],
        ..attrelay_policy::replies::verdict(
            model::Action::Reject,
            RECIPIENT_NOT_FOUND_CODE,
            RECIPIENT_NOT_FOUND_ENHANCED,
            &recipient_not_found_text(address),
            Some(tenant.to_string()),
            RECIPIENT_NOT_FOUND_REASON,
        )
    }
}

/// The key a recipient is listed and looked up under: the canonical mailbox
/// (quotes only where needed, lower-case A-label domain) in ASCII lower case.
/// Case-insensitive in the local part too, as Exchange's SMTP address lookup
/// is (RFC 5321 leaves local-part case to the receiving domain, and the
/// tenants' own servers fold it), so `John.Smith@` and `john.smith@` are one
/// recipient, and a list exported in any case still matches.
pub fn recipient_key(mailbox: &Mailbox) -> String {
    mailbox.to_string().to_ascii_lowercase()
}

/// RFC 5321 4.5.1: `postmaster` at every domain a server accepts mail for
/// must be accepted, listed or not.
fn is_postmaster(mailbox: &Mailbox) -> bool {
    mailbox.local_part().eq_ignore_ascii_case("postmaster")
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

/// Parses an IP address or CIDR range. Host bits set in a range are an error:
/// `203.0.113.7/24` is almost always a typo for an address or for `.0/24`.
///
/// An IPv4-mapped IPv6 address or range (`::ffff:192.0.2.1`,
/// `::ffff:192.0.2.0/120`) is the IPv4 one it carries: clients are compared
/// as IPv4 ([`canonical_ip`]), so kept as IPv6 it could never match. Any
/// other IPv6 range stays IPv6 and matches IPv6 clients only, even one
/// that spans the mapped space (`::/0` is every IPv6 client, no IPv4 one).
/// See [`is_ipv4_mapped`] to tell the operator.
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    let t = text.trim();
    if let Ok(ip) = t.parse::<std::net::IpAddr>() {
        return Ok(IpNet::from(canonical_ip(ip)));
    }
    let net: IpNet = t.parse().map_err(|_| {
        format!("'{t}' is not an IP address or CIDR range (such as 203.0.113.5, 203.0.113.0/24 or 2001:db8::/32)")
    })?;
    if net.trunc() != net {
        return Err(format!(
            "'{t}' has host bits set; did you mean {} (the range) or {} (the address)?",
            net.trunc(),
            net.addr()
        ));
    }
    match net {
        // A mapped network has a prefix of 96 or more: a shorter one has
        // host bits where `ffff` is, refused above.
        IpNet::V6(v6) => match (
            v6.network().to_ipv4_mapped(),
            v6.prefix_len().checked_sub(96),
        ) {
            (Some(v4), Some(len)) => ipnet::Ipv4Net::new(v4, len)
                .map(IpNet::V4)
                .map_err(|_| format!("'{t}' is not an IPv4-mapped range")),
            _ => Ok(net),
        },
        IpNet::V4(_) => Ok(net),
    }
}

/// Whether `text` is written as an IPv4-mapped IPv6 address or range, which
/// [`parse_net`] takes as IPv4.
pub fn is_ipv4_mapped(text: &str) -> bool {
    let t = text.trim();
    let addr = t.split_once('/').map_or(t, |(a, _)| a);
    matches!(addr.parse::<std::net::Ipv6Addr>(), Ok(v6) if v6.to_ipv4_mapped().is_some())
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
    /// The built-in scenario fixture as a directory (for validating policies).
    #[cfg(feature = "runtime")]
    pub fn from_fixture(fixture: &attrelay_policy::scenarios::MemoryDirectory) -> Directory {
        Self::from_tenants(fixture.tenants.iter().map(|t| TenantRecord {
            id: &t.id,
            accepted_domains: &t.accepted_domains,
            connectors: &t.connectors,
            recipients: None,
        }))
    }

    /// Indexes `tenants`, which the caller validated (unique ids, a domain
    /// to one tenant, canonical addresses): the configuration, or a fleet's
    /// database.
    pub fn from_tenants<'a>(tenants: impl IntoIterator<Item = TenantRecord<'a>>) -> Directory {
        let mut d = Directory::default();
        for t in tenants {
            for domain in t.accepted_domains {
                d.domains.insert(domain.clone(), t.id.to_string());
            }
            d.accepted
                .insert(t.id.to_string(), t.accepted_domains.to_vec());
            let mut ids = Vec::new();
            for c in t.connectors {
                let idx = d.connectors.len();
                ids.push(idx);
                if let Some(n) = &c.tls_sender_certificate_name {
                    d.cert_names.entry(n.clone()).or_default().push(idx);
                }
                // Canonical text the configuration validated; one that does
                // not parse (a hand-built connector) matches no address.
                for net in c
                    .sender_ip_addresses
                    .iter()
                    .filter_map(|n| parse_net(n).ok())
                {
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
                    tenant: t.id.to_string(),
                    ..c.clone()
                });
            }
            d.tenants.insert(t.id.to_string(), ids);
            if let Some(list) = t.recipients {
                d.recipients
                    .insert(t.id.to_string(), list.iter().map(recipient_key).collect());
            }
        }
        d
    }

    /// Whether `address` may be accepted as far as the tenants' recipient
    /// lists go. `address` is the canonical mailbox the SMTP session parsed
    /// (`local@domain`); another spelling of it is canonicalised first, and
    /// one that does not parse is looked up as written, lower-cased.
    pub fn recipient_check(&self, address: &str) -> RecipientCheck {
        let parsed = Mailbox::parse(address, true).ok();
        let key = parsed
            .as_ref()
            .map(recipient_key)
            .unwrap_or_else(|| address.to_ascii_lowercase());
        let Some((_, domain)) = key.rsplit_once('@') else {
            return RecipientCheck::NotOurs;
        };
        let Some(tenant) = self
            .domains
            .get(&attrelay_policy::certname::normalize(domain))
        else {
            return RecipientCheck::NotOurs;
        };
        let Some(list) = self.recipients.get(tenant) else {
            return RecipientCheck::NotOurs;
        };
        if list.contains(&key) || parsed.as_ref().is_some_and(is_postmaster) {
            RecipientCheck::Known
        } else {
            RecipientCheck::Unknown {
                tenant: tenant.clone(),
            }
        }
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
