//! F1–F9: files.

use crate::harness::{pattern, pattern_vec, rt, Drv, Pipe, Rng, Target, TempFile};
use ringport::{AnyBufMut, File, Op, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

pub fn f1_read_at_offset(b: Target) {
    let data = pattern_vec(8192);
    let f = TempFile::with(&data);
    rt(b).block_on(async {
        let file = File::open(&f.path).await.unwrap();
        let (r, buf) = file.read_at(Vec::with_capacity(100), 1000).await;
        assert_eq!(r.unwrap(), 100);
        assert_eq!(buf, &data[1000..1100]);
    });
}

pub fn f2_short_read_at_eof(b: Target) {
    let f = TempFile::with(b"0123456789");
    rt(b).block_on(async {
        let file = File::open(&f.path).await.unwrap();
        let (r, buf) = file.read_at(Vec::with_capacity(100), 6).await;
        assert_eq!(r.unwrap(), 4, "the remaining count");
        assert_eq!(buf, b"6789");
        let (r, buf) = file.read_at(buf, 10).await;
        assert_eq!(r.unwrap(), 0, "0 at end of file");
        assert!(buf.is_empty());
    });
}

pub fn f3_write_then_read_back_and_sync(b: Target) {
    let f = TempFile::with(b"..........");
    rt(b).block_on(async {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&f.path)
            .await
            .unwrap();
        let (r, _) = file.write_at(&b"hello"[..], 5).await;
        assert_eq!(r.unwrap(), 5);
        file.sync_all().await.unwrap();
        file.sync_data().await.unwrap();
        let (r, buf) = file.read_at(Vec::with_capacity(32), 0).await;
        assert_eq!(r.unwrap(), 10);
        assert_eq!(buf, b".....hello");
    });
    assert_eq!(std::fs::read(&f.path).unwrap(), b".....hello");
}

pub fn f4_readv_writev(b: Target) {
    let f = TempFile::with(&[]);
    rt(b).block_on(async {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&f.path)
            .await
            .unwrap();
        let bufs = vec![
            b"abc".to_vec(),
            b"defghij".to_vec(),
            b"klmnopqrstu".to_vec(),
        ];
        let (r, bufs) = file.writev_at(bufs, 0).await;
        assert_eq!(r.unwrap(), 21);
        assert_eq!(bufs[1], b"defghij");
        let bufs = vec![
            Vec::with_capacity(3),
            Vec::with_capacity(7),
            Vec::with_capacity(11),
        ];
        let (r, bufs) = file.readv_at(bufs, 0).await;
        assert_eq!(r.unwrap(), 21);
        assert_eq!(bufs[0], b"abc");
        assert_eq!(bufs[1], b"defghij");
        assert_eq!(bufs[2], b"klmnopqrstu");
    });
}

pub fn f5_open_errors(b: Target) {
    let f = TempFile::with(b"x");
    let dir = std::env::temp_dir();
    rt(b).block_on(async {
        let missing = dir.join(format!("ringport-missing-{}", std::process::id()));
        let e = File::open(&missing).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&f.path)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        let e = OpenOptions::new().write(true).open(&dir).await.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EISDIR));
    });
}

pub fn f6_read_on_never_opened_fd(b: Target) {
    // The highest fd number the soft limit allows: in range (so not refused
    // at submit, see L3) but never opened by this test process.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let fd = lim.rlim_cur.min(i32::MAX as u64) as i32 - 1;
    let mut d = Drv::new(b);
    let r = d.try_submit(
        Op::Read {
            fd,
            offset: ringport::Offset::At(0),
            buf: AnyBufMut::new(Vec::with_capacity(16)),
        },
        1,
        None,
    );
    assert!(r.is_ok(), "EBADF belongs in the completion: {:?}", r.err());
    let c = d.collect(1, WAIT).pop().unwrap();
    assert_eq!(c.result.unwrap_err().raw_os_error(), Some(libc::EBADF));
    assert!(c.op.into_buf_mut().is_some(), "the buffer comes back");
}

pub fn f7_many_reads_in_flight(b: Target) {
    const SIZE: usize = 1 << 20;
    let f = TempFile::with(&pattern_vec(SIZE));
    let file = f.raw_fd();
    let mut d = Drv::new(b);
    let mut rng = Rng::new(7);
    let mut offsets = Vec::new();
    for token in 0..1000u64 {
        let off = rng.below((SIZE - 512) as u64);
        offsets.push(off);
        d.submit(
            Op::Read {
                fd: file.as_raw_fd(),
                offset: ringport::Offset::At(off),
                buf: AnyBufMut::new(Vec::with_capacity(512)),
            },
            token,
        );
    }
    let all = d.collect(1000, Duration::from_secs(30));
    assert_eq!(all.len(), 1000);
    for c in all {
        assert_eq!(c.result.as_ref().unwrap(), &512);
        let off = offsets[c.token as usize] as usize;
        let v: Vec<u8> = c.op.into_buf_mut().unwrap().downcast().unwrap();
        assert!(
            v.iter().enumerate().all(|(i, &x)| x == pattern(off + i)),
            "wrong bytes for the read at {off}"
        );
    }
}

pub fn f8_stat_matches_std(b: Target) {
    let f = TempFile::with(&pattern_vec(12345));
    let want = std::fs::metadata(&f.path).unwrap();
    rt(b).block_on(async {
        let file = File::open(&f.path).await.unwrap();
        let st = file.metadata().await.unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(st.size, 12345);
        assert_eq!(st.size, want.len());
        assert_eq!(st.mode, want.mode());
        assert_eq!(st.ino, want.ino());
        assert!(st.is_file());
    });
}

pub fn f9_close_cancels_and_consumes(b: Target) {
    // Runtime level: close consumes the handle (no later op can name the fd).
    let f = TempFile::with(b"abc");
    rt(b).block_on(async {
        let file = File::open(&f.path).await.unwrap();
        file.close().await.unwrap();
    });
    // Driver level: close with a read pending on the fd cancels the read,
    // waits for it, then closes.
    let mut d = Drv::new(b);
    let p = Pipe::new(d.nonblocking());
    use std::os::fd::IntoRawFd;
    let Pipe { r, w } = p;
    let rfd = r.into_raw_fd(); // the driver's close owns it now
    d.submit(
        Op::Read {
            fd: rfd,
            offset: ringport::Offset::Current,
            buf: AnyBufMut::new(Vec::with_capacity(8)),
        },
        1,
    );
    d.idle(Duration::from_millis(20));
    assert!(d.done.is_empty(), "the read is pending on an idle pipe");
    d.submit(Op::Close { fd: rfd }, 2);
    let all = d.collect(2, WAIT);
    let read = all.iter().find(|c| c.token == 1).unwrap();
    let close = all.iter().find(|c| c.token == 2).unwrap();
    assert_eq!(
        read.result.as_ref().unwrap_err().raw_os_error(),
        Some(libc::ECANCELED)
    );
    assert_eq!(close.result.as_ref().unwrap(), &0);
    let pos_read = all.iter().position(|c| c.token == 1).unwrap();
    let pos_close = all.iter().position(|c| c.token == 2).unwrap();
    assert!(pos_read < pos_close, "the read completes before the close");
    drop(w);
}
