//! ringport-shim: a `Driver` that emulates completions over a readiness
//! `Poller` (epoll, poll, select, signal-driven I/O, kqueue).
//!
//! Not implemented yet: this crate is an empty shell until its issue lands.
#![warn(missing_docs)]
