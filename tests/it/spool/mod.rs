//! The spool: durability across kills, a full disk.

mod disk;
mod durability;
