//! On a driver whose capabilities refuse the fixed ops (someone else's
//! driver), `File::read_fixed_at` and `File::write_fixed_at` still work: the
//! runtime sends the same `FixedBuf` through a plain read or write, and the
//! driver never sees a fixed op.

use ringport::{
    Capabilities, Completion, Driver, DriverWaker, FixedBufRegistry, Op, OpId, OpKind, Ready,
    SubmitError, Support,
};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The epoll shim, with the fixed ops marked unsupported; counts the fixed
/// ops that reach it anyway.
struct NoFixed(Box<dyn Driver>, Capabilities, Arc<AtomicUsize>);

impl Driver for NoFixed {
    fn name(&self) -> &'static str {
        "nofixed"
    }
    fn capabilities(&self) -> &Capabilities {
        &self.1
    }
    fn submit(
        &mut self,
        op: Op,
        token: u64,
        deadline: Option<Instant>,
    ) -> Result<OpId, SubmitError> {
        if self.1.get(op.kind()) == Support::Unsupported {
            self.2.fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::unsupported(op, "nofixed"));
        }
        self.0.submit(op, token, deadline)
    }
    fn wait(
        &mut self,
        out: &mut Vec<Completion>,
        min: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        self.0.wait(out, min, timeout)
    }
    fn wait_ready(
        &mut self,
        out: &mut Vec<Ready>,
        min: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        self.0.wait_ready(out, min, timeout)
    }
    fn take(&mut self, id: OpId) -> Option<Completion> {
        self.0.take(id)
    }
    fn cancel(&mut self, id: OpId) -> io::Result<()> {
        self.0.cancel(id)
    }
    fn cancel_fd(&mut self, fd: RawFd) -> io::Result<usize> {
        self.0.cancel_fd(fd)
    }
    fn waker(&self) -> DriverWaker {
        self.0.waker()
    }
    fn in_flight(&self) -> usize {
        self.0.in_flight()
    }
}

#[test]
fn fixed_file_ops_fall_back_to_plain_ones_on_a_driver_without_them() {
    let inner = ringport::driver(ringport::Backend::Epoll).expect("epoll");
    let mut caps = inner.capabilities().clone();
    caps.set(OpKind::ReadFixed, Support::Unsupported);
    caps.set(OpKind::WriteFixed, Support::Unsupported);
    let refused = Arc::new(AtomicUsize::new(0));
    let d = NoFixed(inner, caps, refused.clone());
    let rt = ringport_core::Runtime::from_driver(Box::new(d));
    let path = std::env::temp_dir().join(format!("ringport-fixed-fallback-{}", std::process::id()));
    rt.block_on(async {
        let reg = FixedBufRegistry::new(2, 16).unwrap();
        let f = ringport::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .unwrap();
        let mut buf = reg.take().unwrap();
        buf.copy_from(b"through a plain write");
        let (r, buf) = f.write_fixed_at(buf, 3).await;
        assert_eq!(r.unwrap(), 16);
        drop(buf);
        let (r, buf) = f.read_fixed_at(reg.take().unwrap(), 0).await;
        assert_eq!(r.unwrap(), 16);
        assert_eq!(&*buf, b"\0\0\0through a pla");
        drop(buf);
        assert_eq!(reg.available(), 2, "both buffers went back");
    });
    assert_eq!(
        refused.load(Ordering::Relaxed),
        0,
        "no fixed op reached the driver"
    );
    let _ = std::fs::remove_file(path);
}
