//! Onward delivery: next hops that misbehave, MX, backscatter.

mod backscatter;
mod delivery_bounds;
mod mx;
