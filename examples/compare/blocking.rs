//! The `blocking` row: echo latency while the runtime's blocking pool is
//! busy. The runtime echo server answers as in the echo rows while a task
//! keeps 1,000 jobs of 10 ms (`std::thread::sleep`, blocking work such as a
//! synchronous syscall) going through `spawn_blocking`, round after round.
//! The row is the loaded run; its note holds the idle p99 of the same
//! server measured in the same job (idle and loaded runs interleaved,
//! twice each) and the ratio, whose target is at most 2×.

use crate::measure::{add_note, Measured};
use crate::net::{self, Mode, ServeFn, ServerCtx};
use crate::report::Model;
use crate::{Ctx, Plan};
use ringport::Backend;
use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Jobs per round, and how long each blocks.
const JOBS: usize = 1000;
const JOB: Duration = Duration::from_millis(10);

/// The ringport runtime echo server on `b`, with `JOBS` blocking jobs in
/// flight all the time when `load` is set.
fn server(b: Backend, load: bool) -> ServeFn {
    Box::new(move |ctx: &ServerCtx| {
        let rt = ringport::Runtime::with_backend(b)?;
        let stop = ctx.stop.clone();
        rt.block_on(async {
            if load {
                ringport::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let round: Vec<_> = (0..JOBS)
                            .map(|_| ringport::spawn_blocking(|| std::thread::sleep(JOB)))
                            .collect();
                        for j in round {
                            let _ = j.await;
                        }
                    }
                });
            }
            let l = ringport::TcpListener::bind("127.0.0.1:0".parse().expect("addr"))?;
            ctx.ready(l.local_addr()?.port());
            loop {
                let s = match l.accept().await {
                    Ok((s, _)) => s,
                    Err(e) if net::transient(&e) => continue,
                    Err(e) => return Err(e),
                };
                if ctx.stopped() {
                    return Ok(());
                }
                ringport::spawn(async move {
                    let _ = s.set_nodelay(true);
                    let mut buf = Vec::with_capacity(4096);
                    loop {
                        let (r, b) = s.read(buf).await;
                        buf = b;
                        if !matches!(r, Ok(n) if n > 0) {
                            break;
                        }
                        let (r, b) = s.write_all(buf).await;
                        buf = b;
                        if r.is_err() {
                            break;
                        }
                        buf.clear();
                    }
                });
            }
        })
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Idle and loaded runs of backend `b`, interleaved; the loaded run with
/// the best (median) p99 is the row, with the ratio in its note.
fn run(b: Backend, c: &Ctx) -> io::Result<Measured> {
    let load = net::Load {
        mode: Mode::Echo,
        client: net::Client::Uring,
        conns: 50,
        size: 128,
        idle: 0,
        warmup: c.warmup,
        dur: c.dur,
    };
    let (mut idle, mut busy) = (Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..2 {
        let m = net::run(server(b, false), &load)?;
        idle.push(
            m.p99_us
                .ok_or_else(|| io::Error::other("no idle latency samples"))?,
        );
        let m = net::run(server(b, true), &load)?;
        busy.push(
            m.p99_us
                .ok_or_else(|| io::Error::other("no loaded latency samples"))?,
        );
        last = Some(m);
    }
    let (idle, busy) = (median(idle), median(busy));
    let mut m = last.expect("two rounds ran");
    m.p99_us = Some(busy);
    let ratio = busy / idle;
    add_note(
        &mut m.note,
        &format!(
            "p99 idle {idle:.0} µs, with {JOBS} × {} ms blocking jobs {busy:.0} µs = {ratio:.2}× (target ≤ 2×: {})",
            JOB.as_millis(),
            if ratio <= 2.0 { "met" } else { "MISSED" }
        ),
    );
    Ok(m)
}

/// The `blocking` workload's rows: one per backend that runs here.
pub fn plan(p: &mut Plan, avail: &[(Backend, Result<(), String>)]) {
    let start = p.jobs.len();
    for (b, ok) in avail {
        if ok.is_err() {
            continue;
        }
        let b = *b;
        let model = match b {
            Backend::Uring => Model::AsyncUring,
            Backend::Aio => Model::AsyncAio,
            Backend::Sigio => Model::SignalDriven,
            _ => Model::Multiplexing,
        };
        p.job(
            "blocking",
            "c50 128B + 1,000 × 10 ms spawn_blocking",
            &format!("ringport/{b}"),
            model,
            move |c| run(b, c),
        );
    }
    for j in &mut p.jobs[start..] {
        j.client = Some(net::Client::Uring);
    }
}
