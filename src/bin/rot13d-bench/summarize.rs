//! `summarize`: medians of JSON result lines (several runs per server and
//! case) as markdown tables, with ratios against baseline servers.

use crate::Fail;
use crate::report::{Val, parse_flat};
use clap::Args;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Options of `summarize`.
#[derive(Args, Clone, Debug)]
pub struct SummarizeArgs {
    /// Files of JSON result lines (other lines are skipped).
    #[arg(required = true)]
    files: Vec<String>,
    /// Labels to compare against (the ratio columns), in order.
    #[arg(long = "baseline")]
    baselines: Vec<String>,
}

/// Columns of a scenario's table: field, header, scale, decimals. The first
/// is the one the ratio columns compare.
fn columns(scenario: &str) -> &'static [(&'static str, &'static str, f64, usize)] {
    match scenario {
        "tput" => &[
            ("lines_per_s", "M lines/s", 1e-6, 2),
            ("mb_per_s", "MB/s", 1.0, 0),
            ("server_cpu_us_per_kline", "server CPU-µs / 1k lines", 1.0, 1),
            ("server_cpu_pct", "server CPU %", 1.0, 0),
            ("gen_cpu_us_per_kline", "generator CPU-µs / 1k lines", 1.0, 1),
            ("gen_cpu_pct", "generator CPU %", 1.0, 0),
        ],
        "lat" => &[
            ("req_per_s", "k req/s", 1e-3, 1),
            ("p50_us", "p50 µs", 1.0, 1),
            ("p90_us", "p90 µs", 1.0, 1),
            ("p99_us", "p99 µs", 1.0, 1),
            ("p999_us", "p99.9 µs", 1.0, 1),
            ("max_us", "max µs", 1.0, 0),
            ("server_cpu_us_per_kline", "server CPU-µs / 1k req", 1.0, 1),
            ("gen_cpu_us_per_kline", "generator CPU-µs / 1k req", 1.0, 1),
        ],
        "mixed" => &[
            ("bulk_mb_per_s", "bulk MB/s", 1.0, 0),
            ("req_per_s", "interactive k req/s", 1e-3, 1),
            ("p50_us", "p50 µs", 1.0, 1),
            ("p99_us", "p99 µs", 1.0, 1),
            ("p999_us", "p99.9 µs", 1.0, 1),
            ("server_cpu_pct", "server CPU %", 1.0, 0),
        ],
        "conns" => &[
            ("bytes_per_idle_conn", "RSS bytes / idle conn", 1.0, 0),
            ("bytes_per_conn_after_line", "RSS bytes / conn after a line", 1.0, 0),
            ("rss_idle_mib", "RSS idle MiB", 1.0, 1),
            ("open_secs", "open s", 1.0, 2),
        ],
        "slow" => &[
            ("rss_peak_growth_mib", "RSS peak growth MiB", 1.0, 1),
            ("sent_during_hold_mib", "accepted unread MiB", 1.0, 1),
            ("read_back_secs", "read-back s", 1.0, 2),
        ],
        "oneshot" => &[("secs", "seconds", 1.0, 3), ("lines_per_s", "k lines/s", 1e-3, 0)],
        "efficiency" => &[
            ("ir_per_line", "instructions / line", 1.0, 0),
            ("syscalls_per_kline", "syscalls / 1k lines", 1.0, 1),
            ("ir_total", "total Ir (M)", 1e-6, 1),
        ],
        _ => &[],
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Field -> its value in each run.
type Runs = BTreeMap<String, Vec<f64>>;
/// A case: its name, scenario, and the runs of each label in order.
type Case = (String, String, Vec<(String, Runs)>);
/// Field -> (median, min, max, runs).
type Stats<'a> = BTreeMap<&'a str, (f64, f64, f64, usize)>;

/// The tables for these result lines.
pub fn tables(lines: &str, baselines: &[String]) -> String {
    // case -> (scenario, [(label, field -> values)]) in order of appearance.
    let mut cases: Vec<Case> = Vec::new();
    for line in lines.lines() {
        let Some(f) = parse_flat(line) else { continue };
        let get = |k: &str| {
            f.iter().find(|(n, _)| n == k).and_then(|(_, v)| match v {
                Val::Str(s) => Some(s.clone()),
                _ => None,
            })
        };
        let (Some(scen), Some(case)) = (get("scenario"), get("case")) else {
            continue;
        };
        let label = get("label").unwrap_or_default();
        let ci = match cases.iter().position(|c| c.0 == case) {
            Some(i) => i,
            None => {
                cases.push((case.clone(), scen.clone(), Vec::new()));
                cases.len() - 1
            }
        };
        let rows = &mut cases[ci].2;
        let ri = match rows.iter().position(|r| r.0 == label) {
            Some(i) => i,
            None => {
                rows.push((label.clone(), Runs::new()));
                rows.len() - 1
            }
        };
        for (k, v) in &f {
            let x = match v {
                Val::Int(n) => *n as f64,
                Val::Num(x, _) => *x,
                Val::Str(_) => continue,
            };
            rows[ri].1.entry(k.clone()).or_default().push(x);
        }
    }
    let mut out = String::new();
    for (case, scen, rows) in &cases {
        let mut cols: Vec<(&str, &str, f64, usize)> = columns(scen).to_vec();
        if cols.is_empty() {
            // Unknown scenario: every numeric field, as is.
            let mut names: Vec<&str> = rows.iter().flat_map(|r| r.1.keys().map(String::as_str)).collect();
            names.dedup();
            cols = names.into_iter().map(|n| (n, n, 1.0, 2)).collect();
        }
        let meds: Vec<Stats> = rows
            .iter()
            .map(|(_, runs)| {
                runs.iter()
                    .map(|(k, v)| {
                        let mut v = v.clone();
                        let m = median(&mut v);
                        (k.as_str(), (m, v[0], v[v.len() - 1], v.len()))
                    })
                    .collect()
            })
            .collect();
        let primary = cols.first().map(|c| c.0).unwrap_or("");
        let base_vals: Vec<(&String, Option<f64>)> = baselines
            .iter()
            .map(|b| (b, rows.iter().position(|r| &r.0 == b).and_then(|i| meds[i].get(primary).map(|m| m.0))))
            .collect();
        let _ = writeln!(out, "\n### {case}\n");
        let mut head = String::from("| server | runs |");
        let mut rule = String::from("|---|---:|");
        for (_, h, _, _) in &cols {
            let _ = write!(head, " {h} |");
            rule.push_str("---:|");
        }
        // The spread column only when some row has more than one run.
        let spread = cols.first().filter(|_| meds.iter().any(|m| m.get(primary).is_some_and(|x| x.3 > 1)));
        if let Some((_, h, _, _)) = spread {
            let _ = write!(head, " {h} min–max |");
            rule.push_str("---:|");
        }
        for (b, v) in &base_vals {
            if v.is_some() {
                let _ = write!(head, " vs {b} |");
                rule.push_str("---:|");
            }
        }
        let _ = writeln!(out, "{head}\n{rule}");
        for (ri, (label, _)) in rows.iter().enumerate() {
            let m = &meds[ri];
            let runs = m.get(primary).map(|x| x.3).unwrap_or(0);
            let mut row = format!("| {label} | {runs} |");
            for (f, _, scale, d) in &cols {
                match m.get(f) {
                    Some((v, ..)) => {
                        let _ = write!(row, " {:.*} |", *d, v * scale);
                    }
                    None => row.push_str(" – |"),
                }
            }
            if let Some((f, _, scale, d)) = spread {
                match m.get(f) {
                    Some((_, lo, hi, _)) => {
                        let _ = write!(row, " {:.*}–{:.*} |", *d, lo * scale, *d, hi * scale);
                    }
                    None => row.push_str(" – |"),
                }
            }
            for (_, bv) in &base_vals {
                let Some(bv) = bv else { continue };
                match m.get(primary) {
                    Some((v, ..)) if *bv != 0.0 => {
                        let _ = write!(row, " {:.2}× |", v / bv);
                    }
                    _ => row.push_str(" – |"),
                }
            }
            let _ = writeln!(out, "{row}");
        }
    }
    out
}

/// Prints the tables of the given files.
pub fn run(a: &SummarizeArgs) -> Result<(), Fail> {
    let mut all = String::new();
    for f in &a.files {
        all.push_str(&std::fs::read_to_string(f).map_err(|e| Fail::io(format!("{f}: {e}")))?);
        all.push('\n');
    }
    print!("{}", tables(&all, &a.baselines));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        let input = r#"
{"scenario":"tput","label":"ceiling","case":"tput 64 B","lines_per_s":20000000,"mb_per_s":1280.0}
{"scenario":"tput","label":"ceiling","case":"tput 64 B","lines_per_s":24000000,"mb_per_s":1536.0}
{"scenario":"tput","label":"ceiling","case":"tput 64 B","lines_per_s":22000000,"mb_per_s":1408.0}
{"scenario":"tput","label":"x","case":"tput 64 B","lines_per_s":11000000,"mb_per_s":704.0}
garbage
"#;
        let t = tables(input, &["ceiling".into()]);
        assert!(t.contains("### tput 64 B"), "{t}");
        assert!(t.contains("| ceiling | 3 | 22.00 | 1408 |"), "{t}");
        assert!(t.contains("20.00–24.00 | 1.00× |"), "{t}");
        assert!(t.contains("| x | 1 | 11.00 | 704 |"), "{t}");
        assert!(t.contains(" 0.50× |"), "{t}");
        let one = tables(input.lines().nth(1).unwrap(), &[]);
        assert!(!one.contains("min–max"), "{one}");
    }
}
