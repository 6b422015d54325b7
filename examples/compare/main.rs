//! The model comparison: one workload on every ringport backend and against
//! peer runtimes, in one run, printed as one table (and optionally written
//! as JSON and an SVG chart).
//!
//! ```text
//! cargo run --release --example compare --features peers            # the default suite
//! cargo run --release --example compare --features peers -- --quick --json out.json
//! cargo run --release --example compare -- --help
//! ```
//!
//! Without `--features peers` the tokio, monoio and compio rows are shown as
//! "n/a" (the peers are optional so that `cargo test` does not build them).

mod blocking;
mod chart;
mod epoll_client;
mod file;
mod http;
mod http_file;
mod measure;
mod models;
mod net;
mod nop;
#[cfg(feature = "peers")]
mod peers;
mod report;
mod send_file;
mod usage;

use clap::{Parser, Subcommand};
use measure::Measured;
use report::{Model, Record};
use ringport::Backend;
use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WORKLOADS: [&str; 7] = [
    "nop",
    "file-randread",
    "file-write",
    "echo",
    "accept",
    "echo-scale",
    "http-hello",
];

/// Whether a workload's rows are a server under a load client.
fn is_net(w: &str) -> bool {
    matches!(w, "echo" | "accept" | "echo-scale" | "http-hello")
}

/// Workloads run only when named (not part of `all`, so `--quick` stays
/// short): `blocking`, echo p99 with blocking jobs running; `http-file`,
/// static files against nginx (needs wrk; see http_file.rs).
const EXTRA_WORKLOADS: [&str; 3] = ["blocking", http_file::WORKLOAD, send_file::WORKLOAD];

/// Compares ringport's backends (io_uring, aio, epoll, poll, select, sigio)
/// with each other and with tokio, monoio and compio (built with
/// `--features peers`), and prints one table. A progress line goes to stderr.
/// See BENCHMARKS.md.
#[derive(Parser, Debug)]
#[command(name = "compare", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Workloads to run, comma-separated: nop, file-randread, file-write,
    /// echo, accept, echo-scale (the scale curve: echo at 1 to 10,000
    /// connections and 50 active + 1,000 idle; two points with --quick),
    /// http-hello (hyper, 4 KiB body, keep-alive, on ringport and tokio), or
    /// all; and, only when named, blocking (echo p99 while 1,000 × 10 ms
    /// `spawn_blocking` jobs run), http-file (static files against nginx) and
    /// send-file (1 GiB to one connection: send_file against read + write).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    workload: Vec<String>,
    /// Only rows whose backend/peer name contains one of these
    /// (comma-separated, e.g. `uring,tokio`); each workload's baseline
    /// always runs.
    #[arg(long, value_delimiter = ',')]
    backend: Vec<String>,
    /// Only variants containing one of these (comma-separated, e.g.
    /// `batch 32,qd32`).
    #[arg(long, value_delimiter = ',')]
    variant: Vec<String>,
    /// Seconds measured per configuration (after a warm-up of a quarter of
    /// it). Default: whatever fits the suite in about 40 s (20 s with --quick).
    #[arg(long)]
    duration: Option<f64>,
    /// Runs of every configuration, interleaved (A, B, C, A, B, C, ...);
    /// each row reports the run with the median throughput.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Writes every record as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Writes the charts, PNG or SVG by this file's extension: bars of
    /// throughput per backend per workload here, and the scale curve (when
    /// echo-scale ran) beside it as `NAME-scale.EXT` (or here, when it is
    /// all that ran).
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Runs nothing: draws the `--chart` from a JSON file written by
    /// `--json` before.
    #[arg(long, requires = "chart")]
    chart_from: Option<PathBuf>,
    /// A smaller, faster suite: 64 MiB read file, shorter runs.
    #[arg(long)]
    quick: bool,
    /// Do not count syscalls (their tracepoint counters cost a little per
    /// syscall while a window runs).
    #[arg(long)]
    no_syscalls: bool,
    /// Directory for the test files (default: the system's temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The load client of `echo` and `accept` (run by the harness itself).
    #[command(hide = true)]
    LoadClient {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        mode: String,
        #[arg(long)]
        client: String,
        #[arg(long, default_value_t = 0)]
        idle: usize,
        #[arg(long)]
        conns: usize,
        #[arg(long)]
        size: usize,
        #[arg(long)]
        warmup_ms: u64,
        #[arg(long)]
        duration_ms: u64,
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// The sink of `send-file` (run by the harness itself).
    #[command(hide = true)]
    SinkClient {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        bytes: u64,
        #[arg(long)]
        cpu: Option<usize>,
    },
}

type RunFn = Box<dyn Fn(&Ctx) -> io::Result<Measured>>;

