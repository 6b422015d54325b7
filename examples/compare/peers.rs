//! The peers, built only with `--features peers`: tokio (readiness: epoll;
//! files on its blocking pool), monoio (io_uring, and its legacy epoll
//! driver), compio (io_uring).

use crate::file::{write_block, TestFile, BLOCK, WBLOCK};
use crate::measure::{Measured, Shared};
use crate::net::{transient, Mode, ServeFn, ServerCtx};
use std::io;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

fn short_read(n: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("short read: {n} of {BLOCK} bytes"),
    )
}

// ------------------------------------------------------------------ tokio --

fn tokio_rt() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// `tokio::fs::File`: seek, then read (tokio::fs has no positional read);
/// one file handle per in-flight read.
pub fn tokio_fs_randread(
    tf: &TestFile,
    qd: usize,
    warmup: Duration,
    dur: Duration,
) -> io::Result<Measured> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let sh = tf.shared();
    let path = tf.path.clone();
    tokio_rt()?.block_on(async move {
        let mut tasks = Vec::new();
        for _ in 0..qd {
            let sh = sh.clone();
            let mut f = tokio::fs::File::open(&path).await?;
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; BLOCK];
                let mut n = 0;
                while !sh.stopped() {
                    let t = sh.start(n);
                    f.seek(io::SeekFrom::Start(sh.next_offset())).await?;
                    match f.read(&mut buf).await? {
                        BLOCK => sh.done(t),
                        k => return Err(short_read(k)),
                    }
                    n += 1;
                }
                Ok::<_, io::Error>(())
            }));
        }
        tokio::time::sleep(warmup).await;
        let w = sh.begin();
        tokio::time::sleep(dur).await;
        let m = sh.end(w);
        for t in tasks {
            t.await.map_err(io::Error::other)??;
        }
        Ok(m)
    })
}

/// tokio `spawn_blocking(pread)`: each read is a job on tokio's blocking pool.
pub fn tokio_blocking_randread(
    tf: &TestFile,
    qd: usize,
    warmup: Duration,
    dur: Duration,
) -> io::Result<Measured> {
    use std::os::unix::fs::FileExt;
    let sh = tf.shared();
    let file = Arc::new(std::fs::File::open(&tf.path)?);
    tokio_rt()?.block_on(async move {
        let mut tasks = Vec::new();
        for _ in 0..qd {
            let (sh, file) = (sh.clone(), file.clone());
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; BLOCK];
                let mut n = 0;
                while !sh.stopped() {
                    let t = sh.start(n);
                    let off = sh.next_offset();
                    let f = file.clone();
                    let (r, b) = tokio::task::spawn_blocking(move || {
                        let r = f.read_at(&mut buf, off);
                        (r, buf)
                    })
                    .await
                    .map_err(io::Error::other)?;
                    buf = b;
                    match r? {
                        BLOCK => sh.done(t),
                        k => return Err(short_read(k)),
                    }
                    n += 1;
                }
                Ok::<_, io::Error>(())
            }));
        }
        tokio::time::sleep(warmup).await;
        let w = sh.begin();
        tokio::time::sleep(dur).await;
        let m = sh.end(w);
        for t in tasks {
            t.await.map_err(io::Error::other)??;
        }
        Ok(m)
    })
}

/// `file-write` through `tokio::fs`: write_all of 128 KiB blocks, then sync_all.
pub fn tokio_write(
    path: &Path,
    size: u64,
    warmup: Duration,
    dur: Duration,
) -> io::Result<Measured> {
    use tokio::io::{AsyncSeekExt, AsyncWriteExt};
    let sh = Shared::new(Arc::new(vec![0]));
    let path = path.to_path_buf();
    tokio_rt()?.block_on(async move {
        let mut f = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .await?;
        let sh2 = sh.clone();
        let task = tokio::spawn(async move {
            let buf = write_block();
            let mut n = 0;
            while !sh2.stopped() {
                f.seek(io::SeekFrom::Start(0)).await?;
                let mut off = 0;
                while off < size {
                    let t = sh2.start(n);
                    f.write_all(&buf).await?;
                    sh2.done(t);
                    off += WBLOCK as u64;
                    n += 1;
                }
                f.sync_all().await?;
            }
            Ok::<_, io::Error>(())
        });
        tokio::time::sleep(warmup).await;
        let w = sh.begin();
        tokio::time::sleep(dur).await;
        let m = sh.end(w);
        task.await.map_err(io::Error::other)??;
        Ok(m)
    })
}

