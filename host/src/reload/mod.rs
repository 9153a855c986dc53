//! What judges sessions, and swapping it on a live relay.
//!
//! An [`Evaluation`](crate::evaluation::Evaluation) is everything a decision needs — the policy, the tenant
//! directory, the trust anchors, tenant policies, the shadow candidate — built
//! completely and validated before it replaces the running one in a single
//! atomic pointer swap. A session takes the evaluation current when it
//! starts and keeps it to its end, so a reload never changes the rules under
//! a session in flight, and a broken component or configuration is refused
//! while the running one keeps serving.
//!
//! Reloads are triggered by file notifications on the configuration and the
//! components (`watch.rs`), by SIGHUP, and by `POST /reload` on the admin
//! endpoint.

mod build;
mod outcome;
mod reloader;
mod watch;

pub use build::{build, load_policy};
pub use outcome::{ReloadOutcome, restart_required};
pub use reloader::Reloader;
pub use watch::{SETTLE, spawn_triggers};
