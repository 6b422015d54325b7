//! W1 (W2 and W3 arrive with the CompletionPort).

use crate::harness::Drv;
use crate::Target;
use std::time::{Duration, Instant};

pub fn w1_wake_from_another_thread(b: Target) {
    let mut d = Drv::new(b);
    // Settle the driver (first use) before timing.
    d.d.wait(&mut d.done, 0, Some(Duration::ZERO)).unwrap();
    let waker = d.d.waker();
    let t0 = Instant::now();
    let th = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        waker.wake();
        Instant::now()
    });
    let n =
        d.d.wait(&mut d.done, 1, Some(Duration::from_secs(5)))
            .unwrap();
    let woke = Instant::now();
    let sent = th.join().unwrap();
    assert_eq!(n, 0, "no completion, only a wake");
    assert!(
        woke >= sent - Duration::from_millis(5),
        "returned before the wake"
    );
    assert!(
        woke - sent < Duration::from_millis(100),
        "the wake took {:?} to end the wait",
        woke - sent
    );
    assert!(t0.elapsed() < Duration::from_secs(1));
}
