//! The command line: check, inspect, configuration errors and scale, and
//! the binary's response to signals.

mod commands;
mod config_errors;
mod config_scale;
mod config_test;
mod diagnose;
mod privileges;
mod queue;
mod serve;