/// One configuration to measure.
struct Job {
    workload: &'static str,
    variant: String,
    backend: String,
    model: Model,
    net: bool,
    /// The load client of a network row.
    client: Option<net::Client>,
    run: RunFn,
}

/// What jobs get when they run.
struct Ctx {
    warmup: Duration,
    dur: Duration,
    read_file: Option<file::TestFile>,
    write_path: PathBuf,
    write_size: u64,
}

impl Ctx {
    fn tf(&self) -> io::Result<&file::TestFile> {
        self.read_file
            .as_ref()
            .ok_or_else(|| io::Error::other("no test file"))
    }
}

/// A ringport backend this build can open, or why not.
fn backends() -> Vec<(Backend, Result<(), String>)> {
    Backend::ALL
        .iter()
        .map(|&b| (b, ringport::driver(b).map(drop).map_err(|e| e.to_string())))
        .collect()
}

struct Plan {
    jobs: Vec<Job>,
    missing: Vec<Record>,
}

impl Plan {
    fn job(
        &mut self,
        workload: &'static str,
        variant: &str,
        backend: &str,
        model: Model,
        run: impl Fn(&Ctx) -> io::Result<Measured> + 'static,
    ) {
        self.jobs.push(Job {
            workload,
            variant: variant.to_string(),
            backend: backend.to_string(),
            model,
            net: is_net(workload),
            client: None,
            run: Box::new(run),
        });
    }
    fn na(&mut self, workload: &'static str, backend: &str, model: Model, why: String) {
        self.missing.push(Record::missing(
            workload,
            "-",
            backend,
            model,
            format!("n/a: {why}"),
        ));
    }
}

/// The model of a backend for sockets: aio hands them to its epoll shim.
fn net_model_of(b: Backend) -> Model {
    match b {
        Backend::Uring => Model::AsyncUring,
        Backend::Sigio => Model::SignalDriven,
        _ => Model::Multiplexing,
    }
}

/// The model of a backend for files.
fn model_of(b: Backend) -> Model {
    match b {
        Backend::Uring => Model::AsyncUring,
        Backend::Aio => Model::AsyncAio,
        Backend::Sigio => Model::SignalDriven,
        _ => Model::Multiplexing,
    }
}

#[cfg(not(feature = "peers"))]
fn peers_missing(plan: &mut Plan, workload: &'static str, names: &[(&str, Model)]) {
    for (n, m) in names {
        plan.na(
            workload,
            n,
            *m,
            "built without `--features peers`".to_string(),
        );
    }
}

fn plan_nop(p: &mut Plan, avail: &[(Backend, Result<(), String>)]) {
    const W: &str = "nop";
    for batch in [1usize, 32] {
        let v = format!("batch {batch}");
        p.job(W, &v, "raw io-uring", Model::AsyncUring, move |c| {
            nop::raw_uring(batch, c.warmup, c.dur)
        });
        for (b, ok) in avail {
            if ok.is_err() {
                continue;
            }
            let b = *b;
            p.job(
                W,
                &v,
                &format!("ringport/{b} driver"),
                model_of(b),
                move |c| nop::driver(b, batch, c.warmup, c.dur),
            );
            p.job(
                W,
                &v,
                &format!("ringport/{b} runtime ({batch} tasks)"),
                model_of(b),
                move |c| nop::runtime(b, batch, c.warmup, c.dur),
            );
        }
    }
}

