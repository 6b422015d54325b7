//! The `http-file` workload: static files over HTTP/1.1 keep-alive, 50
//! connections, a 4 KiB and a 1 MiB file. Each server is its own process,
//! pinned to the first allowed CPU: `examples/http_server` (built next to
//! `compare`) on io_uring and on the epoll shim, and nginx (one worker,
//! `sendfile on`, `open_file_cache` on) when it is installed. The same load
//! client drives all of them: wrk (`-t1 -c50 --latency`), pinned to the
//! second CPU. Before timing, one GET must answer 200 with the file's exact
//! length (a root nginx's worker cannot read answers 403 pages that look
//! fast). CPU per op is the server's (nginx: its worker), from
//! `/proc/PID/stat`.

use super::{Model, Plan};
use crate::measure::{allowed_cpus, Measured};
use ringport::Backend;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workload's name.
pub const WORKLOAD: &str = "http-file";
/// The row the others are compared with.
pub const BASELINE: &str = "nginx";

const FILES: [(&str, &str, usize); 2] = [
    ("4 KiB c50", "4k.bin", 4096),
    ("1 MiB c50", "1m.bin", 1 << 20),
];

/// Adds the rows: ringport/uring and ringport/epoll (when they run here),
/// and nginx (or its n/a row).
pub fn plan(p: &mut Plan, avail: &[(Backend, Result<(), String>)]) {
    let wrk = which("wrk");
    let nginx = which("nginx");
    for (variant, name, size) in FILES {
        for b in [Backend::Uring, Backend::Epoll] {
            if !avail.iter().any(|(x, ok)| *x == b && ok.is_ok()) {
                continue;
            }
            let model = if b == Backend::Uring {
                Model::AsyncUring
            } else {
                Model::Multiplexing
            };
            let wrk = wrk.clone();
            p.job(
                WORKLOAD,
                variant,
                &format!("ringport/{b}"),
                model,
                move |c| {
                    let wrk = wrk.as_deref().ok_or_else(no_wrk)?;
                    let server = ringport_server(b)?;
                    drive(server, wrk, name, size, c.warmup, c.dur)
                },
            );
        }
        match (&nginx, &wrk) {
            (Some(ngx), Some(_)) => {
                let (ngx, wrk) = (ngx.clone(), wrk.clone());
                p.job(WORKLOAD, variant, BASELINE, Model::Multiplexing, move |c| {
                    let wrk = wrk.as_deref().ok_or_else(no_wrk)?;
                    let server = nginx_server(&ngx)?;
                    drive(server, wrk, name, size, c.warmup, c.dur)
                });
            }
            (None, _) => p.na(
                WORKLOAD,
                BASELINE,
                Model::Multiplexing,
                "nginx not installed (apt-get install nginx-light)".into(),
            ),
            (_, None) => p.na(
                WORKLOAD,
                BASELINE,
                Model::Multiplexing,
                no_wrk().to_string(),
            ),
        }
    }
}

fn no_wrk() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        "wrk not installed (apt-get install wrk)",
    )
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The served directory: mode 0755, files 0644, made once per run.
fn root() -> io::Result<&'static Path> {
    static ROOT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let r = ROOT.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ringport-http-file-{}", std::process::id()));
        let make = || -> io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
            for (_, name, size) in FILES {
                let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
                let path = dir.join(name);
                std::fs::write(&path, data)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
            }
            Ok(())
        };
        make().map(|_| dir.clone()).map_err(|e| e.to_string())
    });
    r.as_deref()
        .map_err(|e| io::Error::other(format!("http-file root: {e}")))
}

/// The CPUs for the server and for the client.
fn cpus() -> (usize, usize) {
    let c = allowed_cpus();
    let s = c.first().copied().unwrap_or(0);
    (s, c.get(1).copied().unwrap_or(s))
}

/// A server process; stopped when dropped.
struct Server {
    child: Child,
    addr: String,
    /// The process whose CPU is counted (nginx: its worker).
    measured: u32,
    /// Stop with SIGQUIT (nginx's graceful stop, which also ends its
    /// worker) rather than SIGKILL.
    quit: bool,
    _conf: Option<PathBuf>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.quit {
            // SAFETY: kill(2) on the pid of a child we started and have not reaped.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGQUIT) };
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(3) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ringport_server(b: Backend) -> io::Result<Server> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("http_server");
    if !bin.exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} not built (cargo build --release --example http_server)",
                bin.display()
            ),
        ));
    }
    let (cpu, _) = cpus();
    let mut child = Command::new("taskset")
        .args(["-c", &cpu.to_string()])
        .arg(&bin)
        .args(["--addr", "127.0.0.1:0", "--root"])
        .arg(root()?)
        .args(["--backend", b.name()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut line)?;
    let addr = line
        .split_whitespace()
        .find(|w| w.starts_with("127.0.0.1:"))
        .ok_or_else(|| io::Error::other(format!("http_server said {line:?}")))?
        .to_string();
    let measured = child.id();
    Ok(Server {
        child,
        addr,
        measured,
        quit: false,
        _conf: None,
    })
}

