//! The configuration in effect, written back as TOML (`attrelay config
//! show`, Postfix's `postconf -n` and `postconf`): every value as the relay
//! uses it — paths resolved, names normalised, units as the keys name them
//! — and, with `--defaults`, every key a section has, the defaults written
//! out. Values that may be secrets (policy settings named like a password,
//! secret, token or key) are shown as `<redacted>`.

use std::path::Path;
use std::time::Duration;

use toml::{Table, Value};

use crate::config::{Config, Tenant};
use crate::delivery::routes::{Via, host_port};
use crate::delivery::{NextHop, TlsPolicy};

/// What replaces a value that may be a secret.
pub const REDACTED: &str = "<redacted>";

/// `config` as TOML: with `defaults`, every key; without, the keys the
/// file `written` sets (the embedded demo's own text when it has no file),
/// each with the value in effect.
pub fn render(config: &Config, written: &str, defaults: bool) -> String {
    let mut full = Table::new();
    full.insert("server".into(), server(config).into());
    full.insert("spool".into(), spool(config).into());
    full.insert("delivery".into(), delivery(config).into());
    full.insert("policy".into(), policy(config).into());
    let mut admin = Table::new();
    match &config.admin {
        Some(a) => {
            admin.insert("listen".into(), a.listen.to_string().into());
            if let Some(f) = &a.token_file {
                admin.insert("token_file".into(), path(f));
            }
        }
        None => {
            admin.insert("enabled".into(), false.into());
        }
    }
    full.insert("admin".into(), admin.into());
    if let Some(p) = &config.policyd {
        full.insert("policyd".into(), policyd(p).into());
    }
    let tenants: Vec<Value> = config.tenants.iter().map(|t| tenant(t).into()).collect();
    if !tenants.is_empty() {
        full.insert("tenant".into(), tenants.into());
    }
    let shown = if defaults {
        full
    } else {
        let set: Table = written.parse().unwrap_or_default();
        only_set(&full, &set)
    };
    toml::to_string_pretty(&shown).unwrap_or_default()
}

/// The keys of `full` that `set` has, recursively (tables of tables, and
/// arrays of tables element by element); values from `full`.
fn only_set(full: &Table, set: &Table) -> Table {
    let mut out = Table::new();
    for (key, written) in set {
        let Some(value) = full.get(key) else {
            continue;
        };
        let kept = match (value, written) {
            (Value::Table(f), Value::Table(s)) => Value::Table(only_set(f, s)),
            (Value::Array(f), Value::Array(s))
                if f.iter().all(Value::is_table) && s.iter().all(Value::is_table) =>
            {
                Value::Array(
                    f.iter()
                        .zip(s)
                        .filter_map(|(f, s)| Some(only_set(f.as_table()?, s.as_table()?).into()))
                        .collect(),
                )
            }
            (value, _) => value.clone(),
        };
        out.insert(key.clone(), kept);
    }
    out
}

fn path(p: &Path) -> Value {
    p.display().to_string().into()
}

fn paths(ps: &[std::path::PathBuf]) -> Value {
    ps.iter().map(|p| path(p)).collect::<Vec<_>>().into()
}

fn secs(d: Duration) -> Value {
    Value::Integer(d.as_secs() as i64)
}

fn millis(d: Duration) -> Value {
    Value::Integer(d.as_millis() as i64)
}

fn int(n: impl TryInto<i64>) -> Value {
    Value::Integer(n.try_into().unwrap_or(i64::MAX))
}

fn strings<'a>(items: impl IntoIterator<Item = &'a String>) -> Value {
    items.into_iter().cloned().collect::<Vec<_>>().into()
}

