//! T1–T3: time.

use crate::harness::{rt, Drv, Rng, Target};
use ringport::{Op, PipeReader};
use std::io::ErrorKind;
use std::time::{Duration, Instant};

pub fn t1_timeout(b: Target) {
    let mut d = Drv::new(b);
    let t0 = Instant::now();
    d.submit(
        Op::Timeout {
            deadline: t0 + Duration::from_millis(20),
        },
        1,
    );
    let c = d.collect(1, Duration::from_secs(5)).pop().unwrap();
    let took = t0.elapsed();
    let e = c.result.unwrap_err();
    assert!(
        e.raw_os_error() == Some(libc::ETIME) || e.kind() == ErrorKind::TimedOut,
        "got {e}"
    );
    assert!(took >= Duration::from_millis(20), "fired early: {took:?}");
    assert!(took < Duration::from_millis(200), "fired late: {took:?}");
}

pub fn t2_read_deadline(b: Target) {
    rt(b).block_on(async {
        let (r, w) = ringport::pipe().unwrap();
        let buf: Vec<u8> = Vec::with_capacity(64);
        let ptr = buf.as_ptr();
        let t0 = Instant::now();
        let (res, buf) = PipeReader::read_deadline(&r, buf, t0 + Duration::from_millis(30)).await;
        let took = t0.elapsed();
        assert_eq!(res.unwrap_err().kind(), ErrorKind::TimedOut);
        assert_eq!(buf.as_ptr(), ptr, "the same buffer comes back");
        assert!(took >= Duration::from_millis(30), "{took:?}");
        assert!(took < Duration::from_millis(500), "{took:?}");
        drop(w);
    });
}

pub fn t3_timers_in_deadline_order(b: Target) {
    let mut d = Drv::new(b);
    let mut rng = Rng::new(3);
    let base = Instant::now() + Duration::from_millis(20);
    let deadlines: Vec<Instant> = (0..1000)
        .map(|_| base + Duration::from_micros(rng.below(300_000)))
        .collect();
    for (i, &deadline) in deadlines.iter().enumerate() {
        d.submit(Op::Timeout { deadline }, i as u64);
    }
    let mut order = Vec::new();
    while order.len() < 1000 {
        d.wait_n(1, Duration::from_secs(10));
        order.extend(d.done.drain(..).map(|c| c.token as usize));
    }
    for w in order.windows(2) {
        let (a, c) = (deadlines[w[0]], deadlines[w[1]]);
        assert!(
            a <= c + Duration::from_millis(1),
            "timer {} fired after timer {} although it was due {:?} later",
            w[0],
            w[1],
            a - c
        );
    }
}
