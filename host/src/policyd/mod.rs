//! The Postfix SMTP access policy delegation front end ("policyd").
//!
//! Postfix (and any MTA speaking the same protocol) asks
//! `check_policy_service inet:host:port` at MAIL FROM and RCPT TO, and this
//! service answers with the verdict of the very policy our own SMTP server
//! runs: the same component, directory, tenant policies, shadow candidate and
//! decision log, hot-reloaded alike. One gateway's rules thus serve both
//! front ends.
//!
//! - `request`: the bounded request reader (fuzzed: `fuzz/`);
//! - [`query`]: request attributes to policy facts, verdicts to actions;
//! - `server`: the TCP / UNIX-domain listener.
//!
//! Fail closed: a policy failure is answered `451 4.3.5`; a request that
//! breaks the protocol gets no answer and its connection is closed, so
//! Postfix falls back to `smtpd_policy_service_default_action` (451).

mod peer;
mod query;
mod request;
mod server;

pub use query::{AcceptAction, query};
pub use request::{PolicyRequest, RequestDecoder, RequestError, RequestLimits};
pub use server::{PolicyServer, PolicydListen, PolicydListeners, PolicydSettings};
