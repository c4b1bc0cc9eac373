//! Buffer-layer benchmarks: ROT13, framing, readln, gathered writes, and a
//! read → frame → write pipeline over a socketpair.
//!
//! Run: `cargo bench --bench buffers -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::os::fd::{AsRawFd, OwnedFd};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rot13d::protocol::{DEFAULT_MAX_LINE, Framer};
use rot13d::reactor::evbuffer::{Eol, EvBuffer};
use rot13d::rot13::{rot13_in_place, rot13_into};
use rot13d::sys;

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

fn bench_rot13(c: &mut Criterion) {
    let mut g = c.benchmark_group("rot13");
    let mut buf = lines(64, 64 * 1024);
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_function("in_place_64KiB", |b| b.iter(|| rot13_in_place(black_box(&mut buf))));
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

fn bench_framing(c: &mut Criterion) {
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

fn bench_writes(c: &mut Criterion) {
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

fn bench_pipeline(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline");
    let data = lines(64, 256 * 1024);
    let mut scratch = vec![0u8; 256 * 1024];
    g.throughput(Throughput::Bytes(data.len() as u64));
    for read_size in [4 * 1024, 16 * 1024, 64 * 1024] {
        let (srv, cli) = sys::socketpair().expect("socketpair");
        let _ = sys::setsockopt_int(srv.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 1 << 20);
        let _ = sys::setsockopt_int(cli.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, 1 << 20);
        let mut input = EvBuffer::new();
        input.set_read_size(read_size);
        let mut output = EvBuffer::new();
        let mut framer = Framer::new(DEFAULT_MAX_LINE);
        g.bench_function(format!("read_process_write_read{}KiB", read_size / 1024), |b| {
            b.iter(|| {
                // Client sends 256 KiB in pieces; server reads, frames,
                // writes; client drains the responses.
                let mut sent = 0;
                let mut echoed = 0;
                while echoed < data.len() {
                    if sent < data.len()
                        && let Ok(n) = sys::write(cli.as_raw_fd(), &data[sent..])
                    {
                        sent += n;
                    }
                    loop {
                        match input.read_from(srv.as_raw_fd(), usize::MAX) {
                            Ok(0) => break,
                            Ok(_) => {
                                framer.process(&mut input, &mut output);
                            }
                            Err(_) => break,
                        }
                    }
                    while !output.is_empty() {
                        if output.write_to(srv.as_raw_fd()).is_err() {
                            break;
                        }
                    }
                    if let Ok(n) = sys::read(cli.as_raw_fd(), &mut scratch) {
                        echoed += n;
                    }
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_rot13, bench_framing, bench_writes, bench_pipeline);
criterion_main!(benches);
