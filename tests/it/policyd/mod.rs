//! The Postfix policy-delegation service.

mod service;
