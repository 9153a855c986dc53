//! The SMTP server: listener, sessions, message data, trace header fields.

pub mod data;
pub mod server;
pub mod session;
pub mod stream;
pub mod trace;

pub use server::{Evaluation, Server, ServerContext};
pub use session::Limits;
