//! A component's verdict, lifted out of its instance and checked
//! ([`crate::verdict::check`]) before anyone acts on it.

use attrelay_policy::model::{Action, HeaderField, Verdict};

use super::bindings::types as wit;
use crate::directory::Directory;

/// Bytes the host copies out of a policy instance in one call at most
/// (wasmtime's hostcall fuel, set on every store by
/// [`super::store::new_store`]): what is lifted is charged before it is
/// allocated, each string by its length and each list by its length times
/// the host's element size. A verdict at every bound of
/// [`crate::verdict`] is under 80 KiB (64 explanation lines of 1000 bytes,
/// 8 fields of 964); a directory argument is a domain or a name. Past the
/// bound the call traps, which is a policy failure.
pub const MAX_LIFTED_BYTES: usize = 128 * 1024;

/// Converts a verdict returned by a component and checks it.
pub fn check(v: wit::Verdict, directory: &Directory) -> Result<Verdict, String> {
    let verdict = Verdict {
        action: match v.action {
            wit::Action::Accept => Action::Accept,
            wit::Action::Defer => Action::Defer,
            wit::Action::Reject => Action::Reject,
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
            .map(|h| HeaderField {
                name: h.name,
                value: h.value,
            })
            .collect(),
    };
    crate::verdict::check(verdict, directory)
}
