//! tokio's `AsyncRead`/`AsyncWrite` over the adapter (feature `tokio-io`).

use super::{gather, gather_len, ReadHalf, ReadSide, WriteHalf, WriteSide};
use crate::runtime::{PipeReader, PipeWriter, TcpStream, UnixStream};
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

fn poll_read<T: ReadSide>(
    this: &mut T,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    if buf.remaining() == 0 {
        return Poll::Ready(Ok(()));
    }
    let (fd, socket, state) = this.read_side();
    state
        .poll_read_with(fd, socket, cx, |src| {
            let n = src.len().min(buf.remaining());
            buf.put_slice(&src[..n]);
            n
        })
        .map_ok(|_| ())
}

fn poll_write<T: WriteSide>(
    this: &mut T,
    cx: &mut Context<'_>,
    src: &[u8],
) -> Poll<io::Result<usize>> {
    let (fd, socket, state) = this.write_side();
    state.poll_write_with(fd, socket, cx, src.len(), |out| out.extend_from_slice(src))
}

fn poll_write_vectored<T: WriteSide>(
    this: &mut T,
    cx: &mut Context<'_>,
    bufs: &[io::IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    let (fd, socket, state) = this.write_side();
    state.poll_write_with(fd, socket, cx, gather_len(bufs), |out| gather(bufs, out))
}

macro_rules! tokio_read {
    ($([$($gen:tt)*] $ty:ty);* $(;)?) => {$(
        impl<$($gen)*> AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                poll_read(self.get_mut(), cx, buf)
            }
        }
    )*};
}

macro_rules! tokio_write {
    ($([$($gen:tt)*] $ty:ty);* $(;)?) => {$(
        impl<$($gen)*> AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                poll_write(self.get_mut(), cx, buf)
            }
            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                poll_write_vectored(self.get_mut(), cx, bufs)
            }
            fn is_write_vectored(&self) -> bool {
                true
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                self.get_mut().write_side().2.poll_flush(cx)
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                let (fd, socket, state) = self.get_mut().write_side();
                state.poll_shutdown(fd, socket, cx)
            }
        }
    )*};
}

tokio_read!(
    [] TcpStream;
    [] UnixStream;
    [] PipeReader;
    [S: AsRawFd] ReadHalf<S>;
);
tokio_write!(
    [] TcpStream;
    [] UnixStream;
    [] PipeWriter;
    [S: AsRawFd] WriteHalf<S>;
);
