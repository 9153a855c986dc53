//! The SMTP server over the wire: attribution, the dialogue's rules and
//! limits, injection, attacks and abuse, hostile certificates, and sessions
//! driven in memory.

mod abuse;
mod attacks;
mod attribution;
mod dialogue;
mod hostile_certs;
mod injection;
mod protocol;
mod proxy;
