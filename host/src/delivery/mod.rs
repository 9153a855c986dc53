//! Onward delivery: the queue that takes spooled messages to the next hop,
//! retries temporary failures with exponential backoff, and bounces
//! permanent failures (and messages older than the maximum queue age) with a
//! delivery status notification.
//!
//! The spool stays the source of truth: an envelope is rewritten after every
//! attempt, and removed only once every recipient is delivered or bounced, so
//! a crash at any point re-delivers at worst, never loses.

mod attempt;
mod context;
pub mod control;
mod data;
mod directory;
mod dsn;
pub(crate) mod mx;
mod outcome;
pub(crate) mod pool;
pub(crate) mod queue;
mod resolver;
pub mod routes;
mod session;
mod settings;
mod smtp;
pub mod transaction;
mod wire;

pub(crate) use context::DeliveryContext;
pub use settings::{
    DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_CONCURRENCY, DEFAULT_DELAY_WARNING, DEFAULT_MAX_QUEUE_AGE,
    DEFAULT_MX_ADDRESS_LIMIT, DEFAULT_MX_PORT, DEFAULT_MX_SESSION_LIMIT, DEFAULT_RETRY_INITIAL,
    DEFAULT_RETRY_MAX, DEFAULT_STEP_TIMEOUT, DeliverySettings, NextHop, TlsPolicy,
};
