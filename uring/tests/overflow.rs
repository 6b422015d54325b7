//! Completion-queue overflow on a tiny ring: nothing is lost.

use ringport_core::{Driver, Op};
use ringport_uring::UringDriver;
use std::collections::HashSet;
use std::time::{Duration, Instant};

#[test]
fn tiny_completion_queue_loses_nothing() {
    const N: u64 = 5000;
    let mut d = UringDriver::builder()
        .entries(4)
        .cq_entries(8)
        .build()
        .expect("ring");
    let deadline = Instant::now() + Duration::from_millis(30);
    for token in 0..N {
        let op = if token % 3 == 0 {
            Op::Timeout { deadline }
        } else {
            Op::Nop
        };
        d.submit(op, token, None).expect("submit");
    }
    // Nobody reaps while the timers fire: the 8-entry CQ overflows.
    std::thread::sleep(Duration::from_millis(100));
    let mut out = Vec::new();
    let end = Instant::now() + Duration::from_secs(20);
    while out.len() < N as usize {
        assert!(Instant::now() < end, "only {} of {N}", out.len());
        d.wait(&mut out, 1, Some(Duration::from_secs(1))).unwrap();
    }
    assert_eq!(out.len(), N as usize);
    let tokens: HashSet<u64> = out.iter().map(|c| c.token).collect();
    assert_eq!(tokens.len(), N as usize, "no completion lost or doubled");
    assert_eq!(d.in_flight(), 0);
}
