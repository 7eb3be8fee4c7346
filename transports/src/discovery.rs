//! Zero-configuration discovery (mDNS). Placeholder until written.
