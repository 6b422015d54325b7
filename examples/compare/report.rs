//! Records, the table and the JSON file (the charts are in `chart.rs`).

use crate::measure::Measured;
use std::fmt::Write as _;
use std::io;
use std::path::Path;

/// The I/O model a row stands for: the five Unix models of the classic
/// taxonomy (the asynchronous one in its two Unix forms, POSIX aio and
/// io_uring), plus IOCP: seven in all.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum Model {
    /// Blocking syscalls: on this thread, one thread per connection, or a
    /// pool of threads each blocked in one.
    Blocking,
    /// Non-blocking sockets polled in a loop, with no poller.
    Nonblocking,
    /// I/O multiplexing: select, poll, epoll (ringport's shim, tokio, monoio
    /// legacy).
    Multiplexing,
    /// Signal-driven I/O (`O_ASYNC`, SIGIO).
    SignalDriven,
    /// Asynchronous I/O with POSIX aio (`aio_read`/`aio_write`).
    AsyncAio,
    /// Asynchronous I/O with io_uring.
    AsyncUring,
    /// ringport's `CompletionPort` (IOCP semantics) with worker threads.
    Iocp,
}

impl Model {
    /// Every model, in the taxonomy's order.
    pub const ALL: [Model; 7] = [
        Model::Blocking,
        Model::Nonblocking,
        Model::Multiplexing,
        Model::SignalDriven,
        Model::AsyncAio,
        Model::AsyncUring,
        Model::Iocp,
    ];
    /// The name in the table and the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Model::Blocking => "blocking",
            Model::Nonblocking => "nonblocking",
            Model::Multiplexing => "multiplexing",
            Model::SignalDriven => "signal-driven",
            Model::AsyncAio => "asynchronous (aio)",
            Model::AsyncUring => "asynchronous (io_uring)",
            Model::Iocp => "IOCP",
        }
    }
}

/// One row: a (workload, variant, backend or peer) and what it measured.
#[derive(Clone, Debug)]
pub struct Record {
    pub workload: &'static str,
    /// E.g. `batch 32`, `qd32`, `c500 128B`.
    pub variant: String,
    /// A ringport backend (`ringport-uring (driver)`...) or a peer (`tokio`...).
    pub backend: String,
    pub model: Model,
    /// The load client of a network row (`uring`, `epoll`), else `-`.
    pub client: String,
    /// None when not run: then `note` says why (`n/a: ...` or `error: ...`).
    pub result: Option<Measured>,
    pub note: String,
    /// Throughput divided by the baseline row's, when both exist.
    pub ratio: Option<f64>,
    /// The name of the row this one is compared with.
    pub baseline: String,
    /// Whether this row is the baseline of its group.
    pub is_baseline: bool,
}

impl Record {
    pub fn ok(
        workload: &'static str,
        variant: &str,
        backend: &str,
        model: Model,
        m: Measured,
    ) -> Record {
        let note = m.note.clone();
        Record {
            workload,
            variant: variant.to_string(),
            backend: backend.to_string(),
            model,
            client: "-".to_string(),
            result: Some(m),
            note,
            ratio: None,
            baseline: String::new(),
            is_baseline: false,
        }
    }
    pub fn missing(
        workload: &'static str,
        variant: &str,
        backend: &str,
        model: Model,
        note: String,
    ) -> Record {
        Record {
            workload,
            variant: variant.to_string(),
            backend: backend.to_string(),
            model,
            client: "-".to_string(),
            result: None,
            note,
            ratio: None,
            baseline: String::new(),
            is_baseline: false,
        }
    }
    pub fn ops(&self) -> Option<f64> {
        self.result.as_ref().map(|m| m.ops_per_sec)
    }
}

/// Fills `ratio` and `baseline`: within each (workload, variant, client),
/// every row is divided by the row named `base` under the same client (or,
/// for rows like the pread loop measured once, by the workload's only such
/// row).
pub fn set_ratios(recs: &mut [Record], workload: &str, base: &str) {
    let groups: Vec<(String, String)> = {
        let mut v: Vec<(String, String)> = Vec::new();
        for r in recs.iter().filter(|r| r.workload == workload) {
            let g = (r.variant.clone(), r.client.clone());
            if !v.contains(&g) {
                v.push(g);
            }
        }
        v
    };
    let any_base = recs
        .iter()
        .find(|r| r.workload == workload && r.backend == base && r.result.is_some())
        .and_then(|r| r.ops());
    for (g, client) in groups {
        let base_ops = recs
            .iter()
            .find(|r| {
                r.workload == workload && r.variant == g && r.client == client && r.backend == base
            })
            .and_then(|r| r.ops())
            .or(if client == "-" { any_base } else { None });
        for r in recs
            .iter_mut()
            .filter(|r| r.workload == workload && r.variant == g && r.client == client)
        {
            r.baseline = base.to_string();
            r.is_baseline = r.backend == base;
            r.ratio = match (r.ops(), base_ops) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            };
        }
    }
}

