//! ZC-cases: sends without a copy (`send_zc`; SEND_ZC on io_uring, a plain
//! send elsewhere).

use crate::harness::{pattern_vec, rt};
use crate::Target;
use ringport::TcpStream;
use std::io::Read;

/// ZC1: a 1 MiB zero-copy send between two plain sends arrives byte-exact
/// and in order, and its buffer comes back whole.
pub fn zc1_send_zc_is_byte_exact_in_order_and_gives_the_buffer_back(b: Target) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let big = pattern_vec(1 << 20);
    let want: Vec<u8> = [b"head".as_slice(), &big, b"tail"].concat();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let rt = rt(b);
    rt.block_on(async {
        let s = TcpStream::connect(addr).await.unwrap();
        let (r, _) = s.write_all(b"head".to_vec()).await;
        r.unwrap();
        let (r, back) = s.send_zc(big.clone()).await;
        assert_eq!(r.unwrap(), big.len(), "every byte counted");
        assert_eq!(back, big, "the buffer comes back whole");
        let (r, _) = s.write_all(b"tail".to_vec()).await;
        r.unwrap();
        s.close().await.unwrap();
    });
    let got = reader.join().unwrap();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "bytes out of order or changed");
}