fn nginx_server(bin: &Path) -> io::Result<Server> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = root()?;
    let conf = dir.with_extension(format!("nginx-{port}.conf"));
    let text = format!(
        "worker_processes 1;\ndaemon off;\npid {pid};\nerror_log {err};\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n\
         \x20 open_file_cache max=1000 inactive=20s;\n  open_file_cache_valid 1s;\n\
         \x20 keepalive_requests 1000000;\n\
         \x20 server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n",
        pid = conf.with_extension("pid").display(),
        err = conf.with_extension("err").display(),
        root = dir.display(),
    );
    std::fs::write(&conf, text)?;
    let (cpu, _) = cpus();
    let child = Command::new("taskset")
        .args(["-c", &cpu.to_string()])
        .arg(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let addr = format!("127.0.0.1:{port}");
    let mut server = Server {
        measured: child.id(),
        child,
        addr,
        quit: true,
        _conf: Some(conf),
    };
    // Wait for it to listen, then find its worker (the master's child).
    let t0 = Instant::now();
    while TcpStream::connect(&server.addr).is_err() {
        if t0.elapsed() > Duration::from_secs(3) {
            return Err(io::Error::other("nginx did not start listening"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let master = server.child.id();
    let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))?;
    server.measured = children
        .split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| io::Error::other("nginx has no worker"))?;
    Ok(server)
}

/// One GET on a fresh connection: the status and the body's length.
fn check(addr: &str, name: &str) -> io::Result<(u16, usize)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /{name} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let at = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| io::Error::other("no response head"))?;
    let head = String::from_utf8_lossy(&out[..at]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, out.len() - at - 4))
}

/// CPU seconds (user + system) of process `pid` so far.
fn cpu_of(pid: u32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("bad /proc stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz.max(1.0))
}

/// A wrk latency like `1.23ms` in microseconds.
fn wrk_us(v: &str) -> Option<f64> {
    let (num, mul) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|x| x * mul)
}

fn drive(
    server: Server,
    wrk: &Path,
    name: &str,
    size: usize,
    warmup: Duration,
    dur: Duration,
) -> io::Result<Measured> {
    let (status, len) = check(&server.addr, name)?;
    if (status, len) != (200, size) {
        return Err(io::Error::other(format!(
            "GET /{name} answered {status} with {len} bytes, not 200 with {size}"
        )));
    }
    let (_, client_cpu) = cpus();
    let url = format!("http://{}/{name}", server.addr);
    let secs = |d: Duration| format!("{}s", d.as_secs().max(1));
    let wrk_run = |d: Duration, latency: bool| {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", &client_cpu.to_string()])
            .arg(wrk)
            .args(["-t1", "-c50", "-d", &secs(d)]);
        if latency {
            cmd.arg("--latency");
        }
        cmd.arg(&url).stderr(Stdio::null()).output()
    };
    if !warmup.is_zero() {
        wrk_run(warmup, false)?;
    }
    let cpu0 = cpu_of(server.measured)?;
    let out = wrk_run(dur, true)?;
    let cpu = cpu_of(server.measured)? - cpu0;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut requests = None;
    let mut rate = None;
    let mut non2xx = 0u64;
    let (mut p50, mut p99) = (None, None);
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            [n, "requests", "in", ..] => requests = n.parse::<u64>().ok(),
            ["Requests/sec:", r] => rate = r.parse::<f64>().ok(),
            ["Non-2xx", "or", "3xx", "responses:", n] => non2xx = n.parse().unwrap_or(0),
            ["50%", v] => p50 = wrk_us(v),
            ["99%", v] => p99 = wrk_us(v),
            _ => {}
        }
    }
    let (Some(requests), Some(rate)) = (requests, rate) else {
        return Err(io::Error::other(format!(
            "could not read wrk's output: {text}"
        )));
    };
    if non2xx > 0 {
        return Err(io::Error::other(format!(
            "{non2xx} of {requests} answers were not 2xx"
        )));
    }
    let gb = requests as f64 * size as f64 / 1e9;
    Ok(Measured {
        ops_per_sec: rate,
        p50_us: p50,
        p99_us: p99,
        p999_us: None,
        cpu_s_per_mop: Some(cpu / (requests as f64 / 1e6).max(1e-9)),
        note: format!("server CPU {:.3} s/GB; wrk -t1 -c50", cpu / gb.max(1e-9)),
        per_op: None,
    })
}
