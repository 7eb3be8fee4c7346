//! # Hypha
//!
//! A brokerless peer-to-peer publish/subscribe mesh. Open a [`Session`], publish on keys,
//! subscribe to key expressions; peers find each other with mDNS or configured endpoints and
//! talk over QUIC (TLS 1.3) by default.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let session = hypha::open(hypha::Config::default()).await?;
//! let sub = session.declare_subscriber("fleet/*/speed").stream()?;
//! session.put("fleet/car1/speed", "42.0").await?;
//! let sample = sub.recv().await.unwrap();
//! assert_eq!(&*sample.key, "fleet/car1/speed");
//! session.close().await;
//! # Ok(()) }
//! ```
//!
//! - [`api`]: `Session`, publishers (priority, reliability, congestion control), subscribers
//!   (callback, stream, newest-N ring), liveliness tokens, matching status.
//! - [`config`]: the TOML configuration.
//! - `net`: the sans-IO node core (tables, routing policy per role, interests, queries),
//!   tokio-free.
//! - `runtime`: one reader and one writer task per link around `hypha_core`'s session state
//!   machine; per-link, per-lane queues so a slow neighbour never slows the others.

#![warn(missing_docs)]
#![warn(unreachable_pub)]

pub mod acl;
mod admin;
pub mod api;
/// The `hypha` program (`hypha --help`), for its binaries only: not a library API. Feature `cli`.
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cli;
pub mod config;
mod digest;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;
/// The HTTP gateway. Feature `http`.
#[cfg(feature = "http")]
pub mod http;
mod info;
mod metrics;
mod net;
mod runtime;
pub mod sample;
pub mod storage;

pub use api::{
    Ack, Callback, DeclareError, Fifo, HistoryReport, Info, LinkSummary, Liveliness,
    LivelinessToken, OpenError, PublishError, Publisher, PutBuilder, PutReport, RingBuffer, Sample,
    SampleKind, Session, Subscriber, SubscriberBuilder, open,
};
pub use config::{Config, ConfigError};
pub use hypha_core::keyexpr;
pub use hypha_core::wire::Priority;
pub use runtime::{CongestionControl, Qos};
