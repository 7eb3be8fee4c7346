//! Parallel dialing with backoff. Placeholder until written.