fn plan_randread(p: &mut Plan, avail: &[(Backend, Result<(), String>)], fio: bool) {
    const W: &str = "file-randread";
    p.job(W, "qd1", "std pread loop", Model::Blocking, |c| {
        file::pread_loop(c.tf()?, c.warmup, c.dur)
    });
    for qd in [1usize, 32] {
        let v = format!("qd{qd}");
        if qd > 1 {
            p.job(
                W,
                &v,
                &format!("std pread pool ({qd} threads)"),
                Model::Blocking,
                move |c| models::pread_pool(c.tf()?, qd, c.warmup, c.dur),
            );
        }
        p.job(
            W,
            &v,
            "ringport CompletionPort (1 worker)",
            Model::Iocp,
            move |c| models::iocp_randread(c.tf()?, qd, c.warmup, c.dur),
        );
        for (b, ok) in avail {
            if ok.is_err() {
                continue;
            }
            let b = *b;
            p.job(
                W,
                &v,
                &format!("ringport/{b} driver"),
                model_of(b),
                move |c| file::driver_randread(b, false, c.tf()?, qd, c.warmup, c.dur),
            );
            p.job(
                W,
                &v,
                &format!("ringport/{b} runtime"),
                model_of(b),
                move |c| file::runtime_randread(b, false, c.tf()?, qd, c.warmup, c.dur),
            );
            // Registered buffers (READ_FIXED), with the file registered too,
            // against the same ops with the registration off (plain READ),
            // on io_uring only.
            #[cfg(target_os = "linux")]
            if b == Backend::Uring {
                for (name, how) in [
                    ("fixed buffers", (true, false)),
                    ("fixed buffers + registered file", (true, true)),
                    ("fixed ops, unregistered", (false, false)),
                ] {
                    p.job(
                        W,
                        &v,
                        &format!("ringport/{b} driver, {name}"),
                        model_of(b),
                        move |c| file::driver_randread_fixed(b, how, c.tf()?, qd, c.warmup, c.dur),
                    );
                }
            }
            // The shim first reads from the page cache inline (RWF_NOWAIT);
            // these rows measure its thread pool alone, the readiness
            // model's only way to do file I/O.
            if b == Backend::Epoll {
                p.job(
                    W,
                    &v,
                    &format!("ringport/{b} driver, pool only"),
                    Model::Blocking,
                    move |c| file::driver_randread(b, true, c.tf()?, qd, c.warmup, c.dur),
                );
                p.job(
                    W,
                    &v,
                    &format!("ringport/{b} runtime, pool only"),
                    Model::Blocking,
                    move |c| file::runtime_randread(b, true, c.tf()?, qd, c.warmup, c.dur),
                );
            }
        }
        #[cfg(feature = "peers")]
        {
            p.job(W, &v, "tokio::fs seek+read", Model::Blocking, move |c| {
                peers::tokio_fs_randread(c.tf()?, qd, c.warmup, c.dur)
            });
            p.job(
                W,
                &v,
                "tokio spawn_blocking(pread)",
                Model::Blocking,
                move |c| peers::tokio_blocking_randread(c.tf()?, qd, c.warmup, c.dur),
            );
            p.job(W, &v, "monoio (io_uring)", Model::AsyncUring, move |c| {
                peers::monoio_randread(c.tf()?, qd, c.warmup, c.dur)
            });
            p.job(W, &v, "compio (io_uring)", Model::AsyncUring, move |c| {
                peers::compio_randread(c.tf()?, qd, c.warmup, c.dur)
            });
        }
        if fio {
            for engine in file::FIO_ENGINES {
                p.job(
                    W,
                    &v,
                    &format!("fio {engine}"),
                    file::fio_model(engine),
                    move |c| file::fio_randread(c.tf()?, engine, qd, c.warmup, c.dur),
                );
            }
        }
    }
    if !fio {
        for engine in file::FIO_ENGINES {
            p.na(
                W,
                &format!("fio {engine}"),
                file::fio_model(engine),
                "fio not installed".into(),
            );
        }
    }
    #[cfg(not(feature = "peers"))]
    peers_missing(
        p,
        W,
        &[
            ("tokio::fs seek+read", Model::Blocking),
            ("tokio spawn_blocking(pread)", Model::Blocking),
            ("monoio (io_uring)", Model::AsyncUring),
            ("compio (io_uring)", Model::AsyncUring),
        ],
    );
}

fn plan_write(p: &mut Plan, avail: &[(Backend, Result<(), String>)]) {
    const W: &str = "file-write";
    let v = "128KiB seq + fsync";
    p.job(W, v, "std write_all_at", Model::Blocking, |c| {
        file::std_write(&c.write_path, c.write_size, c.warmup, c.dur)
    });
    for (b, ok) in avail {
        if ok.is_err() {
            continue;
        }
        let b = *b;
        p.job(
            W,
            v,
            &format!("ringport/{b} runtime"),
            model_of(b),
            move |c| file::runtime_write(b, &c.write_path, c.write_size, c.warmup, c.dur),
        );
    }
    #[cfg(feature = "peers")]
    {
        p.job(W, v, "tokio::fs", Model::Blocking, |c| {
            peers::tokio_write(&c.write_path, c.write_size, c.warmup, c.dur)
        });
        p.job(W, v, "monoio (io_uring)", Model::AsyncUring, |c| {
            peers::monoio_write(&c.write_path, c.write_size, c.warmup, c.dur)
        });
        p.job(W, v, "compio (io_uring)", Model::AsyncUring, |c| {
            peers::compio_write(&c.write_path, c.write_size, c.warmup, c.dur)
        });
    }
    #[cfg(not(feature = "peers"))]
    peers_missing(
        p,
        W,
        &[
            ("tokio::fs", Model::Blocking),
            ("monoio (io_uring)", Model::AsyncUring),
            ("compio (io_uring)", Model::AsyncUring),
        ],
    );
}

/// Worker threads of the `CompletionPort` echo server (they share the
/// server's CPU, as every server's threads do).
const IOCP_WORKERS: usize = 2;

/// Descriptors above which the select backend is not planned (FD_SETSIZE
/// is 1,024 per process; the harness has some of its own).
const SELECT_FDS: usize = 900;

