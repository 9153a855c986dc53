//! The command line: check, inspect, configuration errors and scale.

mod commands;
mod config_errors;
mod config_scale;