/// tokio current_thread (epoll) echo / accept server.
pub fn tokio_server() -> ServeFn {
    Box::new(|ctx: &ServerCtx| {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tokio_rt()?.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            ctx.ready(l.local_addr()?.port());
            loop {
                let mut s = match l.accept().await {
                    Ok((s, _)) => s,
                    Err(e) if transient(&e) => continue,
                    Err(e) => return Err(e),
                };
                if ctx.stopped() {
                    return Ok(());
                }
                match ctx.mode {
                    Mode::Accept | Mode::Http => drop(s),
                    Mode::Echo => {
                        tokio::spawn(async move {
                            let _ = s.set_nodelay(true);
                            let mut buf = vec![0u8; 4096];
                            loop {
                                match s.read(&mut buf).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => {
                                        if s.write_all(&buf[..n]).await.is_err() {
                                            break;
                                        }
                                    }
                                }
                            }
                        });
                    }
                }
            }
        })
    })
}

// ----------------------------------------------------------------- monoio --

macro_rules! monoio_block_on {
    ($driver:ty, $fut:expr) => {
        monoio::RuntimeBuilder::<$driver>::new()
            .with_entries(1024)
            .enable_timer()
            .build()?
            .block_on($fut)
    };
}

/// monoio (io_uring driver): `qd` tasks, each awaiting `File::read_at`.
pub fn monoio_randread(
    tf: &TestFile,
    qd: usize,
    warmup: Duration,
    dur: Duration,
) -> io::Result<Measured> {
    let sh = tf.shared();
    let path = tf.path.clone();
    monoio_block_on!(monoio::IoUringDriver, async move {
        let file = Rc::new(monoio::fs::File::open(&path).await?);
        let mut tasks = Vec::new();
        for _ in 0..qd {
            let (sh, file) = (sh.clone(), file.clone());
            tasks.push(monoio::spawn(async move {
                let mut buf: Vec<u8> = Vec::with_capacity(BLOCK);
                let mut n = 0;
                while !sh.stopped() {
                    let t = sh.start(n);
                    buf.clear();
                    let (r, b) = file.read_at(buf, sh.next_offset()).await;
                    buf = b;
                    match r? {
                        BLOCK => sh.done(t),
                        k => return Err(short_read(k)),
                    }
                    n += 1;
                }
                Ok::<_, io::Error>(())
            }));
        }
        monoio::time::sleep(warmup).await;
        let w = sh.begin();
        monoio::time::sleep(dur).await;
        let m = sh.end(w);
        for t in tasks {
            t.await?;
        }
        Ok(m)
    })
}

/// `file-write` through monoio (io_uring): write_all_at, then sync_all.
pub fn monoio_write(
    path: &Path,
    size: u64,
    warmup: Duration,
    dur: Duration,
) -> io::Result<Measured> {
    let sh = Shared::new(Arc::new(vec![0]));
    let path = path.to_path_buf();
    monoio_block_on!(monoio::IoUringDriver, async move {
        let file = monoio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .open(&path)
            .await?;
        let sh2 = sh.clone();
        let task = monoio::spawn(async move {
            let mut buf = write_block();
            let mut n = 0;
            while !sh2.stopped() {
                let mut off = 0;
                while off < size {
                    let t = sh2.start(n);
                    let (r, b) = file.write_all_at(buf, off).await;
                    buf = b;
                    r?;
                    sh2.done(t);
                    off += WBLOCK as u64;
                    n += 1;
                }
                file.sync_all().await?;
            }
            Ok::<_, io::Error>(())
        });
        monoio::time::sleep(warmup).await;
        let w = sh.begin();
        monoio::time::sleep(dur).await;
        let m = sh.end(w);
        task.await?;
        Ok(m)
    })
}