/// Adds `p99 X × baseline's` to the note of every measured row of
/// `workload` (its latency target is a p99 ratio), from the ratios' baseline
/// in the same variant and client.
pub fn note_p99_ratios(recs: &mut [Record], workload: &str) {
    let p99_of = |recs: &[Record], r: &Record| {
        recs.iter()
            .find(|b| {
                b.workload == r.workload
                    && b.variant == r.variant
                    && b.client == r.client
                    && b.backend == r.baseline
            })
            .and_then(|b| b.result.as_ref()?.p99_us)
    };
    let notes: Vec<Option<String>> = recs
        .iter()
        .map(|r| {
            if r.workload != workload || r.is_baseline {
                return None;
            }
            let mine = r.result.as_ref()?.p99_us?;
            let base = p99_of(recs, r)?;
            (base > 0.0).then(|| format!("p99 {:.2} × the baseline's", mine / base))
        })
        .collect();
    for (r, n) in recs.iter_mut().zip(notes) {
        if let Some(n) = n {
            crate::measure::add_note(&mut r.note, &n);
        }
    }
}

fn fmt_ops(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// A per-op count or time: three significant digits, `0` for zero.
fn fmt_small(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 0.01 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// The `n` largest kinds, e.g. `read 1.00, write 1.00, epoll_wait 0.12`.
fn kinds_text(kinds: &[(&str, f64)], n: usize) -> String {
    if kinds.is_empty() {
        return "-".into();
    }
    kinds
        .iter()
        .take(n)
        .map(|(k, v)| format!("{k} {}", fmt_small(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn fmt_us(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v < 10.0 => format!("{v:.2}"),
        Some(v) if v < 1000.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.0}"),
    }
}

/// The table as Markdown (what the terminal shows and BENCHMARKS.md holds).
pub fn table(recs: &[Record]) -> String {
    // (heading, right-aligned)
    let head: &[(&str, bool)] = &[
        ("workload", false),
        ("variant", false),
        ("backend / peer", false),
        ("model", false),
        ("client", false),
        ("ops/s", true),
        ("p50 µs", true),
        ("p99 µs", true),
        ("p999 µs", true),
        ("CPU s/Mop", true),
        ("user µs/op", true),
        ("sys µs/op", true),
        ("vcsw/op", true),
        ("ivcsw/op", true),
        ("syscalls/op", true),
        ("syscalls by kind, per op", false),
        ("ratio", false),
        ("note", false),
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for r in recs {
        let (ops, p50, p99, p999, cpu) = match &r.result {
            Some(m) => (
                fmt_ops(m.ops_per_sec),
                fmt_us(m.p50_us),
                fmt_us(m.p99_us),
                fmt_us(m.p999_us),
                m.cpu_s_per_mop
                    .map(|c| format!("{c:.2}"))
                    .unwrap_or_else(|| "-".into()),
            ),
            None => Default::default(),
        };
        let ratio = match (r.ratio, r.is_baseline) {
            (_, true) => "1.00 (base)".to_string(),
            (Some(x), _) => format!("{x:.2}"),
            (None, _) => "-".into(),
        };
        let vs = if r.baseline.is_empty() || r.is_baseline || r.result.is_none() {
            String::new()
        } else {
            r.baseline.clone()
        };
        let mut note = r.note.clone();
        if r.result.is_none() && note.is_empty() {
            note = "n/a".into();
        }
        let u = r.result.as_ref().and_then(|m| m.per_op.as_ref());
        let f = |v: Option<f64>| v.map(fmt_small).unwrap_or_else(|| "-".into());
        let usage = [
            f(u.map(|u| u.user_us)),
            f(u.map(|u| u.sys_us)),
            f(u.map(|u| u.vcsw)),
            f(u.map(|u| u.ivcsw)),
            f(u.and_then(|u| u.syscalls)),
            u.map(|u| kinds_text(&u.by_kind, 4))
                .unwrap_or_else(|| "-".into()),
        ];
        if let Some(u) = u {
            if !u.syscalls_note.is_empty() {
                if !note.is_empty() {
                    note.push_str("; ");
                }
                note.push_str(&u.syscalls_note);
            }
        }
        rows.push(
            vec![
                r.workload.to_string(),
                r.variant.clone(),
                r.backend.clone(),
                r.model.name().to_string(),
                r.client.clone(),
                ops,
                p50,
                p99,
                p999,
                cpu,
            ]
            .into_iter()
            .chain(usage)
            .chain([
                if vs.is_empty() {
                    ratio
                } else {
                    format!("{ratio} × {vs}")
                },
                note,
            ])
            .collect(),
        );
    }
    let mut w: Vec<usize> = head.iter().map(|h| h.0.chars().count()).collect();
    for row in &rows {
        for (i, c) in row.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::from("|");
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i] - c.chars().count();
            if head[i].1 {
                let _ = write!(s, " {}{} |", " ".repeat(pad), c);
            } else {
                let _ = write!(s, " {}{} |", c, " ".repeat(pad));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&head.iter().map(|h| h.0.to_string()).collect::<Vec<_>>());
    out.push('|');
    for (i, wi) in w.iter().enumerate() {
        if head[i].1 {
            let _ = write!(out, " {}: |", "-".repeat(wi - 1));
        } else {
            let _ = write!(out, " {} |", "-".repeat(*wi));
        }
    }
    out.push('\n');
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.4}"),
        _ => "null".into(),
    }
}

/// Writes `{"machine": ..., "command": ..., "records": [...]}`.
pub fn write_json(path: &Path, recs: &[Record], machine: &str, command: &str) -> io::Result<()> {
    let mut s = String::from("{\n");
    let _ = writeln!(s, "  \"machine\": {},", json_str(machine));
    let _ = writeln!(s, "  \"command\": {},", json_str(command));
    s.push_str("  \"records\": [\n");
    for (i, r) in recs.iter().enumerate() {
        let m = r.result.as_ref();
        let u = m.and_then(|m| m.per_op.as_ref());
        let _ = write!(
            s,
            "    {{\"workload\": {}, \"variant\": {}, \"backend\": {}, \"model\": {}, \
             \"client\": {}, \"ops_per_sec\": {}, \"p50_us\": {}, \"p99_us\": {}, \"p999_us\": {}, \
             \"cpu_s_per_mop\": {}, \"user_us_per_op\": {}, \"sys_us_per_op\": {}, \
             \"vcsw_per_op\": {}, \"ivcsw_per_op\": {}, \"csw_per_op\": {}, \"syscalls_per_op\": {}, \
             \"syscalls_by_kind\": {}, \"syscalls_note\": {}, \"ratio\": {}, \"baseline\": {}, \"note\": {}}}",
            json_str(r.workload),
            json_str(&r.variant),
            json_str(&r.backend),
            json_str(r.model.name()),
            json_str(&r.client),
            json_num(m.map(|m| m.ops_per_sec)),
            json_num(m.and_then(|m| m.p50_us)),
            json_num(m.and_then(|m| m.p99_us)),
            json_num(m.and_then(|m| m.p999_us)),
            json_num(m.and_then(|m| m.cpu_s_per_mop)),
            json_num(u.map(|u| u.user_us)),
            json_num(u.map(|u| u.sys_us)),
            json_num(u.map(|u| u.vcsw)),
            json_num(u.map(|u| u.ivcsw)),
            json_num(u.map(|u| u.vcsw + u.ivcsw)),
            json_num(u.and_then(|u| u.syscalls)),
            match u {
                Some(u) => format!(
                    "{{{}}}",
                    u.by_kind
                        .iter()
                        .map(|(k, v)| format!("{}: {}", json_str(k), json_num(Some(*v))))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => "null".into(),
            },
            json_str(u.map_or(
                if m.is_some() {
                    "not measured for this row"
                } else {
                    ""
                },
                |u| u.syscalls_note.as_str()
            )),
            json_num(r.ratio),
            json_str(&r.baseline),
            json_str(&r.note),
        );
        s.push_str(if i + 1 < recs.len() { ",\n" } else { "\n" });
    }
    s.push_str("  ]\n}\n");
    std::fs::write(path, s)
}

/// The records of a file written by [`write_json`] (enough of them to draw
/// the chart: names, model, client, throughput, ratio, baseline).
pub fn records_from_json(text: &str) -> io::Result<Vec<Record>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("not JSON: {e}")))?;
    let recs = v
        .get("records")
        .and_then(|r| r.as_array())
        .ok_or_else(|| bad("no \"records\" array"))?;
    let mut out = Vec::new();
    for (i, r) in recs.iter().enumerate() {
        let s = |k: &str| -> io::Result<String> {
            r.get(k)
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .ok_or_else(|| bad(&format!("record {i} has no \"{k}\"")))
        };
        let num = |k: &str| r.get(k).and_then(|x| x.as_f64());
        let workload: &'static str = Box::leak(s("workload")?.into_boxed_str());
        let model_name = s("model")?;
        let model = Model::ALL
            .into_iter()
            .find(|m| m.name() == model_name)
            .ok_or_else(|| bad(&format!("record {i}: unknown model {model_name:?}")))?;
        let note = s("note").unwrap_or_default();
        let mut rec = match num("ops_per_sec") {
            Some(ops) => Record::ok(
                workload,
                &s("variant")?,
                &s("backend")?,
                model,
                Measured {
                    ops_per_sec: ops,
                    p50_us: num("p50_us"),
                    p99_us: num("p99_us"),
                    p999_us: num("p999_us"),
                    cpu_s_per_mop: num("cpu_s_per_mop"),
                    note,
                    per_op: None,
                },
            ),
            None => Record::missing(workload, &s("variant")?, &s("backend")?, model, note),
        };
        rec.client = s("client").unwrap_or_else(|_| "-".into());
        rec.ratio = num("ratio");
        rec.baseline = s("baseline").unwrap_or_default();
        rec.is_baseline = !rec.baseline.is_empty() && rec.baseline == rec.backend;
        out.push(rec);
    }
    Ok(out)
}
