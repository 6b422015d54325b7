//! ringport-aio: a `Driver` over POSIX aio (`aio_read`, `aio_write`,
//! `aio_fsync`, `lio_listio`), handing what aio cannot do to the readiness
//! shim.
//!
//! Not implemented yet: this crate is an empty shell until its issue lands.
#![warn(missing_docs)]