/// The network rows: every (active connections, payload size, idle
/// connections) shape under each of `clients`.
fn plan_net(
    p: &mut Plan,
    avail: &[(Backend, Result<(), String>)],
    w: &'static str,
    mode: net::Mode,
    shapes: &[(usize, usize, usize)],
    clients: &[net::Client],
) {
    for &(conns, size, idle) in shapes {
        let v = match mode {
            net::Mode::Echo if w == "echo-scale" && idle > 0 => {
                format!("c{conns} + {idle} idle")
            }
            net::Mode::Echo if w == "echo-scale" => format!("c{conns}"),
            net::Mode::Echo if size >= 1024 => format!("c{conns} {}KiB", size / 1024),
            net::Mode::Echo => format!("c{conns} {size}B"),
            net::Mode::Accept => format!("c{conns} connect+close"),
            net::Mode::Http => format!("c{conns} 4KiB keep-alive"),
        };
        for &client in clients {
            let start = p.jobs.len();
            let load = move |c: &Ctx| net::Load {
                mode,
                client,
                conns,
                size,
                idle,
                warmup: c.warmup,
                dur: c.dur,
            };
            #[cfg(feature = "peers")]
            {
                p.job(
                    w,
                    &v,
                    "tokio current_thread",
                    Model::Multiplexing,
                    move |c| net::run(peers::tokio_server(), &load(c)),
                );
                p.job(w, &v, "monoio (io_uring)", Model::AsyncUring, move |c| {
                    net::run(peers::monoio_uring_server(), &load(c))
                });
                p.job(
                    w,
                    &v,
                    "monoio (legacy epoll)",
                    Model::Multiplexing,
                    move |c| net::run(peers::monoio_legacy_server(), &load(c)),
                );
                p.job(w, &v, "compio (io_uring)", Model::AsyncUring, move |c| {
                    net::run(peers::compio_server(), &load(c))
                });
            }
            p.job(
                w,
                &v,
                "std::net thread per connection",
                Model::Blocking,
                move |c| {
                    // Hundreds of threads on one CPU: a round trip can outlast
                    // a --quick window (p99 ~150 ms at c500 here), so these rows
                    // get at least 0.5 s (+0.2 s warm-up).
                    let mut l = load(c);
                    if conns + idle >= 200 {
                        l.dur = l.dur.max(Duration::from_millis(500));
                        l.warmup = l.warmup.max(Duration::from_millis(200));
                    }
                    let long = l.dur > c.dur;
                    let mut m = net::run(models::blocking_server(), &l)?;
                    if long {
                        measure::add_note(
                            &mut m.note,
                            &format!(
                                "window {:.1} s (longer than the others)",
                                l.dur.as_secs_f64()
                            ),
                        );
                    }
                    Ok(m)
                },
            );
            p.job(
                w,
                &v,
                "nonblocking polling loop",
                Model::Nonblocking,
                move |c| net::run(models::nonblocking_server(), &load(c)),
            );
            // POSIX aio on sockets: glibc runs every request as a blocking
            // read or write on one of its (20) threads, so idle connections
            // would hold them all; the accept storm has no aio op.
            if mode == net::Mode::Echo {
                let name = "POSIX aio (glibc) on sockets";
                if idle > 0 {
                    let mut r = Record::missing(
                        w,
                        &v,
                        name,
                        Model::AsyncAio,
                        "n/a: glibc's aio blocks one of its 20 threads in read(2) per pending \
                         read, and 1,000 idle connections would hold every thread"
                            .into(),
                    );
                    r.client = client.name().to_string();
                    p.missing.push(r);
                } else {
                    p.job(w, &v, name, Model::AsyncAio, move |c| {
                        net::run(models::posix_aio_server(), &load(c))
                    });
                }
            }
            p.job(
                w,
                &v,
                &format!("ringport CompletionPort ({IOCP_WORKERS} workers)"),
                Model::Iocp,
                move |c| net::run(models::iocp_server(IOCP_WORKERS), &load(c)),
            );
            for (b, ok) in avail {
                if ok.is_err() {
                    continue;
                }
                let b = *b;
                // aio hands sockets to its epoll shim: the epoll line is its line.
                if w == "echo-scale" && b == Backend::Aio {
                    continue;
                }
                if b == Backend::Select && conns + idle > SELECT_FDS {
                    let mut r = Record::missing(
                        w,
                        &v,
                        "ringport/select",
                        net_model_of(b),
                        format!(
                            "n/a: select stops at FD_SETSIZE (1,024 fds per process; \
                             {} connections planned)",
                            conns + idle
                        ),
                    );
                    r.client = client.name().to_string();
                    p.missing.push(r);
                    continue;
                }
                p.job(w, &v, &format!("ringport/{b}"), net_model_of(b), move |c| {
                    net::run(net::ringport_server(b), &load(c))
                });
                // Multishot accept (and for echo, multishot recv into a
                // buffer pool): native on io_uring, emulated on epoll.
                if w != "echo-scale" && matches!(b, Backend::Uring | Backend::Epoll) {
                    let name = format!("ringport/{b} multishot");
                    p.job(w, &v, &name, net_model_of(b), move |c| {
                        net::run(net::ringport_multishot_server(b), &load(c))
                    });
                }
                // The same echo through the tokio-trait adapter (the
                // ecosystem bridges' ratio).
                #[cfg(feature = "tokio-io")]
                if matches!(mode, net::Mode::Echo) && w == "echo" {
                    let name = format!("ringport/{b} tokio-traits");
                    p.job(w, &v, &name, net_model_of(b), move |c| {
                        net::run(net::ringport_tokio_traits_server(b), &load(c))
                    });
                }
            }
            for j in &mut p.jobs[start..] {
                j.client = Some(client);
            }
        }
    }
    #[cfg(not(feature = "peers"))]
    peers_missing(
        p,
        w,
        &[
            ("tokio current_thread", Model::Multiplexing),
            ("monoio (io_uring)", Model::AsyncUring),
            ("monoio (legacy epoll)", Model::Multiplexing),
            ("compio (io_uring)", Model::AsyncUring),
        ],
    );
}