async fn monoio_serve(ctx: &ServerCtx) -> io::Result<()> {
    use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
    let l = monoio::net::TcpListener::bind("127.0.0.1:0")?;
    ctx.ready(l.local_addr()?.port());
    loop {
        let mut s = match l.accept().await {
            Ok((s, _)) => s,
            Err(e) if transient(&e) => continue,
            Err(e) => return Err(e),
        };
        if ctx.stopped() {
            return Ok(());
        }
        match ctx.mode {
            Mode::Accept | Mode::Http => drop(s),
            Mode::Echo => {
                monoio::spawn(async move {
                    let _ = s.set_nodelay(true);
                    let mut buf: Vec<u8> = Vec::with_capacity(4096);
                    loop {
                        buf.clear();
                        let (r, b) = s.read(buf).await;
                        buf = b;
                        match r {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                        let (r, b) = s.write_all(buf).await;
                        buf = b;
                        if r.is_err() {
                            break;
                        }
                    }
                });
            }
        }
    }
}

/// monoio echo / accept server on its io_uring driver.
pub fn monoio_uring_server() -> ServeFn {
    Box::new(|ctx: &ServerCtx| monoio_block_on!(monoio::IoUringDriver, monoio_serve(ctx)))
}

/// monoio echo / accept server on its legacy (epoll) driver.
pub fn monoio_legacy_server() -> ServeFn {
    Box::new(|ctx: &ServerCtx| monoio_block_on!(monoio::LegacyDriver, monoio_serve(ctx)))
}

// ----------------------------------------------------------------- compio --

fn compio_rt() -> io::Result<compio::runtime::Runtime> {
    compio::runtime::Runtime::new()
}

/// compio (io_uring): `qd` tasks, each awaiting `read_at`.
pub fn compio_randread(
    tf: &TestFile,
    qd: usize,
    warmup: Duration,
    dur: Duration,
) -> io::Result<Measured> {
    use compio::io::AsyncReadAt;
    let sh = tf.shared();
    let path = tf.path.clone();
    compio_rt()?.block_on(async move {
        let file = Rc::new(compio::fs::File::open(&path).await?);
        let mut tasks = Vec::new();
        for _ in 0..qd {
            let (sh, file) = (sh.clone(), file.clone());
            tasks.push(compio::runtime::spawn(async move {
                let mut buf: Vec<u8> = Vec::with_capacity(BLOCK);
                let mut n = 0;
                while !sh.stopped() {
                    let t = sh.start(n);
                    buf.clear();
                    let compio::BufResult(r, b) = file.read_at(buf, sh.next_offset()).await;
                    buf = b;
                    match r? {
                        BLOCK => sh.done(t),
                        k => return Err(short_read(k)),
                    }
                    n += 1;
                }
                Ok::<_, io::Error>(())
            }));
        }
        compio::runtime::time::sleep(warmup).await;
        let w = sh.begin();
        compio::runtime::time::sleep(dur).await;
        let m = sh.end(w);
        for t in tasks {
            t.await
                .map_err(|_| io::Error::other("a compio task panicked"))??;
        }
        Ok(m)
    })
}

/// `file-write` through compio: write_all_at, then sync_all.
pub fn compio_write(
    path: &Path,
    size: u64,
    warmup: Duration,
    dur: Duration,
) -> io::Result<Measured> {
    use compio::io::AsyncWriteAtExt;
    let sh = Shared::new(Arc::new(vec![0]));
    let path = path.to_path_buf();
    compio_rt()?.block_on(async move {
        let file = compio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .open(&path)
            .await?;
        let sh2 = sh.clone();
        let task = compio::runtime::spawn(async move {
            let mut buf = write_block();
            let mut n = 0;
            let mut f = &file;
            while !sh2.stopped() {
                let mut off = 0;
                while off < size {
                    let t = sh2.start(n);
                    let compio::BufResult(r, b) = f.write_all_at(buf, off).await;
                    buf = b;
                    r?;
                    sh2.done(t);
                    off += WBLOCK as u64;
                    n += 1;
                }
                file.sync_all().await?;
                f = &file;
            }
            Ok::<_, io::Error>(())
        });
        compio::runtime::time::sleep(warmup).await;
        let w = sh.begin();
        compio::runtime::time::sleep(dur).await;
        let m = sh.end(w);
        task.await
            .map_err(|_| io::Error::other("a compio task panicked"))??;
        Ok(m)
    })
}

/// compio echo / accept server (io_uring).
pub fn compio_server() -> ServeFn {
    Box::new(|ctx: &ServerCtx| {
        use compio::io::{AsyncRead, AsyncWriteExt};
        compio_rt()?.block_on(async {
            let l = compio::net::TcpListener::bind("127.0.0.1:0").await?;
            ctx.ready(l.local_addr()?.port());
            loop {
                let s = match l.accept().await {
                    Ok((s, _)) => s,
                    Err(e) if transient(&e) => continue,
                    Err(e) => return Err(e),
                };
                if ctx.stopped() {
                    return Ok(());
                }
                match ctx.mode {
                    Mode::Accept | Mode::Http => drop(s),
                    Mode::Echo => {
                        compio::runtime::spawn(async move {
                            let _ = s.set_nodelay(true);
                            let mut s = s;
                            let mut buf: Vec<u8> = Vec::with_capacity(4096);
                            loop {
                                buf.clear();
                                let compio::BufResult(r, b) = s.read(buf).await;
                                buf = b;
                                match r {
                                    Ok(0) | Err(_) => break,
                                    Ok(_) => {}
                                }
                                let compio::BufResult(r, b) = s.write_all(buf).await;
                                buf = b;
                                if r.is_err() {
                                    break;
                                }
                            }
                        })
                        .detach();
                    }
                }
            }
        })
    })
}
