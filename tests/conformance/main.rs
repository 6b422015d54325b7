//! The conformance suite: every case of `docs/conformance.md` (written once,
//! in the `ringport-testkit` crate) run on every backend this build has, each
//! as its own test named `<backend>::<case>` (e.g.
//! `uring::f2_short_read_at_eof`).
//!
//! A backend that cannot start on this machine is reported on stderr as
//! `SKIPPED <backend>::<case>: ...`; if `RINGPORT_REQUIRE_BACKENDS` lists it,
//! that is a failure instead.

/// The conformance cases for one of this repository's backends, in a module
/// named after it.
macro_rules! backend {
    ($name:ident, $b:expr) => {
        mod $name {
            ringport_testkit::conformance!(ringport_testkit::Target::new(
                stringify!($name),
                || ringport::driver($b)
            ));
        }
    };
}

#[cfg(target_os = "linux")]
backend!(uring, ringport::Backend::Uring);
backend!(epoll, ringport::Backend::Epoll);
backend!(poll, ringport::Backend::Poll);
backend!(select, ringport::Backend::Select);
backend!(sigio, ringport::Backend::Sigio);
backend!(aio, ringport::Backend::Aio);