/// The `http-hello` rows: hyper serving a 4 KiB body with keep-alive, on
/// ringport/uring and ringport/epoll through ringport's hyper bridge, and on
/// tokio current_thread (the baseline), at each connection count under each
/// client.
fn plan_http(p: &mut Plan, conns: &[usize], clients: &[net::Client]) {
    const W: &str = "http-hello";
    for &n in conns {
        let v = format!("c{n} 4KiB keep-alive");
        for &client in clients {
            let start = p.jobs.len();
            let load = move |c: &Ctx| net::Load {
                mode: net::Mode::Http,
                client,
                conns: n,
                size: http::BODY_LEN,
                idle: 0,
                warmup: c.warmup,
                dur: c.dur,
            };
            p.job(W, &v, HTTP_BASE, Model::Multiplexing, move |c| {
                net::run(http::tokio_server(), &load(c))
            });
            for (b, m) in [
                (Backend::Uring, Model::AsyncUring),
                (Backend::Epoll, Model::Multiplexing),
            ] {
                p.job(W, &v, &format!("hyper/ringport-{b}"), m, move |c| {
                    net::run(http::ringport_server(b), &load(c))
                });
            }
            for j in &mut p.jobs[start..] {
                j.client = Some(client);
            }
        }
    }
}

/// The baseline of `http-hello`.
const HTTP_BASE: &str = "hyper/tokio current_thread";

const BASELINES: [&str; 6] = [
    "raw io-uring",
    "std pread loop",
    "std write_all_at",
    "tokio current_thread",
    "",
    "",
];

/// The network baseline when tokio did not run.
const FALLBACK_NET_BASE: &str = "ringport/epoll";

fn baseline_of(workload: &str) -> &'static str {
    match workload {
        "nop" => BASELINES[0],
        "file-randread" => BASELINES[1],
        "file-write" => BASELINES[2],
        http_file::WORKLOAD => http_file::BASELINE,
        send_file::WORKLOAD => send_file::BASELINE,
        "http-hello" => HTTP_BASE,
        _ => BASELINES[3],
    }
}

fn read_first_line(path: &str, key: &str) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

