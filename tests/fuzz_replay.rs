//! Replays every fuzz corpus and every past crash through its target's
//! driver on stable Rust, so that CI runs them and a target cannot rot
//! (the fuzzers themselves need nightly: `scripts/fuzz.sh`).
//!
//! - `fuzz/corpus/TARGET/*`: the seeds; each must pass.
//! - `fuzz/artifacts/TARGET/*`: inputs that once crashed a target; each
//!   must pass now that its bug is fixed. A file named `open-*` records a
//!   defect found but not fixed yet: it must still fail (so that the fix,
//!   when it comes, renames it and it guards from then on).
//! - The targets in `fuzz/Cargo.toml`, the fuzz target sources and
//!   `rot13d::fuzzing::TARGETS` must name the same set, and each target
//!   has a seed corpus.

use rot13d::fuzzing::{Driver, TARGETS};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Fewest seeds a target's corpus may hold.
const MIN_SEEDS: usize = 10;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir` (none if it does not exist), sorted, without
/// dot-files and READMEs.
fn inputs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    match fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd {
                let p = e?.path();
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if p.is_file() && !name.starts_with('.') && !name.starts_with("README") {
                    files.push(p);
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    files.sort();
    Ok(files)
}

fn replay(driver: Driver, files: &[PathBuf], failures: &mut Vec<String>) -> io::Result<()> {
    for f in files {
        let data = fs::read(f)?;
        let open = f.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("open-"));
        match (driver(&data), open) {
            (Ok(()), false) | (Err(_), true) => {}
            (Err(e), false) => failures.push(format!("{}: {e}", f.display())),
            (Ok(()), true) => {
                failures.push(format!("{}: passes now: rename it without `open-` (its bug is fixed)", f.display()))
            }
        }
    }
    Ok(())
}

#[test]
fn fuzz_replay_every_corpus_and_artifact() -> io::Result<()> {
    let mut failures = Vec::new();
    let mut counts = Vec::new();
    for &(name, driver) in TARGETS {
        let seeds = inputs(&fuzz_dir().join("corpus").join(name))?;
        let artifacts = inputs(&fuzz_dir().join("artifacts").join(name))?;
        if seeds.len() < MIN_SEEDS {
            failures.push(format!("fuzz/corpus/{name}: {} seeds, at least {MIN_SEEDS} wanted", seeds.len()));
        }
        replay(driver, &seeds, &mut failures)?;
        replay(driver, &artifacts, &mut failures)?;
        counts.push(format!("{name}: {} seeds, {} artifacts", seeds.len(), artifacts.len()));
    }
    eprintln!("replayed {}", counts.join("; "));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[test]
fn fuzz_replay_knows_every_target() -> io::Result<()> {
    let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml"))?;
    let table: toml::Table = toml::from_str(&manifest).map_err(io::Error::other)?;
    let mut bins: Vec<String> = table["bin"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b.get("name")?.as_str().map(str::to_owned))
        .collect();
    bins.sort();
    let mut known: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    known.sort();
    assert_eq!(bins, known, "fuzz/Cargo.toml [[bin]] vs rot13d::fuzzing::TARGETS");
    for name in &known {
        let src = fs::read_to_string(fuzz_dir().join("fuzz_targets").join(format!("{name}.rs")))?;
        assert!(
            src.contains(&format!("rot13d::fuzzing::{name}(")),
            "fuzz_targets/{name}.rs must call its shared driver rot13d::fuzzing::{name}"
        );
    }
    Ok(())
}

/// Was an open defect in `EvBuffer`, found by the `evbuffer` target in its
/// first two minutes (`fuzz/artifacts/evbuffer/pullup-write-keeps-readln-cursor`):
/// `pullup` handed out `&mut [u8]` but kept readln's scan cursor, so after
/// a miss a line terminator written through the slice was never found.
/// `pullup` now drops the cursor, as `for_each_mut` does.
#[test]
fn evbuffer_pullup_write_resets_the_readln_cursor() {
    use rot13d::reactor::EvBuffer;
    use rot13d::reactor::evbuffer::Eol;
    let mut b = EvBuffer::new();
    b.add(b"ab");
    assert_eq!(b.readln(Eol::Lf), None);
    b.pullup(2)[0] = b'\n';
    assert_eq!(b.readln(Eol::Lf), Some(vec![]), "the LF written through pullup starts the buffer");
    assert_eq!(b.readln(Eol::Lf), None);
}
