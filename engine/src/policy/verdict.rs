//! A component's verdict, lifted out of its instance and checked
//! ([`crate::verdict::check`]) before anyone acts on it.

use attrelay_policy::model::Verdict;

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
    crate::verdict::check(super::convert::verdict_from_wit(v), directory)
}
