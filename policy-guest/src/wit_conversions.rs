//! One set of conversions between [`crate::model`] and the types a WIT
//! bindings generator makes of `wit/policy.wit`'s `types` interface.
//!
//! Every component and host glue generates its own copy of those types
//! (wit-bindgen in each guest, wasmtime's `bindgen!` in the engine), all of
//! the same shape; [`wit_conversions!`](crate::wit_conversions) writes the
//! conversions once for any of them, so that a field added to the contract
//! is mapped in one place.

/// Defines, in the calling module and with visibility `$vis`, conversions
/// between `model` and the generated types module `$wit` (an identifier in
/// scope, such as `use attrelay::policy::types as wit;`): `ip_to_wit`,
/// `ip_from_wit`, `datetime_to_wit`, `connector_to_wit`,
/// `connector_from_wit`, `facts_to_wit`, `facts_from_wit`,
/// `verdict_to_wit` and `verdict_from_wit`.
#[macro_export]
macro_rules! wit_conversions {
    ($vis:vis $wit:ident) => {
        #[allow(dead_code)]
        $vis fn ip_to_wit(ip: ::std::net::IpAddr) -> $wit::IpAddress {
            match ip {
                ::std::net::IpAddr::V4(v4) => {
                    let [a, b, c, d] = v4.octets();
                    $wit::IpAddress::Ipv4((a, b, c, d))
                }
                ::std::net::IpAddr::V6(v6) => {
                    let s = v6.segments();
                    $wit::IpAddress::Ipv6((s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]))
                }
            }
        }

        #[allow(dead_code)]
        $vis fn ip_from_wit(ip: $wit::IpAddress) -> ::std::net::IpAddr {
            match ip {
                $wit::IpAddress::Ipv4((a, b, c, d)) => ::std::net::IpAddr::from([a, b, c, d]),
                $wit::IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => {
                    ::std::net::IpAddr::from([a, b, c, d, e, f, g, h])
                }
            }
        }

        #[allow(dead_code)]
        $vis fn datetime_to_wit(seconds: i64) -> $wit::Datetime {
            $wit::Datetime {
                seconds,
                nanoseconds: 0,
            }
        }

        #[allow(dead_code)]
        $vis fn connector_to_wit(c: $crate::model::Connector) -> $wit::Connector {
            $wit::Connector {
                tenant: c.tenant,
                name: c.name,
                kind: match c.kind {
                    $crate::model::ConnectorKind::OnPremises => $wit::ConnectorKind::OnPremises,
                    $crate::model::ConnectorKind::Partner => $wit::ConnectorKind::Partner,
                },
                enabled: c.enabled,
                sender_ip_addresses: c.sender_ip_addresses,
                tls_sender_certificate_name: c.tls_sender_certificate_name,
                sender_domains: c.sender_domains,
                recipient_domains: c.recipient_domains,
                restrict_domains_to_ip_addresses: c.restrict_domains_to_ip_addresses,
                restrict_domains_to_certificate: c.restrict_domains_to_certificate,
            }
        }

        #[allow(dead_code)]
        $vis fn connector_from_wit(c: $wit::Connector) -> $crate::model::Connector {
            $crate::model::Connector {
                tenant: c.tenant,
                name: c.name,
                kind: match c.kind {
                    $wit::ConnectorKind::OnPremises => $crate::model::ConnectorKind::OnPremises,
                    $wit::ConnectorKind::Partner => $crate::model::ConnectorKind::Partner,
                },
                enabled: c.enabled,
                sender_ip_addresses: c.sender_ip_addresses,
                tls_sender_certificate_name: c.tls_sender_certificate_name,
                sender_domains: c.sender_domains,
                recipient_domains: c.recipient_domains,
                restrict_domains_to_ip_addresses: c.restrict_domains_to_ip_addresses,
                restrict_domains_to_certificate: c.restrict_domains_to_certificate,
            }
        }

        #[allow(dead_code)]
        $vis fn facts_to_wit(f: &$crate::model::SessionFacts) -> $wit::SessionFacts {
            $wit::SessionFacts {
                client_ip: ip_to_wit(f.client_ip),
                helo: f.helo.clone(),
                server_hostname: f.server_hostname.clone(),
                time: datetime_to_wit(f.time),
                tls: f.tls.as_ref().map(|t| $wit::TlsFacts {
                    protocol: t.protocol.clone(),
                    cipher: t.cipher.clone(),
                    client_certificate: t.client_certificate.as_ref().map(|c| {
                        $wit::ClientCertificate {
                            verified: c.verified,
                            verification_error: c.verification_error.clone(),
                            subject: c.subject.clone(),
                            common_names: c.common_names.clone(),
                            dns_names: c.dns_names.clone(),
                            issuer: c.issuer.clone(),
                            serial: c.serial.clone(),
                            sha256_fingerprint: c.sha256_fingerprint.clone(),
                            not_before: datetime_to_wit(c.not_before),
                            not_after: datetime_to_wit(c.not_after),
                        }
                    }),
                }),
            }
        }

        #[allow(dead_code)]
        $vis fn facts_from_wit(f: $wit::SessionFacts) -> $crate::model::SessionFacts {
            $crate::model::SessionFacts {
                client_ip: ip_from_wit(f.client_ip),
                helo: f.helo,
                server_hostname: f.server_hostname,
                time: f.time.seconds,
                tls: f.tls.map(|t| $crate::model::TlsFacts {
                    protocol: t.protocol,
                    cipher: t.cipher,
                    client_certificate: t.client_certificate.map(|c| {
                        $crate::model::ClientCertificate {
                            verified: c.verified,
                            verification_error: c.verification_error,
                            subject: c.subject,
                            common_names: c.common_names,
                            dns_names: c.dns_names,
                            issuer: c.issuer,
                            serial: c.serial,
                            sha256_fingerprint: c.sha256_fingerprint,
                            not_before: c.not_before.seconds,
                            not_after: c.not_after.seconds,
                        }
                    }),
                }),
            }
        }

        #[allow(dead_code)]
        $vis fn verdict_to_wit(v: $crate::model::Verdict) -> $wit::Verdict {
            $wit::Verdict {
                action: match v.action {
                    $crate::model::Action::Accept => $wit::Action::Accept,
                    $crate::model::Action::Defer => $wit::Action::Defer,
                    $crate::model::Action::Reject => $wit::Action::Reject,
                },
                code: v.code,
                enhanced: v.enhanced,
                text: v.text,
                tenant: v.tenant,
                reason: v.reason,
                explanation: v.explanation,
                headers: v
                    .headers
                    .into_iter()
                    .map(|h| $wit::HeaderField {
                        name: h.name,
                        value: h.value,
                    })
                    .collect(),
            }
        }

        #[allow(dead_code)]
        $vis fn verdict_from_wit(v: $wit::Verdict) -> $crate::model::Verdict {
            $crate::model::Verdict {
                action: match v.action {
                    $wit::Action::Accept => $crate::model::Action::Accept,
                    $wit::Action::Defer => $crate::model::Action::Defer,
                    $wit::Action::Reject => $crate::model::Action::Reject,
                },
                code: v.code,
                enhanced: v.enhanced,
                text: v.text,
                tenant: v.tenant,
                reason: v.reason,
                explanation: v.explanation,
                headers: v
                    .headers
                    .into_iter()
                    .map(|h| $crate::model::HeaderField {
                        name: h.name,
                        value: h.value,
                    })
                    .collect(),
            }
        }
    };
}
