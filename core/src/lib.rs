//! # hypha-core
//!
//! The sans-IO heart of Hypha, a brokerless peer-to-peer pub/sub/query mesh. Nothing in this
//! crate performs I/O, reads a clock or draws random numbers: time and randomness are arguments,
//! bytes go in through `handle_*` calls and come out through `poll_*` calls. That makes the same
//! code run in the tokio-based node (`hypha`) and on a microcontroller (`hypha-nostd`).
//!
//! A tour:
//!
//! - [`keyexpr`]: key expressions (`fleet/car1/speed`, `fleet/*/speed`, `fleet/**`) with
//!   Zenoh-compatible semantics: validation, canon form, `intersects` and `includes`, and (with
//!   `alloc`) `KeTree`, an index answering "which entries match this expression".
//! - [`wire`]: every message the mesh exchanges, encoded with postcard. The order of enum
//!   variants is the wire contract; `core/WIRE.md` documents the layout byte by byte.
//! - [`session`]: the per-link state machine: handshake with version check, lease and
//!   keep-alive, per-priority sequence numbers, batching, fragmentation and bounded reassembly,
//!   key-expression id declarations.
//! - [`framing`]: `0x00 COBS(batch | CRC-32) 0x00` for serial lines, shared by the device node
//!   and the std `serial` links; never allocates.
//! - [`time`], [`id`], [`hlc`]: the crate's own `Instant`/`Duration` (microseconds), 128-bit node
//!   ids, and hybrid logical clock timestamps.
//!
//! ## Features
//!
//! - `alloc`: heap-backed conveniences (`OwnedKeyExpr`, `canonize`, `KeTree`, growable buffers).
//! - `std` (default): implies `alloc`, adds `std::error::Error` impls.
//!
//! Without features the crate never allocates and builds for `thumbv7em-none-eabihf`.
#![no_std]
#![warn(missing_docs)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod framing;
pub mod hlc;
pub mod id;
pub mod keyexpr;
pub mod log;
pub mod session;
pub mod time;
pub mod wire;