fn server(config: &Config) -> Table {
    let s = &config.server;
    let l = &s.limits;
    let mut t = Table::new();
    t.insert("hostname".into(), s.hostname.clone().into());
    t.insert(
        "listen".into(),
        s.listen
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .into(),
    );
    if let (Some(c), Some(k)) = (&s.tls_cert, &s.tls_key) {
        t.insert("tls_cert".into(), path(c));
        t.insert("tls_key".into(), path(k));
    }
    t.insert("client_ca".into(), paths(&s.client_ca));
    t.insert("postmaster".into(), s.postmaster.clone().into());
    if let Some(r) = &s.run_as {
        t.insert("user".into(), r.user.clone().into());
        t.insert("group".into(), int(r.gid));
    }
    t.insert("max_message_size".into(), int(l.max_message_size));
    t.insert("max_header_size".into(), int(l.max_header_size));
    t.insert("max_recipients".into(), int(l.max_recipients));
    t.insert("max_sessions".into(), int(s.max_sessions));
    t.insert("max_sessions_per_ip".into(), int(s.max_sessions_per_ip));
    t.insert("ipv6_prefix_length".into(), int(s.ipv6_prefix_length));
    t.insert("proxy_protocol".into(), s.proxy.enabled.into());
    if s.proxy.enabled {
        t.insert(
            "proxy_from".into(),
            toml::Value::Array(
                s.proxy
                    .from
                    .iter()
                    .map(|n| crate::directory::net_text(n).into())
                    .collect(),
            ),
        );
    }
    t.insert("idle_timeout_secs".into(), secs(l.idle_timeout));
    t.insert("max_session_secs".into(), secs(l.max_session));
    t.insert("max_errors".into(), int(l.max_errors));
    t.insert("soft_error_limit".into(), int(l.soft_errors));
    t.insert("error_delay_ms".into(), millis(l.error_delay));
    t.insert("pregreet_delay_ms".into(), millis(l.pregreet_delay));
    t.insert("hopcount_limit".into(), int(l.max_hops));
    t.insert(
        "bare_line_endings".into(),
        match l.bare_line_endings {
            crate::smtp::data::BareLineEndings::Reject => "reject",
            crate::smtp::data::BareLineEndings::Normalize => "normalize",
        }
        .into(),
    );
    t.insert("shutdown_grace_secs".into(), secs(s.shutdown_grace));
    t
}

fn spool(config: &Config) -> Table {
    let mut t = Table::new();
    t.insert("path".into(), path(&config.spool));
    t.insert("min_free_bytes".into(), int(config.spool_min_free_bytes));
    t
}

fn delivery(config: &Config) -> Table {
    let d = &config.delivery;
    let mut t = Table::new();
    match &d.next_hop {
        NextHop::Directory(dir) => t.insert("directory".into(), path(dir)),
        NextHop::Smarthost { host, port } => {
            t.insert("next_hop".into(), host_port(host, *port).into())
        }
        NextHop::Mx => t.insert("next_hop".into(), "mx".into()),
    };
    if let (Some(c), Some(k)) = (&d.tls_cert, &d.tls_key) {
        t.insert("tls_cert".into(), path(c));
        t.insert("tls_key".into(), path(k));
    }
    t.insert("tls_ca".into(), paths(&d.tls_ca));
    t.insert(
        "tls".into(),
        match d.tls {
            TlsPolicy::Opportunistic => "opportunistic",
            TlsPolicy::Required => "required",
            TlsPolicy::Verify => "verify",
        }
        .into(),
    );
    t.insert("retry_initial_secs".into(), secs(d.retry_initial));
    t.insert("retry_max_secs".into(), secs(d.retry_max));
    t.insert("max_queue_age_secs".into(), secs(d.max_queue_age));
    t.insert("delay_warning_secs".into(), secs(d.delay_warning));
    t.insert("concurrency".into(), int(d.concurrency));
    t.insert("timeout_secs".into(), secs(d.timeout));
    t.insert("attempt_timeout_secs".into(), secs(d.attempt_timeout));
    t.insert("mx_address_limit".into(), int(d.mx_address_limit));
    t.insert("mx_session_limit".into(), int(d.mx_session_limit));
    t.insert(
        "dns_servers".into(),
        d.dns_servers
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .into(),
    );
    t.insert("mx_port".into(), int(d.mx_port));
    t.insert("max_connections".into(), int(d.connections.max_connections));
    t.insert("max_idle_connections".into(), int(d.connections.max_idle));
    t.insert(
        "max_idle_per_hop".into(),
        int(d.connections.max_idle_per_hop),
    );
    t.insert("connection_idle_secs".into(), secs(d.connections.idle_time));
    t.insert(
        "dsn_rate_per_domain_per_hour".into(),
        int(d.dsn_rate_per_domain_per_hour),
    );
    let routes: Vec<Value> = config
        .routes
        .operator_routes()
        .into_iter()
        .map(|(route, domains)| {
            let mut r = Table::new();
            r.insert("domains".into(), strings(domains));
            match &route.via {
                Via::Mx => r.insert("mx".into(), true.into()),
                Via::Hosts(hosts) => r.insert(
                    "next_hop".into(),
                    hosts
                        .first()
                        .map(|(h, p)| host_port(h, *p))
                        .unwrap_or_default()
                        .into(),
                ),
            };
            r.into()
        })
        .collect();
    if !routes.is_empty() {
        t.insert("route".into(), routes.into());
    }
    t
}

