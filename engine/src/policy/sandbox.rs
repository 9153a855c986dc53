//! The WASI a policy component gets: no files, network, environment or
//! arguments (an empty context), and no ambient clock or randomness either.
//!
//! A policy must decide from the session's facts alone: the WIT tells it to
//! use the session time, and `attrelay check`, `policy diff` and the load-time
//! scenario checks replay decisions at other instants. A component that read
//! the host's real clock or its random numbers could behave while it is
//! validated and misbehave later (a time bomb), or decide differently on
//! replay. So its wall clock stands still at the session's time (the Unix
//! epoch while it is configured), its monotonic clock at zero, and its
//! "random" numbers are the same fixed sequence in every instance. Nor may
//! it wait: the clock subscriptions trap ([`forbid_waiting`]).

use std::convert::Infallible;
use std::time::Duration;

use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx};

/// The WASI context of one policy instance whose decisions are made at
/// `time` (seconds since the epoch; 0 for the instance that only configures).
pub fn wasi_context(time: i64) -> WasiCtx {
    let mut builder = WasiCtx::builder();
    builder
        .wall_clock(StoppedClock(Duration::from_secs(time.max(0) as u64)))
        .monotonic_clock(StoppedClock(Duration::ZERO))
        .secure_random(Replayable::default())
        .insecure_random(Replayable::default())
        .insecure_random_seed(0)
        .max_random_size(MAX_RANDOM_BYTES);
    builder.build()
}

/// Random bytes one WASI call may ask for: the host allocates them before
/// the guest's memory budget can refuse them.
pub const MAX_RANDOM_BYTES: u64 = 64 * 1024;

/// Resource handles (WASI streams, pollables, directory results) one
/// instance may hold at once. Host memory, outside the instance's budget.
pub const MAX_RESOURCES: usize = 1024;

/// The WASI version whose `monotonic-clock` the linker provides (the one
/// wasmtime-wasi links; a guest built against an older 0.2 matches it).
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// Replaces the WASI clock subscriptions in `linker` with functions that
/// trap. A pollable from `subscribe-duration` or `subscribe-instant` is a
/// real timer, and `pollable.block` waits for it on the calling thread,
/// where no epoch deadline reaches (it interrupts guest code only): a
/// policy calling `std::thread::sleep` would hold a host thread, its
/// session and its pool slot for as long as it likes. No policy needs to
/// wait; one that tries fails, like any trap (`451 4.3.5`).
pub fn forbid_waiting<T: 'static>(
    linker: &mut wasmtime::component::Linker<T>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    for name in ["subscribe-duration", "subscribe-instant"] {
        clock.func_new(name, move |_, _, _, _| {
            Err(wasmtime::Error::msg(format!(
                "policies may not wait ({MONOTONIC_CLOCK} {name})"
            )))
        })?;
    }
    linker.allow_shadowing(false);
    Ok(())
}

/// A clock that always says the same instant.
struct StoppedClock(Duration);

impl HostWallClock for StoppedClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        self.0
    }
}

impl HostMonotonicClock for StoppedClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        self.0.as_nanos() as u64
    }
}

/// The same numbers in every instance (splitmix64 from a fixed seed): what a
/// policy draws cannot make two replays of one decision differ.
#[derive(Default)]
struct Replayable(u64);

impl Replayable {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl rand_core::TryRng for Replayable {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(self.next() as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.next())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}
