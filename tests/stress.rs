//! Memory safety under cancellation: many mixed ops (pipe and socket reads,
//! timers, accepts), about a third of them abandoned mid-flight by dropping
//! their futures. Every buffer counts its drops: each must be dropped exactly
//! once by the end (none twice, none leaked). That none is freed before its
//! completion is shown deterministically by conformance case X3, and by this
//! test under valgrind and AddressSanitizer.
//!
//! `RINGPORT_STRESS_OPS` sets the op count per backend (default 20,000); the
//! full run is `RINGPORT_STRESS_OPS=1000000 cargo test --release --test stress`.

use ringport_testkit::harness;

use harness::{rt, Counted, Rng};
use ringport::{Backend, TcpListener, TcpStream};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

macro_rules! case {
    ($b:expr, $name:ident) => {
        #[test]
        fn $name() {
            if ringport_testkit::harness::available($b, stringify!($name)) {
                crate::$name($b)
            }
        }
    };
}

#[cfg(target_os = "linux")]
mod uring {
    case!(ringport::Backend::Uring, mixed_ops_with_drops);
}

mod aio {
    case!(ringport::Backend::Aio, mixed_ops_with_drops);
}

mod epoll {
    case!(ringport::Backend::Epoll, mixed_ops_with_drops);
}

mod poll {
    case!(ringport::Backend::Poll, mixed_ops_with_drops);
}

mod select {
    case!(ringport::Backend::Select, mixed_ops_with_drops);
}

mod sigio {
    case!(ringport::Backend::Sigio, mixed_ops_with_drops);
}

fn ops_wanted() -> usize {
    std::env::var("RINGPORT_STRESS_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

#[derive(Default)]
struct Tally {
    done: Cell<usize>,
    abandoned: Cell<usize>,
}

fn mixed_ops_with_drops(b: Backend) {
    let total = ops_wanted();
    let tasks = 64;
    let counters: Rc<std::cell::RefCell<Vec<Arc<AtomicUsize>>>> = Default::default();
    let tally = Rc::new(Tally::default());
    {
        let rt = rt(b);
        rt.block_on(async {
            let listener = Rc::new(TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap());
            let addr = listener.local_addr().unwrap();
            let mut handles = Vec::new();
            for t in 0..tasks {
                let counters = counters.clone();
                let tally = tally.clone();
                let listener = listener.clone();
                let per_task = total / tasks + 1;
                handles.push(ringport::spawn(async move {
                    let mut rng = Rng::new(t as u64 + 1);
                    let (pr, pw) = ringport::pipe().unwrap();
                    let a = TcpStream::connect(addr).await.unwrap();
                    let (s, _) = listener.accept().await.unwrap();
                    for _ in 0..per_task {
                        let (buf, drops) = Counted::new(64);
                        counters.borrow_mut().push(drops.clone());
                        // Feed the read sources now and then, so some reads finish.
                        if rng.below(3) == 0 {
                            let _ = pw.write_all(vec![1u8; 1 + rng.below(100) as usize]).await;
                        }
                        if rng.below(3) == 0 {
                            let _ = a.write_all(vec![2u8; 1 + rng.below(100) as usize]).await;
                        }
                        let limit = Duration::from_micros(rng.below(1500));
                        let kind = rng.below(4);
                        let finished = match kind {
                            0 => ringport::timeout(limit, pr.read(buf)).await.is_ok(),
                            1 => ringport::timeout(limit, s.read(buf)).await.is_ok(),
                            2 => {
                                drop(buf);
                                ringport::timeout(
                                    limit,
                                    ringport::sleep(Duration::from_micros(700)),
                                )
                                .await
                                .is_ok()
                            }
                            _ => {
                                drop(buf);
                                match ringport::timeout(limit, listener.accept()).await {
                                    Ok(r) => {
                                        r.unwrap();
                                        true
                                    }
                                    Err(_) => false,
                                }
                            }
                        };
                        if finished {
                            tally.done.set(tally.done.get() + 1);
                        } else {
                            tally.abandoned.set(tally.abandoned.get() + 1);
                        }
                        assert!(
                            drops.load(Ordering::SeqCst) <= 1,
                            "a buffer was dropped twice"
                        );
                    }
                    // Occasional accepts need peers: make a few connections.
                    drop(TcpStream::connect(addr).await);
                }));
            }
            // Keep accepts fed.
            let feeder = ringport::spawn(async move {
                let mut conns = Vec::new();
                for _ in 0..200 {
                    if let Ok(c) = TcpStream::connect(addr).await {
                        conns.push(c);
                    }
                    ringport::sleep(Duration::from_millis(2)).await.unwrap();
                }
            });
            for h in handles {
                h.await.unwrap();
            }
            drop(feeder);
        });
        // Dropping the runtime cancels what is left and frees each buffer once.
    }
    let counters = counters.borrow();
    let twice = counters
        .iter()
        .filter(|c| c.load(Ordering::SeqCst) > 1)
        .count();
    let never = counters
        .iter()
        .filter(|c| c.load(Ordering::SeqCst) == 0)
        .count();
    let done = tally.done.get();
    let abandoned = tally.abandoned.get();
    eprintln!(
        "{b}: {} ops, {done} completed, {abandoned} abandoned mid-flight, {} buffers",
        done + abandoned,
        counters.len()
    );
    assert_eq!(twice, 0, "buffers dropped twice");
    assert_eq!(never, 0, "buffers never dropped (leaked)");
    assert!(
        abandoned * 10 > (done + abandoned),
        "too few ops were abandoned to test anything"
    );
    assert!(
        done * 10 > (done + abandoned),
        "too few ops completed to test anything"
    );
}
