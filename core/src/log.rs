//! A tiny logging shim: hypha-core stays free of logging crates; the runtime may install a sink.
//!
//! By default nothing is logged. With `std`, [`set_sink`] installs a process-wide function (the
//! std runtime forwards records to `tracing`); without `std`, records are dropped.

use core::fmt::Arguments;

/// Severity of a log record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Hot-path detail.
    Trace,
    /// State changes.
    Debug,
    /// Noteworthy events.
    Info,
    /// Something went wrong with a peer or input.
    Warn,
}

/// A log sink: receives a level and formatted arguments.
pub type Sink = fn(Level, Arguments<'_>);

#[cfg(feature = "std")]
static SINK: std::sync::OnceLock<Sink> = std::sync::OnceLock::new();

/// Installs the process-wide sink for hypha-core's log records. Only the first call wins;
/// returns `false` if a sink was already installed.
#[cfg(feature = "std")]
pub fn set_sink(sink: Sink) -> bool {
    SINK.set(sink).is_ok()
}

/// Emits one record to the installed sink (a no-op without `std` or without a sink).
#[inline]
pub fn log(level: Level, args: Arguments<'_>) {
    #[cfg(feature = "std")]
    if let Some(sink) = SINK.get() {
        sink(level, args);
    }
    #[cfg(not(feature = "std"))]
    let _ = (level, args);
}

/// Logs at debug level through the shim.
#[macro_export]
#[doc(hidden)]
macro_rules! core_debug {
    ($($t:tt)*) => { $crate::log::log($crate::log::Level::Debug, format_args!($($t)*)) };
}

/// Logs at warn level through the shim.
#[macro_export]
#[doc(hidden)]
macro_rules! core_warn {
    ($($t:tt)*) => { $crate::log::log($crate::log::Level::Warn, format_args!($($t)*)) };
}
