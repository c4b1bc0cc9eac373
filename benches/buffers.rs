//! Buffer-layer benchmarks: ROT13, framing, readln, gathered writes, and a
//! read → frame → write pipeline over a socketpair.
//!
//! Run: `cargo bench --bench buffers -- --warm-up-time 1 --measurement-time 3`
//!
//! Time is the benchmark thread's CPU time (user + system,
//! `CLOCK_THREAD_CPUTIME_ID`), not wall time: on a shared machine wall time
//! mostly measures the neighbours. The socket benchmarks run both ends in
//! this one thread, so their figure is the CPU cost of client and server
//! together.

use std::hint::black_box;
use std::os::fd::{AsRawFd, OwnedFd};

use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rot13d::protocol::{DEFAULT_MAX_LINE, Framer};
use rot13d::reactor::evbuffer::{Eol, EvBuffer};
use rot13d::rot13::{rot13_in_place, rot13_in_place_count_lf, rot13_into};
use rot13d::sys;

/// Thread CPU time as a criterion measurement.
struct CpuTime;

/// Wall time's formatter, which prints durations and throughputs.
static WALL: WallTime = WallTime;

impl Measurement for CpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        sys::thread_cpu_time()
    }

    fn end(&self, start: Duration) -> Duration {
        sys::thread_cpu_time().saturating_sub(start)
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, d: &Duration) -> f64 {
        d.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        WALL.formatter()
    }
}

type C = Criterion<CpuTime>;

/// `total` bytes of lines of `line` bytes each (LF included), mixed text.
fn lines(line: usize, total: usize) -> Vec<u8> {
    let text = b"The Quick Brown Fox Jumps Over The Lazy Dog 0123456789, hello; WORLD! ";
    let mut v = Vec::with_capacity(total);
    let mut i = 0;
    while v.len() < total {
        for _ in 0..line - 1 {
            v.push(text[i % text.len()]);
            i += 1;
        }
        v.push(b'\n');
    }
    v.truncate(total);
    v
}

fn bench_rot13(c: &mut C) {
    let mut g = c.benchmark_group("rot13");
    let mut buf = lines(64, 64 * 1024);
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_function("in_place_64KiB", |b| b.iter(|| rot13_in_place(black_box(&mut buf))));
    g.bench_function("in_place_count_lf_64KiB", |b| b.iter(|| rot13_in_place_count_lf(black_box(&mut buf))));
    let src = buf.clone();
    let mut dst = Vec::with_capacity(src.len());
    g.bench_function("into_64KiB", |b| {
        b.iter(|| {
            dst.clear();
            rot13_into(black_box(&src), &mut dst);
        })
    });
    g.finish();
}

fn bench_framing(c: &mut C) {
    let mut g = c.benchmark_group("framing");
    for line in [64usize, 1024] {
        let data = lines(line, 64 * 1024);
        let nlines = data.iter().filter(|&&b| b == b'\n').count() as u64;
        let mut input = EvBuffer::new();
        let mut output = EvBuffer::new();
        let mut framer = Framer::new(DEFAULT_MAX_LINE);
        // The `add` (a 64 KiB memcpy) stands in for the read.
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(format!("process_{line}B_lines_bytes"), |b| {
            b.iter(|| {
                input.add(&data);
                framer.process(&mut input, &mut output);
                output.drain(usize::MAX);
            })
        });
        g.throughput(Throughput::Elements(nlines));
        g.bench_function(format!("process_{line}B_lines_lines"), |b| {
            b.iter(|| {
                input.add(&data);
                framer.process(&mut input, &mut output);
                output.drain(usize::MAX);
            })
        });
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(format!("readln_lf_alloc_{line}B_lines"), |b| {
            b.iter(|| {
                input.add(&data);
                while let Some(mut l) = input.readln(Eol::Lf) {
                    rot13_in_place(&mut l);
                    output.add(&l);
                    output.add(b"\n");
                }
                output.drain(usize::MAX);
            })
        });
        g.bench_function(format!("readln_with_lf_{line}B_lines"), |b| {
            b.iter(|| {
                input.add(&data);
                while input
                    .readln_with(Eol::Lf, |l| {
                        output.add_with(l, rot13_in_place);
                        output.add(b"\n");
                    })
                    .is_some()
                {}
                output.drain(usize::MAX);
            })
        });
        input.drain(usize::MAX);
    }
    g.finish();
}

/// Reads everything pending on `fd` into `scratch`.
fn drain_fd(fd: &OwnedFd, scratch: &mut [u8], mut want: usize) {
    while want > 0 {
        match sys::read(fd.as_raw_fd(), scratch) {
            Ok(n) => want -= n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("drain: {e}"),
        }
    }
}

