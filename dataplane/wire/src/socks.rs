//! SOCKS.