fn machine() -> String {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let cpu = read_first_line("/proc/cpuinfo", "model name").unwrap_or_else(|| "?".into());
    let mem = read_first_line("/proc/meminfo", "MemTotal").unwrap_or_else(|| "?".into());
    format!("nproc {nproc}, Linux {kernel}, CPU {cpu}, memory {mem}")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn median_run(mut runs: Vec<Measured>) -> Option<Measured> {
    if runs.is_empty() {
        return None;
    }
    runs.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
    let n = runs.len();
    let mut m = runs.swap_remove(n / 2);
    if n > 1 {
        measure::add_note(&mut m.note, &format!("median of {n}"));
    }
    Some(m)
}

fn run_load_client(cmd: Cmd) -> io::Result<()> {
    if let Cmd::SinkClient { port, bytes, cpu } = cmd {
        return send_file::sink_main(port, bytes, cpu);
    }
    let Cmd::LoadClient {
        port,
        mode,
        client,
        idle,
        conns,
        size,
        warmup_ms,
        duration_ms,
        cpu,
    } = cmd
    else {
        unreachable!("the sink client returned above")
    };
    let mode = match mode.as_str() {
        "echo" => net::Mode::Echo,
        "accept" => net::Mode::Accept,
        "http" => net::Mode::Http,
        m => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown mode {m}"),
            ))
        }
    };
    let client = net::Client::parse(&client).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unknown client {client}"),
        )
    })?;
    let load = net::Load {
        mode,
        client,
        idle,
        conns,
        size,
        warmup: Duration::from_millis(warmup_ms),
        dur: Duration::from_millis(duration_ms),
    };
    net::client_main(port, &load, cpu)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(cmd) = cli.cmd {
        return match run_load_client(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("load-client: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(p) = &cli.chart {
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !ext.eq_ignore_ascii_case("png") && !ext.eq_ignore_ascii_case("svg") {
            eprintln!(
                "compare: --chart {}: give a .png or .svg path (the format follows the extension)",
                p.display()
            );
            return ExitCode::FAILURE;
        }
    }
    if let (Some(from), Some(to)) = (&cli.chart_from, &cli.chart) {
        let drawn = std::fs::read_to_string(from)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", from.display())))
            .and_then(|t| report::records_from_json(&t))
            .and_then(|recs| write_charts(to, &recs, "ringport compare"));
        return match drawn {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("compare: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match suite(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises this process's open-file limit (and so its load clients') to the
/// hard limit: the scale curve's 10,000 connections need more than the usual
/// soft limit of 1,024 on each side.
fn raise_nofile() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // 10,000 connections, twice over if a server's sockets outlive it
    // briefly: ask for 65,536 (a privileged process may raise its hard
    // limit; others get their hard limit).
    const WANT: libc::rlim_t = 65_536;
    // SAFETY: rl is a valid rlimit for the kernel to fill and then read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_max < WANT {
            let more = libc::rlimit {
                rlim_cur: WANT,
                rlim_max: WANT,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &more) == 0 {
                return;
            }
        }
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                eprintln!(
                    "compare: cannot raise the open-file limit: {}",
                    io::Error::last_os_error()
                );
            }
        }
    }
}

fn selected(cli: &Cli) -> io::Result<Vec<&'static str>> {
    let mut out = Vec::new();
    for w in &cli.workload {
        let w = w.trim();
        if w == "all" {
            return Ok(WORKLOADS.to_vec());
        }
        match WORKLOADS.iter().chain(&EXTRA_WORKLOADS).find(|x| **x == w) {
            Some(x) => out.push(*x),
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "unknown workload {w:?} (expected {}, {} or all)",
                        WORKLOADS.join(", "),
                        EXTRA_WORKLOADS.join(", ")
                    ),
                ))
            }
        }
    }
    Ok(out)
}

