//! Onward delivery: retries, bounces and next hops, the connections to
//! them, next hops that misbehave, MX, backscatter.

mod backscatter;
mod connections;
mod delivery_bounds;
mod mx;
mod next_hop;
mod routes;
