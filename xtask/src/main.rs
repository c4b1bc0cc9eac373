//! `cargo xtask man [DIR]`: writes the man pages rot13d(8) and
//! rot13d-probe(8) into DIR (default `target/man`), generated from the clap
//! definition of the command line, so that the pages and `--help` cannot
//! drift apart.
//!
//! clap_mangen renders the name, synopsis, description, options and
//! subcommands. The blocks of `--help`'s closing text (`Exit status:`,
//! `Signals (...):`, `Environment:`, each a list of `  TERM  text` entries)
//! become the sections EXIT STATUS, SIGNALS and ENVIRONMENT; clap_mangen
//! alone would print them as one run-together paragraph. FILES and SEE ALSO
//! are the package's facts (where the Debian package puts things) and live
//! here.

use clap::CommandFactory;
use roff::{Roff, bold, italic, roman};
use std::path::PathBuf;
use std::process::ExitCode;

/// The manual section: system administration commands and daemons.
const SECTION: &str = "8";

/// Installed files, as `Cargo.toml`'s `[package.metadata.deb]` puts them.
const FILES: &[(&str, &str)] = &[
    (
        "/etc/rot13d/rot13d.toml",
        "The configuration read by rot13d.service (a conffile): every key with its default and meaning. \
         `rot13d --check-config /etc/rot13d/rot13d.toml` validates it; SIGHUP re-reads it.",
    ),
    (
        "/usr/lib/systemd/system/rot13d.service",
        "The hardened service unit (Type=notify, a dynamic user, no capabilities, watchdog). \
         Reload with `systemctl reload rot13d`.",
    ),
    (
        "/usr/lib/systemd/system/rot13d.socket",
        "Socket activation on port 40713 (not enabled by the package): the passed socket, named rot13, replaces \
         [server] listen.",
    ),
    (
        "/usr/lib/systemd/system/rot13d-admin.socket",
        "Socket activation of the admin endpoint on 127.0.0.1:9100 (not enabled by the package): the passed socket, \
         named admin (LISTEN_FDNAMES), replaces [admin] listen.",
    ),
    ("/usr/share/doc/rot13d/", "README.md (protocol, configuration, signals, systemd, containers) and the changelog."),
];

const SEE_ALSO: &[(&str, &str)] = &[
    ("rot13d-probe", "8"),
    ("systemd.service", "5"),
    ("systemd.socket", "5"),
    ("systemd-analyze", "1"),
    ("sysexits.h", "3head"),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["man"] => write_man(PathBuf::from("target/man")),
        ["man", dir] => write_man(PathBuf::from(dir)),
        _ => {
            eprintln!("usage: cargo xtask man [DIR]   (writes DIR/rot13d.8, DIR/rot13d-probe.8; default target/man)");
            ExitCode::from(64)
        }
    }
}

fn write_man(dir: PathBuf) -> ExitCode {
    let result = std::fs::create_dir_all(&dir).and_then(|()| {
        for (name, text) in pages() {
            std::fs::write(dir.join(&name), text)?;
            println!("{}", dir.join(&name).display());
        }
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask man: {}: {e}", dir.display());
            ExitCode::from(74)
        }
    }
}

/// Every page: (file name, roff text).
fn pages() -> Vec<(String, Vec<u8>)> {
    let mut cmd = rot13d::daemon::cli::Args::command();
    cmd.build();
    let version = cmd.get_version().unwrap_or("?").to_owned();
    let mut pages = vec![page(&cmd, &version, true)];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages.push(page(sub, &version, false));
    }
    pages
}

/// One page of `cmd` (of rot13d `version`); `main` adds FILES and SEE ALSO.
fn page(cmd: &clap::Command, version: &str, main: bool) -> (String, Vec<u8>) {
    let man = clap_mangen::Man::new(cmd.clone())
        .section(SECTION)
        .manual("System Administration")
        .source(format!("rot13d {version}"));
    let mut out = Vec::new();
    let mut render = || -> std::io::Result<()> {
        man.render_title(&mut out)?;
        man.render_name_section(&mut out)?;
        man.render_synopsis_section(&mut out)?;
        man.render_description_section(&mut out)?;
        man.render_options_section(&mut out)?;
        if cmd.has_subcommands() {
            man.render_subcommands_section(&mut out)?;
        }
        let mut roff = Roff::new();
        let closing = cmd.get_after_long_help().map(|t| t.to_string()).unwrap_or_default();
        for section in help_sections(&closing) {
            render_section(&mut roff, &section);
        }
        if main {
            render_files(&mut roff);
            render_see_also(&mut roff);
        } else {
            roff.control("SH", ["SEE ALSO"]);
            roff.text([bold("rot13d"), roman(format!("({SECTION})"))]);
        }
        roff.to_writer(&mut out)?;
        if cmd.get_version().is_some() {
            man.render_version_section(&mut out)?;
        }
        Ok(())
    };
    // Writing to a Vec cannot fail.
    render().expect("render into memory");
    (man.get_filename(), out)
}

/// A block of `--help`'s closing text: `Heading (note):` then entries.
#[derive(Debug, Default, PartialEq, Eq)]
struct Section {
    /// The man section name: `EXIT STATUS`.
    name: String,
    /// The parenthesised note of the heading, as an opening sentence.
    note: Option<String>,
    /// `(term, text)` pairs, continuation lines joined.
    entries: Vec<(String, String)>,
}

