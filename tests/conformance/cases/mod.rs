//! The case bodies, one function per CONFORMANCE.md case, each taking the
//! backend to run on.

mod bad_input;
mod cancel;
mod completions;
mod files;
mod lifecycle;
mod sockets;
mod streams;
mod threads;
mod time;

pub use bad_input::*;
pub use cancel::*;
pub use completions::*;
pub use files::*;
pub use lifecycle::*;
pub use sockets::*;
pub use streams::*;
pub use threads::*;
pub use time::*;
