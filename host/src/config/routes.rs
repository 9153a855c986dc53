//! Routes by recipient domain: the tenants' `smart_hosts` for their
//! accepted domains, and `[[delivery.route]]` for any other domain. Each
//! domain has one route; what has none follows `[delivery]`.

use std::collections::HashMap;

use attrelay_policy::certname;
use serde::Deserialize;
use toml::Spanned;

use super::source::{ConfigError, Source};
use super::tenants::Tenant;
use crate::delivery::routes::{Route, Routes, Via, parse_host_port};

/// One `[[delivery.route]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    domains: Spanned<Vec<Spanned<String>>>,
    next_hop: Option<Spanned<String>>,
    mx: Option<Spanned<bool>>,
}

/// The routes of the tenants with smart hosts, then the operator's.
pub(super) fn parse(
    src: &Source<'_>,
    raw: &[RawRoute],
    tenants: &[Tenant],
) -> Result<Routes, ConfigError> {
    // Domain → what routes it and on which line, for the conflicts below.
    let mut claimed: HashMap<String, (String, usize)> = HashMap::new();
    let mut routes = Vec::new();
    for t in tenants.iter().filter(|t| !t.smart_hosts.is_empty()) {
        for d in &t.accepted_domains {
            claimed.insert(
                d.clone(),
                (format!("tenant '{}' (smart_hosts)", t.id), t.line),
            );
        }
        let route = Route {
            name: format!("tenant {}", t.id),
            via: Via::Hosts(t.smart_hosts.clone()),
        };
        routes.push((route, t.accepted_domains.clone()));
    }
    for (i, r) in raw.iter().enumerate() {
        let key = format!("delivery.route[{i}]");
        let via = via(src, r, &key)?;
        let mut domains = Vec::new();
        if r.domains.get_ref().is_empty() {
            return Err(src.error(
                r.domains.span(),
                format!("{key}.domains"),
                "name at least one domain",
            ));
        }
        for (di, d) in r.domains.get_ref().iter().enumerate() {
            let dkey = format!("{key}.domains[{di}]");
            let domain = certname::validate(d.get_ref(), false)
                .map_err(|e| src.error(d.span(), &dkey, format!("'{}': {e}", d.get_ref())))?;
            if let Some((owner, line)) = claimed.get(&domain) {
                return Err(src.error(
                    d.span(),
                    &dkey,
                    format!("{domain} is routed already by {owner} on line {line}; a domain has one route"),
                ));
            }
            claimed.insert(domain.clone(), (key.clone(), src.line(&d.span())));
            domains.push(domain);
        }
        routes.push((Route { name: key, via }, domains));
    }
    Ok(Routes::new(routes))
}

/// `next_hop = "host:port"` or `mx = true`, one of the two.
fn via(src: &Source<'_>, r: &RawRoute, key: &str) -> Result<Via, ConfigError> {
    let mx = r.mx.as_ref().is_some_and(|m| *m.get_ref());
    match (&r.next_hop, mx) {
        (Some(n), true) => Err(src.error(
            n.span(),
            format!("{key}.next_hop"),
            "give next_hop or mx = true, not both",
        )),
        (Some(n), false) => parse_host_port(n.get_ref())
            .map(|hp| Via::Hosts(vec![hp]))
            .ok_or_else(|| {
                src.error(
                    n.span(),
                    format!("{key}.next_hop"),
                    format!(
                        "'{}' is not host:port (such as smtp.fabrikam.example:25)",
                        n.get_ref()
                    ),
                )
            }),
        (None, true) => Ok(Via::Mx),
        (None, false) => Err(src.error(
            r.domains.span(),
            key,
            "give next_hop = \"host:port\" or mx = true",
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    fn parse(text: &str) -> Result<Config, crate::config::ConfigError> {
        Config::parse(Path::new("relay.toml"), text)
    }

    const TENANT: &str = "[[tenant]]\nid = \"contoso\"\naccepted_domains = [\"contoso.com\"]\nsmart_hosts = [\"mail.contoso.com:25\", \"[2001:db8::1]:2525\"]\n";

    #[test]
    fn tenants_and_operators_routes() {
        let c = parse(&format!("{TENANT}\n[[delivery.route]]\ndomains = [\"Fabrikam.example\"]\nmx = true\n\n[[delivery.route]]\ndomains = [\"tailspin.example\"]\nnext_hop = \"10.0.0.7:2525\"\n")).unwrap();
        assert_eq!(
            c.routes.for_recipient("a@contoso.com").unwrap().to_string(),
            "to mail.contoso.com:25, then [2001:db8::1]:2525 (tenant contoso)"
        );
        assert_eq!(
            c.routes
                .for_recipient("a@fabrikam.example")
                .unwrap()
                .to_string(),
            "by DNS MX (delivery.route[0])"
        );
        assert_eq!(
            c.routes
                .for_recipient("a@tailspin.example")
                .unwrap()
                .to_string(),
            "to 10.0.0.7:2525 (delivery.route[1])"
        );
        assert!(c.routes.for_recipient("a@example.org").is_none());
    }

    #[test]
    fn each_mistake_names_its_line_and_key() {
        let e = parse("[[tenant]]\nid = \"c\"\naccepted_domains = [\"c.com\"]\nsmart_hosts = [\"mail.c.com\"]\n").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_str()),
            (4, "tenant[0].smart_hosts[0]"),
            "{e}"
        );
        let e = parse(&format!(
            "{TENANT}[[delivery.route]]\ndomains = [\"contoso.com\"]\nmx = true\n"
        ))
        .unwrap_err();
        assert_eq!(
            (e.line, e.key.as_str()),
            (6, "delivery.route[0].domains[0]"),
            "{e}"
        );
        assert!(
            e.message
                .contains("tenant 'contoso' (smart_hosts) on line 2"),
            "{e}"
        );
        let e = parse("[[delivery.route]]\ndomains = [\"a.example\"]\n").unwrap_err();
        assert!(
            e.message.contains("next_hop = \"host:port\" or mx = true"),
            "{e}"
        );
        let e = parse(
            "[[delivery.route]]\ndomains = [\"a.example\"]\nnext_hop = \"a:25\"\nmx = true\n",
        )
        .unwrap_err();
        assert!(e.message.contains("not both"), "{e}");
        let e = parse("[[delivery.route]]\ndomains = []\nmx = true\n").unwrap_err();
        assert!(e.message.contains("at least one domain"), "{e}");
        let e = parse("[[delivery.route]]\ndomains = [\"a.example\"]\nmx = true\n[[delivery.route]]\ndomains = [\"A.example\"]\nmx = true\n").unwrap_err();
        assert_eq!(e.key, "delivery.route[1].domains[0]", "{e}");
        let e =
            parse("[[delivery.route]]\ndomains = [\"a.example\"]\nnext_hop = \"bad host:25\"\n")
                .unwrap_err();
        assert_eq!(e.key, "delivery.route[0].next_hop", "{e}");
    }
}
