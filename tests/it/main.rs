//! The relay's integration tests, one program laid out like the code:
//! each module starts relays (in-process or the binary) and talks to them
//! over loopback with real TLS and real peers. One program links wasmtime
//! once, where a program per file linked it 22 times.

mod support;

mod admin;
mod cli;
mod conformance;
mod delivery;
mod interop;
mod policy;
mod policyd;
mod smtp;
mod spool;