fn suite(cli: Cli) -> io::Result<()> {
    let started = Instant::now();
    let workloads = selected(&cli)?;
    if cli.no_syscalls {
        usage::COUNT_SYSCALLS.store(false, std::sync::atomic::Ordering::Relaxed);
    }
    if workloads.contains(&"echo-scale") {
        raise_nofile();
    }
    let avail = backends();
    let fio = file::fio_available();
    let mut plan = Plan {
        jobs: Vec::new(),
        missing: Vec::new(),
    };
    for w in &workloads {
        match *w {
            "nop" => plan_nop(&mut plan, &avail),
            "file-randread" => plan_randread(&mut plan, &avail, fio),
            "file-write" => plan_write(&mut plan, &avail),
            http_file::WORKLOAD => http_file::plan(&mut plan, &avail),
            send_file::WORKLOAD => send_file::plan(&mut plan, &avail),
            // --quick keeps the two shapes the targets name.
            "echo" => plan_net(
                &mut plan,
                &avail,
                "echo",
                net::Mode::Echo,
                if cli.quick {
                    &[(50, 128, 0), (500, 128, 0)]
                } else {
                    &[(50, 128, 0), (50, 4096, 0), (500, 128, 0), (500, 4096, 0)]
                },
                &net::Client::ALL,
            ),
            "accept" => plan_net(
                &mut plan,
                &avail,
                "accept",
                net::Mode::Accept,
                &[(64, 0, 0)],
                &net::Client::ALL,
            ),
            // The scale curve: echo 128 B at 1 .. 10,000 connections and 50
            // active among 1,000 idle, under the io_uring client; --quick
            // measures two points of it.
            "echo-scale" => plan_net(
                &mut plan,
                &avail,
                "echo-scale",
                net::Mode::Echo,
                if cli.quick {
                    &[(10, 128, 0), (1000, 128, 0)]
                } else {
                    &[
                        (1, 128, 0),
                        (10, 128, 0),
                        (100, 128, 0),
                        (1000, 128, 0),
                        (10000, 128, 0),
                        (50, 128, 1000),
                    ]
                },
                &[net::Client::Uring],
            ),
            "blocking" => blocking::plan(&mut plan, &avail),
            "http-hello" => plan_http(&mut plan, &[50, 500], &net::Client::ALL),
            _ => {}
        }
        // http-hello names its two ringport backends (uring, epoll) itself.
        for (b, ok) in avail.iter().filter(|_| *w != "http-hello") {
            if let Err(why) = ok {
                let m = if is_net(w) {
                    net_model_of(*b)
                } else {
                    model_of(*b)
                };
                plan.na(w, &format!("ringport/{b}"), m, why.clone());
            }
        }
    }
    if !cli.backend.is_empty() {
        let want: Vec<String> = cli.backend.iter().map(|s| s.to_lowercase()).collect();
        let keep = |w: &str, name: &str| {
            name == baseline_of(w)
                || (is_net(w) && name == FALLBACK_NET_BASE)
                || want.iter().any(|x| name.to_lowercase().contains(x))
        };
        plan.jobs.retain(|j| keep(j.workload, &j.backend));
        plan.missing.retain(|r| keep(r.workload, &r.backend));
    }
    if !cli.variant.is_empty() {
        let wanted = |j: &Job| cli.variant.iter().any(|v| j.variant.contains(v.as_str()));
        let is_base = |j: &Job| j.backend == baseline_of(j.workload);
        // A workload whose baseline runs in another variant (file-randread's
        // pread loop is its qd1 row) keeps that run, so its rows get ratios.
        let has_base = |w: &str| {
            plan.jobs
                .iter()
                .any(|j| j.workload == w && wanted(j) && is_base(j))
        };
        let need_base: Vec<&str> = plan
            .jobs
            .iter()
            .filter(|j| wanted(j) && !has_base(j.workload))
            .map(|j| j.workload)
            .collect();
        plan.jobs
            .retain(|j| wanted(j) || (is_base(j) && need_base.contains(&j.workload)));
        // n/a rows of other variants go too (those of no variant stay).
        plan.missing.retain(|r| {
            r.variant == "-" || cli.variant.iter().any(|v| r.variant.contains(v.as_str()))
        });
    }
    let repeat = cli.repeat.max(1);
    let dur = match cli.duration {
        Some(d) if d > 0.0 => Duration::from_secs_f64(d),
        Some(_) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "--duration must be positive",
            ))
        }
        None => {
            // Network jobs cost more than their window (connects, the
            // client's start, the warm-up): count them 1.8 times.
            let weight: f64 = plan
                .jobs
                .iter()
                .map(|j| if j.net { 1.8 } else { 1.3 })
                .sum::<f64>()
                * repeat as f64;
            let budget = if cli.quick { 20.0 } else { 40.0 };
            Duration::from_secs_f64((budget / weight.max(1.0)).clamp(0.1, 1.0))
        }
    };
    let warmup = (dur / 4).max(Duration::from_millis(50));
    let read_size: u64 = if cli.quick { 64 << 20 } else { 256 << 20 };
    let write_size: u64 = if cli.quick { 8 << 20 } else { 32 << 20 };
    let dir = cli.dir.clone().unwrap_or_else(std::env::temp_dir);
    let machine = machine();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    eprintln!("compare: {machine}");
    eprintln!(
        "compare: {} configurations × {repeat}, {:.2} s each (+{:.2} s warm-up); load average {}",
        plan.jobs.len(),
        dur.as_secs_f64(),
        warmup.as_secs_f64(),
        loadavg()
    );
    let mut ctx = Ctx {
        warmup,
        dur,
        read_file: None,
        write_path: dir.join(format!("ringport-compare-{}-write.dat", std::process::id())),
        write_size,
    };
    // A watchdog: a configuration that runs far past its time (a hung
    // backend) ends the process with a message instead of hanging it. The
    // load client, if any, ends by itself when its own time is up.
    let current: Arc<Mutex<Option<(Instant, String)>>> = Arc::new(Mutex::new(None));
    {
        let current = current.clone();
        // 10,000 connections may take their client a while to open.
        let limit = warmup + dur + Duration::from_secs(60) + net::connect_time(10_000);
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            let g = current.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((t, what)) = g.as_ref() {
                if t.elapsed() > limit {
                    eprintln!(
                        "\ncompare: {what} is still running after {:.0} s: giving up",
                        t.elapsed().as_secs_f64()
                    );
                    std::process::exit(3);
                }
            }
        });
    }
    let tty = io::stderr().is_terminal();
    let total = plan.jobs.len() * repeat;
    let mut done = 0usize;
    let mut records: Vec<Record> = Vec::new();
    for w in &workloads {
        let idx: Vec<usize> = (0..plan.jobs.len())
            .filter(|&i| plan.jobs[i].workload == *w)
            .collect();
        if idx.is_empty() {
            continue;
        }
        if *w == "file-randread" {
            eprintln!(
                "compare: writing a {} MiB test file in {} ...",
                read_size >> 20,
                dir.display()
            );
            ctx.read_file = Some(file::TestFile::create(&dir, "read", read_size)?);
        }
        let mut runs: Vec<Vec<Measured>> = vec![Vec::new(); idx.len()];
        let mut errors: Vec<Option<String>> = vec![None; idx.len()];
        for rep in 0..repeat {
            for (k, &i) in idx.iter().enumerate() {
                let j = &plan.jobs[i];
                done += 1;
                let line = format!(
                    "[{done}/{total}] {} | {} | {}{}{} ({:.0} s)",
                    j.workload,
                    j.variant,
                    j.backend,
                    j.client
                        .map(|c| format!(" | {} client", c.name()))
                        .unwrap_or_default(),
                    if repeat > 1 {
                        format!(" | run {}", rep + 1)
                    } else {
                        String::new()
                    },
                    started.elapsed().as_secs_f64()
                );
                if tty {
                    eprint!("\r\x1b[2K{line}");
                } else {
                    eprintln!("{line}");
                }
                *current.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((Instant::now(), line.clone()));
                let outcome = (j.run)(&ctx);
                *current.lock().unwrap_or_else(|e| e.into_inner()) = None;
                match outcome {
                    Ok(m) => runs[k].push(m),
                    Err(e) => errors[k] = Some(e.to_string()),
                }
            }
        }
        for (k, &i) in idx.iter().enumerate() {
            let j = &plan.jobs[i];
            let runs = std::mem::take(&mut runs[k]);
            let rec = match (median_run(runs), &errors[k]) {
                (Some(mut m), Some(e)) => {
                    m.note = format!("{} (a run failed: {e})", m.note);
                    Record::ok(j.workload, &j.variant, &j.backend, j.model, m)
                }
                (Some(m), None) => Record::ok(j.workload, &j.variant, &j.backend, j.model, m),
                (None, e) => Record::missing(
                    j.workload,
                    &j.variant,
                    &j.backend,
                    j.model,
                    format!("error: {}", e.clone().unwrap_or_default()),
                ),
            };
            let mut rec = rec;
            rec.client = j.client.map_or("-", |c| c.name()).to_string();
            records.push(rec);
        }
        records.extend(plan.missing.iter().filter(|r| r.workload == *w).cloned());
        ctx.read_file = None;
        let _ = std::fs::remove_file(&ctx.write_path);
        if *w == send_file::WORKLOAD {
            send_file::cleanup();
        }
    }
    if tty {
        eprintln!();
    }
    for w in &workloads {
        // Without the peers the network rows are compared with ringport's
        // epoll shim.
        let mut base = baseline_of(w);
        let has = |b: &str| {
            records
                .iter()
                .any(|r| r.workload == *w && r.backend == b && r.result.is_some())
        };
        if !has(base) && is_net(w) && has(FALLBACK_NET_BASE) {
            base = FALLBACK_NET_BASE;
        }
        report::set_ratios(&mut records, w, base);
    }
    report::note_p99_ratios(&mut records, "http-hello");
    // Rows of a workload in order of variant (as planned), n/a rows last.
    let table = report::table(&records);
    println!("{table}");
    println!(
        "{machine}; {:.2} s per configuration (+{:.2} s warm-up), {repeat} run(s) each, median shown; \
         load average at the end {}; total {:.0} s",
        dur.as_secs_f64(),
        warmup.as_secs_f64(),
        loadavg(),
        started.elapsed().as_secs_f64()
    );
    if let Some(p) = &cli.json {
        report::write_json(p, &records, &machine, &command)?;
        eprintln!("compare: wrote {}", p.display());
    }
    if let Some(p) = &cli.chart {
        write_charts(p, &records, &format!("ringport compare — {machine}"))?;
    }
    Ok(())
}

/// The bar chart at `path` (when any row but the scale curve's was
/// measured) and the scale curve beside it (`X-scale.png`) when the records
/// have one; each file written is named on stderr.
fn write_charts(path: &std::path::Path, recs: &[Record], title: &str) -> io::Result<()> {
    let scale = chart::has_scale(recs);
    let bars = recs
        .iter()
        .any(|r| r.result.is_some() && r.workload != "echo-scale");
    if bars || !scale {
        chart::write_bars(path, recs, title)?;
        eprintln!("compare: wrote {}", path.display());
    }
    if scale {
        let sp = if bars {
            chart::scale_path(path)
        } else {
            path.to_path_buf()
        };
        chart::write_scale(&sp, recs, title)?;
        eprintln!("compare: wrote {}", sp.display());
    }
    Ok(())
}
