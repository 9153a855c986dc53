//! The replies of the default policy, with the exact texts the reference gives.

use crate::model::{Action, Verdict};

/// Text of `550 5.7.64` when no tenant could be attributed.
pub const TENANT_ATTRIBUTION: &str = "TenantAttribution; Relay Access Denied";
/// Text of `550 5.7.64` for ATTR36 once enforcement is in force.
pub const ATTR36_ENFORCED: &str =
    "Relay Access Denied ATTR36. For more details please refer to KB 3169958";
/// Text of `451 4.4.4` for ATTR36 during the grace period.
pub const ATTR36_GRACE: &str = "Relay Access Denied, unrecognized sender domain. ATTR36";
/// Text of `550 5.7.51` when a partner connector restricts the recipient domain.
pub const TENANT_INBOUND_ATTRIBUTION: &str = "TenantInboundAttribution; There is a partner connector configured that matched the message's recipient domain. The connector had either the RestrictDomainsToIPAddresses or RestrictDomainsToCertificate set";
/// The header the host stamps on mail accepted in ATTR36's grace period
/// (the `warn` mode): see [`grace_warning`].
pub const WARNING_HEADER: &str = "X-Attrelay-Warning";
/// The header in which the host states the attributed tenant. The host alone
/// writes it, from the verdict's tenant.
pub const ATTRIBUTION_HEADER: &str = "X-Attributed-Tenant";
/// The prefix of the fields the host reserves for its own statements, today
/// [`WARNING_HEADER`] and whatever it adds later.
pub const RELAY_FIELD_PREFIX: &str = "X-Attrelay-";

/// Whether `name` is a field only the host writes: [`ATTRIBUTION_HEADER`] or
/// any `X-Attrelay-` field, in any case. Readers downstream trust these as
/// the relay's word, so a verdict asking for one fails validation, whatever
/// policy (base or tenant) returns it.
pub fn is_relay_field(name: &str) -> bool {
    name.eq_ignore_ascii_case(ATTRIBUTION_HEADER)
        || name
            .get(..RELAY_FIELD_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(RELAY_FIELD_PREFIX))
}

/// The value of the [`WARNING_HEADER`] the host writes on a message accepted
/// for this recipient: an accept whose reason is [`reason::ATTR36`] was
/// accepted in ATTR36's grace period, and its reply text (printable ASCII of
/// at most 400 bytes, checked like every verdict) says so and until when.
/// The policy chooses the words; the host writes the field, so no policy
/// ever writes a relay field itself.
pub fn grace_warning(v: &Verdict) -> Option<&str> {
    (v.action == Action::Accept && v.reason.as_deref() == Some(reason::ATTR36))
        .then_some(v.text.as_str())
}

/// The reply text of an accept in ATTR36's grace period (see
/// [`grace_warning`]), naming the sender domain and the tenant when they fit
/// in a reply text (400 bytes), only the deadline when they do not.
pub fn grace_text(sender_domain: &str, tenant: &str, deadline: &str) -> String {
    let full = format!(
        "ATTR36 unrecognized sender domain {sender_domain} for tenant {tenant}; relay will be refused from {deadline} (KB 3169958)"
    );
    if full.len() <= 400 {
        return full;
    }
    format!("ATTR36 unrecognized sender domain; relay will be refused from {deadline} (KB 3169958)")
}

/// Machine-readable reasons.
pub mod reason {
    pub const ORIGINATING_CERTIFICATE: &str = "originating-certificate";
    pub const ORIGINATING_IP: &str = "originating-ip";
    pub const INCOMING: &str = "incoming";
    pub const ATTR36: &str = "attr36";
    pub const TENANT_ATTRIBUTION: &str = "tenant-attribution";
    pub const TENANT_INBOUND_ATTRIBUTION: &str = "tenant-inbound-attribution";
    pub const SENDER: &str = "sender";
    pub const SEQUENCE: &str = "bad-sequence";
}

/// Builds a verdict; `explanation` and `headers` are filled in by the caller.
pub fn verdict(
    action: Action,
    code: u16,
    enhanced: &str,
    text: &str,
    tenant: Option<String>,
    reason: &str,
) -> Verdict {
    Verdict {
        action,
        code,
        enhanced: enhanced.to_string(),
        text: text.to_string(),
        tenant,
        reason: Some(reason.to_string()),
        explanation: Vec::new(),
        headers: Vec::new(),
    }
}

/// `250 2.1.5 Recipient OK`, attributed to `tenant`, for `reason`.
pub fn recipient_ok(tenant: Option<String>, reason: &str) -> Verdict {
    verdict(Action::Accept, 250, "2.1.5", "Recipient OK", tenant, reason)
}
