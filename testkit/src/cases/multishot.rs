//! MS-cases: multishot ops — one submission, a result per event, one
//! completion at the end. A backend that refuses them says so in its
//! capabilities, and then the stream's first item is `Unsupported`.

use crate::harness::{pattern_vec, rt};
use crate::Target;
use ringport::{BufPool, OpKind, Support, TcpListener, TcpStream};
use std::io::{ErrorKind, Read, Write};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn supported(rt: &ringport_core::Runtime, k: OpKind) -> bool {
    rt.capabilities().get(k) != Support::Unsupported
}

/// Where multishot recv is refused: the stream's first item says so.
fn assert_recv_stream_refused(rt: &ringport_core::Runtime) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    rt.block_on(async {
        let s = TcpStream::connect(addr).await.unwrap();
        let pool = BufPool::new(1, 8).unwrap();
        let e = s.recv_stream(&pool).next().await.unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    });
}

/// MS1: `incoming()` yields every connection, each a working stream; after
/// it is dropped the listener still accepts.
pub fn ms1_incoming_yields_each_connection(b: Target) {
    let rt = rt(b);
    let l = rt
        .block_on(async { TcpListener::bind("127.0.0.1:0".parse().unwrap()) })
        .unwrap();
    let addr = l.local_addr().unwrap();
    if !supported(&rt, OpKind::AcceptMulti) {
        rt.block_on(async {
            let e = l.incoming().next().await.unwrap().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        });
        return;
    }
    let clients: Vec<_> = (0..5u8)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(WAIT)).unwrap();
                s.write_all(&[i]).unwrap();
                let mut back = [0u8; 1];
                s.read_exact(&mut back).unwrap();
                assert_eq!(back[0], i, "echoed by the server");
            })
        })
        .collect();
    rt.block_on(async {
        let mut inc = l.incoming();
        for _ in 0..5 {
            let s = ringport::timeout(WAIT, inc.next())
                .await
                .expect("a connection within the wait")
                .expect("the stream goes on")
                .expect("a connection");
            let (r, buf) = s.read(Vec::with_capacity(1)).await;
            assert_eq!(r.unwrap(), 1);
            let (r, _) = s.write_all(buf).await;
            r.unwrap();
        }
        drop(inc);
        let late = std::thread::spawn(move || std::net::TcpStream::connect(addr).map(|_| ()));
        let (s, _) = ringport::timeout(WAIT, l.accept())
            .await
            .expect("the listener still accepts")
            .unwrap();
        drop(s);
        late.join().unwrap().unwrap();
    });
    for c in clients {
        c.join().unwrap();
    }
}

/// MS2: `recv_stream` yields every byte in order, in pool buffers, and ends
/// when the peer closes.
pub fn ms2_recv_stream_yields_every_byte_until_the_peer_closes(b: Target) {
    let rt = rt(b);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let data = pattern_vec(100_000);
    if !supported(&rt, OpKind::RecvMulti) {
        return assert_recv_stream_refused(&rt);
    }
    let sent = data.clone();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        for chunk in sent.chunks(1000) {
            s.write_all(chunk).unwrap();
        }
    });
    rt.block_on(async {
        let s = TcpStream::connect(addr).await.unwrap();
        let pool = BufPool::new(64, 4096).unwrap();
        let mut got = Vec::new();
        let mut st = s.recv_stream(&pool);
        loop {
            match ringport::timeout(WAIT, st.next())
                .await
                .expect("an arrival within the wait")
            {
                Some(Ok(buf)) => got.extend_from_slice(&buf),
                Some(Err(e)) => panic!("recv_stream failed: {e}"),
                None => break,
            }
        }
        assert_eq!(got.len(), data.len(), "every byte");
        assert!(got == data, "in order");
    });
    peer.join().unwrap();
}

/// MS3: a recv stream dropped mid-way ends its op: bytes sent after that
/// reach a plain read, and nothing is returned twice.
pub fn ms3_a_dropped_recv_stream_ends_and_later_bytes_reach_a_read(b: Target) {
    let rt = rt(b);
    if !supported(&rt, OpKind::RecvMulti) {
        return assert_recv_stream_refused(&rt);
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"first").unwrap();
        if go_rx.recv().is_ok() {
            s.write_all(b"second").unwrap();
        }
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    rt.block_on(async {
        let s = TcpStream::connect(addr).await.unwrap();
        let pool = BufPool::new(8, 64).unwrap();
        let mut st = s.recv_stream(&pool);
        let first = ringport::timeout(WAIT, st.next())
            .await
            .expect("within the wait")
            .unwrap();
        assert_eq!(&*first.unwrap(), b"first");
        drop(st);
        // Let the cancel land before the next bytes are sent.
        let _ = ringport::sleep(Duration::from_millis(50)).await;
        go_tx.send(()).unwrap();
        let (r, buf) = ringport::timeout(WAIT, s.read(Vec::with_capacity(64)))
            .await
            .expect("a plain read after the stream gets the later bytes");
        assert_eq!(r.unwrap(), 6);
        assert_eq!(
            &buf[..],
            b"second",
            "nothing lost to the ended stream, nothing twice"
        );
        s.close().await.unwrap();
    });
    peer.join().unwrap();
}
