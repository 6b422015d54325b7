//! BP-cases: pooled reads. The buffer comes from a `BufPool` only when data
//! arrives; it goes back to the pool when dropped; a pool with no free
//! buffer when data arrives is `ENOBUFS` (the same on every backend).

use crate::harness::{rt, TempFile};
use crate::Target;
use ringport::bufpool::is_pool_exhausted;
use ringport::{BufPool, File, TcpListener, TcpStream};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// Two connected runtime streams on loopback.
async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = ringport::spawn(async move { l.accept().await.unwrap().0 });
    let c = TcpStream::connect(addr).await.unwrap();
    (c, accepted.await.expect("the accept task"))
}

/// BP1: a pooled recv gets the bytes that arrived in a buffer of the pool.
pub fn bp1_pooled_recv_gets_the_bytes_in_a_pool_buffer(b: Target) {
    let rt = rt(b);
    rt.block_on(async {
        let pool = BufPool::new(4, 64).unwrap();
        let (x, y) = pair().await;
        let (r, _) = y.write_all(b"pooled bytes".to_vec()).await;
        r.unwrap();
        let got = ringport::timeout(WAIT, x.recv_pooled(&pool))
            .await
            .expect("recv_pooled timed out")
            .unwrap()
            .expect("data, not end of stream");
        assert_eq!(&*got, b"pooled bytes");
        drop(y);
        let end = ringport::timeout(WAIT, x.recv_pooled(&pool))
            .await
            .expect("recv_pooled timed out")
            .unwrap();
        assert!(end.is_none(), "end of stream is None");
    });
}

/// BP2: buffers go back to the pool when dropped; with every buffer held, a
/// recv whose data arrives fails with ENOBUFS, and works again once one is
/// dropped.
pub fn bp2_pool_refills_on_drop_and_exhaustion_is_enobufs(b: Target) {
    let rt = rt(b);
    rt.block_on(async {
        let pool = BufPool::new(2, 16).unwrap();
        let (x, y) = pair().await;
        let mut held = Vec::new();
        for i in 0..2u8 {
            let (r, _) = y.write_all(vec![i; 4]).await;
            r.unwrap();
            let got = ringport::timeout(WAIT, x.recv_pooled(&pool))
                .await
                .expect("timed out")
                .unwrap()
                .unwrap();
            assert_eq!(&*got, &[i; 4]);
            held.push(got);
        }
        let (r, _) = y.write_all(vec![9u8; 4]).await;
        r.unwrap();
        let e = ringport::timeout(WAIT, x.recv_pooled(&pool))
            .await
            .expect("an exhausted pool fails, it does not wait")
            .expect_err("both buffers are held");
        assert!(is_pool_exhausted(&e), "ENOBUFS, got {e}");
        held.pop();
        let got = ringport::timeout(WAIT, x.recv_pooled(&pool))
            .await
            .expect("timed out")
            .unwrap()
            .unwrap();
        assert_eq!(
            &*got, &[9u8; 4],
            "the bytes were not lost to the failed recv"
        );
    });
}

/// BP3: a recv waiting for data holds no buffer: with a pool of one, a recv
/// parked on a quiet connection does not stop a recv on a busy one.
pub fn bp3_a_waiting_pooled_recv_holds_no_buffer(b: Target) {
    let rt = rt(b);
    rt.block_on(async {
        let pool = BufPool::new(1, 32).unwrap();
        let (quiet, _quiet_peer) = pair().await;
        let (busy, busy_peer) = pair().await;
        let p2 = pool.clone();
        let parked = ringport::spawn(async move { quiet.recv_pooled(&p2).await.map(|_| ()) });
        let _ = ringport::sleep(Duration::from_millis(20)).await;
        let (r, _) = busy_peer.write_all(b"hi".to_vec()).await;
        r.unwrap();
        let got = ringport::timeout(WAIT, busy.recv_pooled(&pool))
            .await
            .expect("timed out")
            .unwrap()
            .unwrap();
        assert_eq!(&*got, b"hi");
        assert!(!parked.is_finished(), "the quiet recv still waits");
    });
}

/// BP4: a pooled read of a file at an offset.
pub fn bp4_pooled_file_read_at_an_offset(b: Target) {
    let t = TempFile::with(b"0123456789abcdef");
    let rt = rt(b);
    rt.block_on(async {
        let pool = BufPool::new(2, 8).unwrap();
        let f = File::open(&t.path).await.unwrap();
        let got = f.read_pooled_at(&pool, 4).await.unwrap().unwrap();
        assert_eq!(&*got, b"456789ab", "a pool buffer's worth from offset 4");
        let end = f.read_pooled_at(&pool, 16).await.unwrap();
        assert!(end.is_none(), "end of file is None");
    });
}
