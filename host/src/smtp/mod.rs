//! The SMTP server: listener, sessions, message data.

pub mod data;
pub mod server;
pub mod session;
pub mod stream;

pub use server::{Evaluation, Server, ServerContext};
pub use session::Limits;