fn policy(config: &Config) -> Table {
    let p = &config.policy;
    let mut t = Table::new();
    if let Some(c) = &p.component {
        t.insert("component".into(), path(c));
    }
    t.insert("timeout_ms".into(), millis(p.timeout));
    t.insert("memory_limit_mib".into(), int(p.memory_limit >> 20));
    t.insert("max_instances".into(), int(p.max_instances));
    t.insert("cache".into(), path(&config.policy_cache()));
    if let Some(s) = &p.shadow {
        t.insert("shadow".into(), path(s));
    }
    if let Some(log) = &p.decision_log {
        t.insert("decision_log".into(), path(log));
    }
    t.insert(
        "decision_log_max_mib".into(),
        int(p.decision_log_max_bytes >> 20),
    );
    t.insert(
        "decision_log_mode".into(),
        format!("{:04o}", p.decision_log_mode).into(),
    );
    t.insert("settings".into(), settings(&p.settings).into());
    t
}

/// A policy's settings: those named like a secret redacted, and the
/// credentials of a URL (`postgres://user:password@host`) removed.
fn settings(pairs: &[(String, String)]) -> Table {
    pairs
        .iter()
        .map(|(k, v)| {
            let value = if may_be_secret(k) {
                REDACTED.to_string()
            } else {
                without_credentials(v)
            };
            (k.clone(), value.into())
        })
        .collect()
}

/// Whether a setting's name says it holds a secret: one of its words
/// (split at `_`, `-`, `.` and case changes) is one a secret's name uses.
fn may_be_secret(key: &str) -> bool {
    const WORDS: &[&str] = &[
        "password",
        "passwd",
        "pass",
        "pwd",
        "passphrase",
        "secret",
        "token",
        "key",
        "apikey",
        "auth",
        "bearer",
        "credential",
        "credentials",
        "hmac",
        "signature",
        "private",
        "cookie",
        "dsn",
    ];
    let mut words = Vec::new();
    let mut word = String::new();
    let mut previous_lower = false;
    for c in key.chars() {
        let boundary = !c.is_ascii_alphanumeric() || (c.is_ascii_uppercase() && previous_lower);
        if boundary && !word.is_empty() {
            words.push(std::mem::take(&mut word));
        }
        previous_lower = c.is_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            word.push(c.to_ascii_lowercase());
        }
    }
    words.push(word);
    words.iter().any(|w| WORDS.contains(&w.as_str()))
}

/// `value` without the user information of any URL in it
/// (`scheme://user:password@host` → `scheme://<redacted>@host`).
fn without_credentials(value: &str) -> String {
    let Some(scheme_end) = value.find("://") else {
        return value.to_string();
    };
    let rest = &value[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}://{REDACTED}{}", &value[..scheme_end], &rest[at..]),
        None => value.to_string(),
    }
}

