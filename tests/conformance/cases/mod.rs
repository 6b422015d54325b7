//! The case bodies, one function per CONFORMANCE.md case, each taking the
//! backend to run on.

mod bad_input;
mod cancel;
mod completions;
mod files;
mod lifecycle;
mod readiness;
mod sockets;
mod threads;
mod time;

pub use bad_input::*;
pub use cancel::*;
pub use completions::*;
pub use files::*;
pub use lifecycle::*;
pub use readiness::*;
pub use sockets::*;
pub use threads::*;
pub use time::*;
