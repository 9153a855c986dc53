//! The admin endpoint.

mod endpoint;