fn bench_writes(c: &mut C) {
    let mut g = c.benchmark_group("write_small_chunks");
    let (a, b) = sys::socketpair().expect("socketpair");
    let mut scratch = vec![0u8; 256 * 1024];
    const CHUNKS: usize = 256;
    const SIZE: usize = 64;
    let make = || {
        let mut out = EvBuffer::new();
        for i in 0..CHUNKS {
            out.add_vec(vec![b'a' + (i % 26) as u8; SIZE]);
        }
        out
    };
    g.throughput(Throughput::Bytes((CHUNKS * SIZE) as u64));
    g.bench_function("writev_256x64B", |bch| {
        bch.iter_batched(
            make,
            |mut out| {
                while !out.is_empty() {
                    out.write_to(a.as_raw_fd()).expect("write_to");
                }
                drain_fd(&b, &mut scratch, CHUNKS * SIZE);
                out
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("write_each_256x64B", |bch| {
        bch.iter_batched(
            make,
            |out| {
                for s in out.chunks() {
                    sys::send(a.as_raw_fd(), s).expect("send");
                }
                drain_fd(&b, &mut scratch, CHUNKS * SIZE);
                out
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn bench_pipeline(c: &mut C) {
    let mut g = c.benchmark_group("pipeline");
    let data = lines(64, 256 * 1024);
    let mut scratch = vec![0u8; 256 * 1024];
    g.throughput(Throughput::Bytes(data.len() as u64));
    for (read_size, shrink) in
        [(4 * 1024, false), (16 * 1024, false), (32 * 1024, false), (64 * 1024, false), (64 * 1024, true)]
    {
        let (srv, cli) = sys::socketpair().expect("socketpair");
        let _ = sys::setsockopt_int(srv.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 1 << 20);
        let _ = sys::setsockopt_int(cli.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, 1 << 20);
        let mut input = EvBuffer::new();
        input.set_read_size(read_size);
        let mut output = EvBuffer::new();
        let mut framer = Framer::new(DEFAULT_MAX_LINE);
        let name = format!("read{}KiB{}", read_size / 1024, if shrink { "_shrink_when_idle" } else { "" });
        g.bench_function(name, |b| {
            b.iter(|| {
                // Client sends 256 KiB of 64-byte lines; server reads until
                // EAGAIN, frames, writes; client drains the responses.
                let mut sent = 0;
                let mut echoed = 0;
                while echoed < data.len() {
                    if sent < data.len()
                        && let Ok(n) = sys::write(cli.as_raw_fd(), &data[sent..])
                    {
                        sent += n;
                    }
                    while let Ok(n) = input.read_from(srv.as_raw_fd(), usize::MAX) {
                        if n == 0 {
                            break;
                        }
                        framer.process(&mut input, &mut output);
                    }
                    if shrink {
                        // What a bufferevent does when the socket is drained.
                        input.shrink();
                    }
                    while !output.is_empty() {
                        if output.write_to(srv.as_raw_fd()).is_err() {
                            break;
                        }
                    }
                    if shrink && output.is_empty() {
                        output.shrink();
                    }
                    if let Ok(n) = sys::read(cli.as_raw_fd(), &mut scratch) {
                        echoed += n;
                    }
                }
            })
        });
    }
    // Baseline: the same traffic echoed with one plain 64 KiB buffer, no
    // framing and no ROT13: what a bare read/write loop costs.
    let (srv, cli) = sys::socketpair().expect("socketpair");
    let _ = sys::setsockopt_int(srv.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 1 << 20);
    let _ = sys::setsockopt_int(cli.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, 1 << 20);
    let mut buf = vec![0u8; 64 * 1024];
    g.bench_function("bare_echo_read64KiB", |b| {
        b.iter(|| {
            let mut sent = 0;
            let mut echoed = 0;
            while echoed < data.len() {
                if sent < data.len()
                    && let Ok(n) = sys::write(cli.as_raw_fd(), &data[sent..])
                {
                    sent += n;
                }
                while let Ok(n) = sys::read(srv.as_raw_fd(), &mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut at = 0;
                    while at < n {
                        match sys::write(srv.as_raw_fd(), &buf[at..n]) {
                            Ok(w) => at += w,
                            Err(_) => {
                                // Peer full: drain it, as the client does.
                                if let Ok(r) = sys::read(cli.as_raw_fd(), &mut scratch) {
                                    echoed += r;
                                }
                            }
                        }
                    }
                }
                if let Ok(n) = sys::read(cli.as_raw_fd(), &mut scratch) {
                    echoed += n;
                }
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(CpuTime);
    targets = bench_rot13, bench_framing, bench_writes, bench_pipeline
}
criterion_main!(benches);
