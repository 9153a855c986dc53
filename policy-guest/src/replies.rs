//! The replies of the default policy, with the exact texts the reference gives.

use crate::model::{Action, HeaderField, Verdict};

/// Text of `550 5.7.64` when no tenant could be attributed.
pub const TENANT_ATTRIBUTION: &str = "TenantAttribution; Relay Access Denied";
/// Text of `550 5.7.64` for ATTR36 once enforcement is in force.
pub const ATTR36_ENFORCED: &str =
    "Relay Access Denied ATTR36. For more details please refer to KB 3169958";
/// Text of `451 4.4.4` for ATTR36 during the grace period.
pub const ATTR36_GRACE: &str = "Relay Access Denied, unrecognized sender domain. ATTR36";
/// Text of `550 5.7.51` when a partner connector restricts the recipient domain.
pub const TENANT_INBOUND_ATTRIBUTION: &str = "TenantInboundAttribution; There is a partner connector configured that matched the message's recipient domain. The connector had either the RestrictDomainsToIPAddresses or RestrictDomainsToCertificate set";
/// The header the host stamps on mail accepted in the grace period's `warn` mode.
pub const WARNING_HEADER: &str = "X-Attrelay-Warning";
/// The header in which the host states the attributed tenant. The host alone
/// writes it, from the verdict's tenant: a verdict naming it as one of its
/// headers fails validation.
pub const ATTRIBUTION_HEADER: &str = "X-Attributed-Tenant";

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

pub fn header(name: &str, value: String) -> HeaderField {
    HeaderField {
        name: name.to_string(),
        value,
    }
}