fn policyd(p: &crate::policyd::PolicydSettings) -> Table {
    let mut t = Table::new();
    t.insert(
        "listen".into(),
        p.listen
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .into(),
    );
    t.insert(
        "accept_action".into(),
        match p.accept {
            crate::policyd::AcceptAction::Ok => "OK",
            crate::policyd::AcceptAction::Dunno => "DUNNO",
        }
        .into(),
    );
    t.insert("max_connections".into(), int(p.max_connections));
    t.insert(
        "max_connections_per_client".into(),
        int(p.max_connections_per_client),
    );
    t.insert("idle_timeout_secs".into(), secs(p.idle_timeout));
    t.insert("request_timeout_secs".into(), secs(p.request_timeout));
    t.insert(
        "socket_mode".into(),
        format!("{:04o}", p.socket_mode).into(),
    );
    if let Some(g) = p.socket_group {
        t.insert("socket_group".into(), int(g));
    }
    t
}

fn tenant(tenant: &Tenant) -> Table {
    let mut t = Table::new();
    t.insert("id".into(), tenant.id.clone().into());
    t.insert("accepted_domains".into(), strings(&tenant.accepted_domains));
    if !tenant.smart_hosts.is_empty() {
        t.insert(
            "smart_hosts".into(),
            tenant
                .smart_hosts
                .iter()
                .map(|(h, p)| host_port(h, *p))
                .collect::<Vec<_>>()
                .into(),
        );
    }
    match (&tenant.recipients_file, &tenant.recipients) {
        (Some(file), _) => {
            t.insert("recipients_file".into(), path(file));
        }
        (None, Some(list)) => {
            t.insert(
                "recipients".into(),
                list.iter()
                    .map(|m| m.to_string())
                    .collect::<Vec<_>>()
                    .into(),
            );
        }
        (None, None) => {}
    }
    if let Some(p) = &tenant.policy {
        t.insert("policy".into(), path(&p.component));
        t.insert("policy_settings".into(), settings(&p.settings).into());
        t.insert("policy_timeout_ms".into(), millis(p.timeout));
        t.insert("policy_memory_limit_mib".into(), int(p.memory_limit >> 20));
    }
    let connectors: Vec<Value> = tenant
        .connectors
        .iter()
        .map(|c| {
            let mut ct = Table::new();
            ct.insert("name".into(), c.name.clone().into());
            ct.insert(
                "type".into(),
                match c.kind {
                    attrelay_policy::model::ConnectorKind::OnPremises => "on-premises",
                    attrelay_policy::model::ConnectorKind::Partner => "partner",
                }
                .into(),
            );
            ct.insert("enabled".into(), c.enabled.into());
            ct.insert(
                "sender_ip_addresses".into(),
                strings(&c.sender_ip_addresses),
            );
            if let Some(n) = &c.tls_sender_certificate_name {
                ct.insert("tls_sender_certificate_name".into(), n.clone().into());
            }
            ct.insert("sender_domains".into(), strings(&c.sender_domains));
            ct.insert("recipient_domains".into(), strings(&c.recipient_domains));
            ct.insert(
                "restrict_domains_to_ip_addresses".into(),
                c.restrict_domains_to_ip_addresses.into(),
            );
            ct.insert(
                "restrict_domains_to_certificate".into(),
                c.restrict_domains_to_certificate.into(),
            );
            ct.into()
        })
        .collect();
    if !connectors.is_empty() {
        t.insert("connector".into(), connectors.into());
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_secrets_are_recognised() {
        for secret in [
            "password",
            "db_PASSWORD",
            "api_token",
            "client_secret",
            "ApiKey",
        ] {
            assert!(may_be_secret(secret), "{secret}");
        }
        for plain in [
            "enforcement",
            "grace_until",
            "before_enforcement",
            "keyword_list",
        ] {
            assert!(!may_be_secret(plain), "{plain}");
        }
        let shown = settings(&[
            ("api_token".into(), "s3cret".into()),
            ("enforcement".into(), "2017-07-05T00:00:00Z".into()),
        ]);
        assert_eq!(shown["api_token"].as_str(), Some(REDACTED));
        assert_eq!(shown["enforcement"].as_str(), Some("2017-07-05T00:00:00Z"));
    }
}
