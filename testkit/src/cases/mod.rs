//! The case bodies, one function per case of `docs/conformance.md`, each
//! taking the [`Target`](crate::Target) to run on.

mod aio_file;
mod bad_input;
mod cancel;
mod completions;
mod files;
mod fixed;
mod fsops;
mod lifecycle;
mod multishot;
mod pooled;
mod readiness;
mod sockets;
mod streams;
mod threads;
mod time;
mod zerocopy;

pub use aio_file::*;
pub use bad_input::*;
pub use cancel::*;
pub use completions::*;
pub use files::*;
pub use fixed::*;
pub use fsops::*;
pub use lifecycle::*;
pub use multishot::*;
pub use pooled::*;
pub use readiness::*;
pub use sockets::*;
pub use streams::*;
pub use threads::*;
pub use time::*;
pub use zerocopy::*;