/// Splits `--help`'s closing text into its headed blocks. A heading is a
/// line at column 0 ending in `:`; an entry starts two spaces in, its term
/// ending at the first run of two spaces; deeper-indented lines continue
/// the entry above.
fn help_sections(text: &str) -> Vec<Section> {
    let mut sections: Vec<Section> = Vec::new();
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let body = line.trim();
        if body.is_empty() {
            continue;
        }
        if indent == 0 {
            let heading = body.trim_end_matches(':');
            let (name, note) = match heading.split_once(" (") {
                Some((name, note)) => (name, Some(sentence(note.trim_end_matches(')')))),
                None => (heading, None),
            };
            sections.push(Section { name: name.to_uppercase(), note, entries: Vec::new() });
            continue;
        }
        let Some(section) = sections.last_mut() else { continue };
        match section.entries.last_mut() {
            Some((_, text)) if indent > 2 => {
                if !text.is_empty() {
                    text.push(' ');
                }
                text.push_str(body);
            }
            _ => {
                let (term, text) = body.split_once("  ").unwrap_or((body, ""));
                section.entries.push((term.trim().to_owned(), text.trim().to_owned()));
            }
        }
    }
    sections
}

/// `to the master process` -> `To the master process.`
fn sentence(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect::<String>() + ".").unwrap_or_default()
}

fn render_section(roff: &mut Roff, s: &Section) {
    roff.control("SH", [s.name.as_str()]);
    if let Some(note) = &s.note {
        roff.text([roman(note.as_str())]);
    }
    for (term, text) in &s.entries {
        roff.control("TP", []);
        roff.text([bold(term.as_str())]);
        roff.text([roman(text.as_str())]);
    }
}

fn render_files(roff: &mut Roff) {
    roff.control("SH", ["FILES"]);
    for (path, what) in FILES {
        roff.control("TP", []);
        roff.text([italic(*path)]);
        roff.text([roman(*what)]);
    }
}

fn render_see_also(roff: &mut Roff) {
    roff.control("SH", ["SEE ALSO"]);
    let mut line = Vec::new();
    for (i, (name, section)) in SEE_ALSO.iter().enumerate() {
        if i > 0 {
            line.push(roman(", "));
        }
        line.push(bold(*name));
        line.push(roman(format!("({section})")));
    }
    roff.text(line);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_text(name: &str) -> String {
        let pages = pages();
        let (_, text) = pages.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no page {name}"));
        String::from_utf8_lossy(text).into_owned()
    }

    #[test]
    fn help_blocks_become_sections() {
        let s = help_sections(
            "Exit status:\n  0   fine\n  64  usage: a\n      b\n\nSignals (to the master):\n  SIGHUP  reload\n  X_Y, Z\n       both\n",
        );
        assert_eq!(
            s,
            vec![
                Section {
                    name: "EXIT STATUS".into(),
                    note: None,
                    entries: vec![("0".into(), "fine".into()), ("64".into(), "usage: a b".into())]
                },
                Section {
                    name: "SIGNALS".into(),
                    note: Some("To the master.".into()),
                    entries: vec![("SIGHUP".into(), "reload".into()), ("X_Y, Z".into(), "both".into())]
                },
            ]
        );
    }

    #[test]
    fn rot13d_help_has_exit_status_signals_and_environment() {
        let mut cmd = rot13d::daemon::cli::Args::command();
        cmd.build();
        let text = cmd.get_after_long_help().map(|t| t.to_string()).unwrap_or_default();
        let sections = help_sections(&text);
        let names: Vec<&str> = sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["EXIT STATUS", "SIGNALS", "ENVIRONMENT"], "{text}");
        let terms = |i: usize| sections[i].entries.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>();
        assert_eq!(terms(0), ["0", "64", "71", "78"]);
        for sig in ["SIGTERM, SIGINT", "SIGHUP", "SIGQUIT"] {
            assert!(terms(1).contains(&sig), "{sig} in {:?}", terms(1));
        }
        assert!(sections.iter().flat_map(|s| &s.entries).all(|(t, d)| !t.is_empty() && !d.is_empty()), "{sections:?}");
    }

    #[test]
    fn rot13d_page_has_every_section() {
        let page = page_text("rot13d.8");
        assert!(page.starts_with(".ie \\n(.g .ds Aq \\(aq") || page.contains(".TH rot13d 8"), "{page}");
        for want in [
            ".TH rot13d 8",
            ".SH NAME",
            ".SH SYNOPSIS",
            ".SH OPTIONS",
            "\\-\\-check\\-config",
            ".SH SUBCOMMANDS",
            "rot13d\\-probe(8)",
            ".SH \"EXIT STATUS\"",
            ".SH SIGNALS",
            "SIGHUP",
            ".SH ENVIRONMENT",
            "NOTIFY_SOCKET",
            ".SH FILES",
            "/etc/rot13d/rot13d.toml",
            ".SH \"SEE ALSO\"",
            ".SH VERSION",
        ] {
            assert!(page.contains(want), "rot13d.8 lacks {want:?}:\n{page}");
        }
    }

    #[test]
    fn probe_page_has_its_exit_status() {
        let page = page_text("rot13d-probe.8");
        for want in [".TH rot13d-probe 8", ".SH \"EXIT STATUS\"", "unhealthy", "\\-\\-timeout", ".SH \"SEE ALSO\""] {
            assert!(page.contains(want), "rot13d-probe.8 lacks {want:?}:\n{page}");
        }
    }
}
