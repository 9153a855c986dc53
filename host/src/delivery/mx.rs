//! Delivery by DNS: each recipient domain's MX hosts in preference order
//! (RFC 5321 5.1), the domain itself when it has no MX, and a permanent
//! failure for a null MX (RFC 7505).

use std::collections::BTreeMap;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::rdata::MX;

use super::{DeliveryConfig, Outcome, smtp};

/// MX hosts in the order to try them: lowest preference first; `None` for a
/// null MX (the domain accepts no mail).
pub fn order_hosts(records: &[(u16, String)]) -> Option<Vec<String>> {
    if records.len() == 1 && records[0].1.trim_end_matches('.').is_empty() {
        return None;
    }
    let mut sorted = records.to_vec();
    sorted.sort_by_key(|(pref, _)| *pref);
    Some(
        sorted
            .into_iter()
            .map(|(_, h)| h.trim_end_matches('.').to_string())
            .filter(|h| !h.is_empty())
            .collect(),
    )
}

async fn hosts_for(resolver: &TokioResolver, domain: &str) -> Result<Option<Vec<String>>, String> {
    match resolver.mx_lookup(domain).await {
        Ok(lookup) => {
            let records: Vec<(u16, String)> = lookup
                .iter()
                .map(|mx: &MX| (mx.preference(), mx.exchange().to_utf8()))
                .collect();
            if records.is_empty() {
                Ok(Some(vec![domain.to_string()]))
            } else {
                Ok(order_hosts(&records))
            }
        }
        Err(e) if e.is_no_records_found() => Ok(Some(vec![domain.to_string()])),
        Err(e) => Err(e.to_string()),
    }
}

/// Delivers each recipient domain's share to its MX hosts.
pub async fn deliver(
    cfg: &DeliveryConfig,
    sender: &str,
    recipients: &[String],
    message: &[u8],
) -> Vec<(String, Outcome, String)> {
    let mut by_domain: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in recipients {
        let domain = r
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        by_domain.entry(domain).or_default().push(r.clone());
    }
    let resolver = match TokioResolver::builder_tokio() {
        Ok(b) => b.build(),
        Err(e) => {
            let text = format!("451 4.4.3 no DNS resolver: {e}");
            return recipients
                .iter()
                .map(|r| (r.clone(), Outcome::Temporary(text.clone()), "mx".into()))
                .collect();
        }
    };
    let mut out = Vec::new();
    for (domain, rcpts) in by_domain {
        let hosts = match hosts_for(&resolver, &domain).await {
            Ok(Some(h)) => h,
            Ok(None) => {
                let text = format!("556 5.1.10 {domain} does not accept mail (null MX)");
                out.extend(
                    rcpts
                        .into_iter()
                        .map(|r| (r, Outcome::Permanent(text.clone()), "mx".to_string())),
                );
                continue;
            }
            Err(e) => {
                let text = format!("451 4.4.3 MX lookup for {domain} failed: {e}");
                out.extend(
                    rcpts
                        .into_iter()
                        .map(|r| (r, Outcome::Temporary(text.clone()), "mx".to_string())),
                );
                continue;
            }
        };
        let mut last = Vec::new();
        for host in &hosts {
            let results = smtp::deliver(cfg, host, cfg.mx_port, sender, &rcpts, message).await;
            // Try the next MX only when this one could not be reached at all.
            let unreachable = results
                .iter()
                .all(|(_, o)| matches!(o, Outcome::Temporary(t) if t.starts_with("451 4.4.")));
            last = results
                .into_iter()
                .map(|(r, o)| (r, o, format!("{host}:{}", cfg.mx_port)))
                .collect();
            if !unreachable {
                break;
            }
        }
        out.extend(last);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preference_order_and_null_mx() {
        let recs = vec![
            (20, "mx2.example.".to_string()),
            (10, "mx1.example.".to_string()),
        ];
        assert_eq!(order_hosts(&recs).unwrap(), ["mx1.example", "mx2.example"]);
        assert_eq!(order_hosts(&[(0, ".".to_string())]), None);
    }
}
