//! ringport-core: the backend-free vocabulary of ringport.
//!
//! - [`buf`]: owned buffers with a stable address ([`IoBuf`], [`IoBufMut`]);
//! - [`op`]: the operations ([`Op`]), defined once for every backend;
//! - [`driver`]: the [`Driver`] trait every backend implements, and
//!   [`Completion`];
//! - [`runtime`]: a single-threaded async runtime over any driver;
//! - [`port`]: the IOCP-style [`CompletionPort`] for worker-thread pools;
//! - [`compat`]: tokio, futures-io and hyper traits for the streams (features).
//!
//! This crate knows no backend: it never names io_uring, aio or epoll.
#![warn(missing_docs)]

pub mod buf;
pub mod compat;
pub mod driver;
pub mod op;
pub mod port;
pub mod runtime;

pub use buf::{AnyBuf, AnyBufMut, IoBuf, IoBufMut, Slice};
pub use driver::{Capabilities, Completion, Driver, DriverWaker, SubmitError, Support, Wake};
pub use op::{CancelTarget, Direction, FileStat, Offset, Op, OpId, OpKind, ShutdownHow, SockAddr};
pub use port::{CompletionPort, GetError, PortEntry};
pub use runtime::{spawn, yield_now, JoinError, JoinHandle, Runtime, UnhandledPanic};
