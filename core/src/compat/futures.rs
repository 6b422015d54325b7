//! futures-io's `AsyncRead`/`AsyncWrite` over the adapter (feature
//! `futures-io`). `poll_close` is shutdown for writing, like tokio's
//! `poll_shutdown`.

use super::{gather, gather_len, ReadHalf, ReadSide, WriteHalf, WriteSide};
use crate::runtime::{PipeReader, PipeWriter, TcpStream, UnixStream};
use futures_io::{AsyncRead, AsyncWrite};
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};

fn poll_read<T: ReadSide>(
    this: &mut T,
    cx: &mut Context<'_>,
    dst: &mut [u8],
) -> Poll<io::Result<usize>> {
    if dst.is_empty() {
        return Poll::Ready(Ok(0));
    }
    let (fd, socket, state) = this.read_side();
    state.poll_read_with(fd, socket, cx, |src| {
        let n = src.len().min(dst.len());
        dst[..n].copy_from_slice(&src[..n]);
        n
    })
}

macro_rules! futures_read {
    ($([$($gen:tt)*] $ty:ty);* $(;)?) => {$(
        impl<$($gen)*> AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut [u8],
            ) -> Poll<io::Result<usize>> {
                poll_read(self.get_mut(), cx, buf)
            }
        }
    )*};
}

macro_rules! futures_write {
    ($([$($gen:tt)*] $ty:ty);* $(;)?) => {$(
        impl<$($gen)*> AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                let (fd, socket, state) = self.get_mut().write_side();
                state.poll_write_with(fd, socket, cx, buf.len(), |out| out.extend_from_slice(buf))
            }
            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                let (fd, socket, state) = self.get_mut().write_side();
                state.poll_write_with(fd, socket, cx, gather_len(bufs), |out| gather(bufs, out))
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                self.get_mut().write_side().2.poll_flush(cx)
            }
            fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                let (fd, socket, state) = self.get_mut().write_side();
                state.poll_shutdown(fd, socket, cx)
            }
        }
    )*};
}

futures_read!(
    [] TcpStream;
    [] UnixStream;
    [] PipeReader;
    [S: AsRawFd] ReadHalf<S>;
);
futures_write!(
    [] TcpStream;
    [] UnixStream;
    [] PipeWriter;
    [S: AsRawFd] WriteHalf<S>;
);
