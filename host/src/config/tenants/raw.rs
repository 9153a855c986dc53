//! `[[tenant]]` and `[[tenant.connector]]` as written in the file, before
//! validation: what the parsers of this module read.

use std::collections::BTreeMap;
use std::path::PathBuf;

use attrelay_policy::model::ConnectorKind;
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawTenant {
    pub(super) id: Spanned<String>,
    #[serde(default)]
    pub(super) accepted_domains: Vec<Spanned<String>>,
    #[serde(default, rename = "connector")]
    pub(super) connectors: Vec<RawConnector>,
    pub(super) policy: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub(super) policy_settings: BTreeMap<String, Spanned<toml::Value>>,
    pub(super) policy_timeout_ms: Option<Spanned<u64>>,
    pub(super) policy_memory_limit_mib: Option<Spanned<u64>>,
    pub(super) recipients: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) recipients_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub(super) smart_hosts: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawConnector {
    pub(super) name: Spanned<String>,
    #[serde(rename = "type")]
    pub(super) kind: ConnectorKind,
    #[serde(default)]
    pub(super) sender_ip_addresses: Vec<Spanned<String>>,
    pub(super) tls_sender_certificate_name: Option<Spanned<String>>,
    #[serde(default = "crate::config::source::yes")]
    pub(super) enabled: bool,
    #[serde(default)]
    pub(super) sender_domains: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) recipient_domains: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) restrict_domains_to_ip_addresses: bool,
    #[serde(default)]
    pub(super) restrict_domains_to_certificate: bool,
}
