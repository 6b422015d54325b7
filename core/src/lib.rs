//! ringport-core: the backend-free vocabulary of ringport.
//!
//! - [`buf`]: owned buffers with a stable address ([`IoBuf`], [`IoBufMut`]);
//! - [`bufpool`]: buffer pools for reads whose buffer is chosen when data
//!   arrives ([`BufPool`], [`PooledBuf`]);
//! - [`fixedbuf`]: registered buffers for fixed reads and writes
//!   ([`FixedBufRegistry`], [`FixedBuf`]);
//! - [`op`]: the operations ([`Op`]), defined once for every backend;
//! - [`lifecycle`]: the one op lifecycle (in-flight table, per-fd order,
//!   close protocol, cancellation) every backend keeps;
//! - [`driver`]: the [`Driver`] trait every backend implements, and
//!   [`Completion`];
//! - [`runtime`]: a single-threaded async runtime over any driver;
//! - [`fs`]: file-system operations by path (`rename`, `metadata`, ...);
//! - [`port`]: the IOCP-style [`CompletionPort`] for worker-thread pools;
//! - [`compat`]: tokio, futures-io and hyper traits for the streams (features).
//!
//! This crate knows no backend: it never names io_uring, aio or epoll.
#![warn(missing_docs)]

pub mod buf;
pub mod bufpool;
pub mod compat;
pub mod driver;
pub mod fixedbuf;
#[path = "runtime/fsops.rs"]
pub mod fs;
pub mod lifecycle;
pub mod op;
pub mod port;
pub mod runtime;
#[path = "runtime/sendfile.rs"]
mod sendfile;

pub use buf::{AnyBuf, AnyBufMut, IoBuf, IoBufMut, Slice};
pub use bufpool::{BufPool, PooledBuf};
pub use driver::{
    Capabilities, Completion, Driver, DriverWaker, Ready, SubmitError, Support, Wake,
};
pub use fixedbuf::{FixedBuf, FixedBufRegistry};
pub use op::{CancelTarget, Direction, FileStat, Offset, Op, OpId, OpKind, ShutdownHow, SockAddr};
pub use port::{CompletionPort, GetError, PortEntry, SendFile, TimerId};
pub use runtime::{spawn, yield_now, JoinError, JoinHandle, Runtime, UnhandledPanic};
