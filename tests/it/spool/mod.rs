//! The spool: durability across kills, a full disk, its files private.

mod disk;
mod durability;
mod private;
