//! Where each recipient's mail goes: to a tenant's smart hosts for the
//! tenant's accepted domains (`[[tenant]] smart_hosts`, inbound mail reaching
//! the tenant's own servers), by an operator's route for other domains
//! (`[[delivery.route]]`), and by `[delivery]`'s next hop for the rest.
//! Routes are part of the reloadable configuration: the queue reads the
//! current table at each attempt, so a corrected smart host applies to
//! mail already queued.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use attrelay_policy::certname;

/// How a route delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// These hosts in order: the next when one cannot be reached or
    /// refuses the session, as with MX hosts (RFC 5321 5.1).
    Hosts(Vec<(String, u16)>),
    /// The recipient domain's MX hosts.
    Mx,
}

/// A route: its name in logs and `attrelay check` (`tenant contoso`,
/// `delivery.route[0]`) and how it delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    pub via: Via,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.via {
            Via::Hosts(hosts) => {
                let list: Vec<String> = hosts.iter().map(|(h, p)| host_port(h, *p)).collect();
                write!(f, "to {} ({})", list.join(", then "), self.name)
            }
            Via::Mx => write!(f, "by DNS MX ({})", self.name),
        }
    }
}

/// `host:port`, an IPv6 address in brackets.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `host:port` as the configuration writes a next hop (`smtp.example.net:25`,
/// `[2001:db8::1]:25`); `None` unless both parts are there.
pub fn parse_host_port(text: &str) -> Option<(String, u16)> {
    let (h, p) = text.trim().rsplit_once(':')?;
    let h = h.trim_start_matches('[').trim_end_matches(']');
    let port = p.parse::<u16>().ok().filter(|p| *p > 0)?;
    (!h.is_empty() && !h.contains(char::is_whitespace)).then(|| (h.to_string(), port))
}

/// The routes by recipient domain (normalised: lower case, no final dot).
/// Domains not in it follow `[delivery]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    by_domain: HashMap<String, Arc<Route>>,
    /// Each route with its domains, in the configuration's order.
    listed: Vec<(Arc<Route>, Vec<String>)>,
}

impl Routes {
    /// Routes for the given domains each; a domain given twice keeps its
    /// first route (the configuration refuses that before).
    pub fn new(routes: impl IntoIterator<Item = (Route, Vec<String>)>) -> Routes {
        let mut by_domain = HashMap::new();
        let mut listed = Vec::new();
        for (route, domains) in routes {
            let route = Arc::new(route);
            let domains: Vec<String> = domains.iter().map(|d| certname::normalize(d)).collect();
            for d in &domains {
                by_domain.entry(d.clone()).or_insert_with(|| route.clone());
            }
            listed.push((route, domains));
        }
        Routes { by_domain, listed }
    }

    /// The operator's routes (`[[delivery.route]]`, not the tenants'
    /// smart hosts), in order, with their domains.
    pub fn operator_routes(&self) -> Vec<(&Route, &[String])> {
        self.listed
            .iter()
            .filter(|(r, _)| r.name.starts_with("delivery.route"))
            .map(|(r, d)| (r.as_ref(), d.as_slice()))
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }

    /// The route of `recipient`'s domain; `None`: `[delivery]`'s next hop.
    pub fn for_recipient(&self, recipient: &str) -> Option<&Arc<Route>> {
        let domain = recipient.rsplit_once('@').map_or("", |(_, d)| d);
        self.by_domain.get(&certname::normalize(domain))
    }

    /// `recipients` grouped by route, in the order first met; `None` for
    /// those that follow `[delivery]`.
    pub fn split(&self, recipients: &[String]) -> Vec<(Option<Arc<Route>>, Vec<String>)> {
        let mut groups: Vec<(Option<Arc<Route>>, Vec<String>)> = Vec::new();
        for r in recipients {
            let route = self.for_recipient(r).cloned();
            match groups.iter_mut().find(|(g, _)| *g == route) {
                Some((_, members)) => members.push(r.clone()),
                None => groups.push((route, vec![r.clone()])),
            }
        }
        groups
    }

    /// Whether a route delivers by MX (the resolver is then needed).
    pub fn use_mx(&self) -> bool {
        self.by_domain.values().any(|r| r.via == Via::Mx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(name: &str, list: &[(&str, u16)]) -> Route {
        Route {
            name: name.into(),
            via: Via::Hosts(list.iter().map(|(h, p)| (h.to_string(), *p)).collect()),
        }
    }

    #[test]
    fn recipients_follow_their_domains_route_or_the_default() {
        let routes = Routes::new([
            (
                hosts(
                    "tenant contoso",
                    &[("mail.contoso.com", 25), ("2001:db8::1", 2525)],
                ),
                vec!["contoso.com".into()],
            ),
            (
                Route {
                    name: "delivery.route[0]".into(),
                    via: Via::Mx,
                },
                vec!["Fabrikam.example.".into()],
            ),
        ]);
        assert_eq!(
            routes.for_recipient("kate@CONTOSO.com").unwrap().name,
            "tenant contoso"
        );
        assert_eq!(
            routes
                .for_recipient("\"a@b\"@fabrikam.example")
                .unwrap()
                .via,
            Via::Mx
        );
        assert!(
            routes.for_recipient("x@sub.contoso.com").is_none(),
            "no subdomains"
        );
        assert!(routes.for_recipient("x@example.org").is_none());
        let groups = routes.split(&[
            "a@contoso.com".into(),
            "b@example.org".into(),
            "c@contoso.com".into(),
        ]);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].1, ["a@contoso.com", "c@contoso.com"]);
        assert!(groups[1].0.is_none());
        assert!(routes.use_mx());
        assert_eq!(
            routes.for_recipient("a@contoso.com").unwrap().to_string(),
            "to mail.contoso.com:25, then [2001:db8::1]:2525 (tenant contoso)"
        );
    }
}
