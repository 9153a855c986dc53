//! Policies: the seed scenarios, rogue components, live operations, the directory.

mod directory;
mod operations;
mod policy_scenarios;
mod rogue_policies;
