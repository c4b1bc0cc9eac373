//! Result lines: `key=value` text for people, one flat JSON object per line
//! with `--json` for scripts (`summarize` reads them back).

/// One value of a result line.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// A count.
    Int(u64),
    /// A measurement, printed with the given number of decimals.
    Num(f64, usize),
    /// A name.
    Str(String),
}

/// One result line.
pub struct Report {
    fields: Vec<(String, Val)>,
}

impl Report {
    /// Starts a line for `scenario`, tagged with the run's label and case.
    pub fn new(scenario: &str, label: &str, case: &str) -> Report {
        let mut r = Report { fields: Vec::new() };
        r.str("scenario", scenario);
        r.str("label", label);
        r.str("case", if case.is_empty() { scenario } else { case });
        r
    }

    /// Adds a count.
    pub fn int(&mut self, k: &str, v: u64) -> &mut Self {
        self.fields.push((k.to_string(), Val::Int(v)));
        self
    }

    /// Adds a measurement (non-finite values are left out).
    pub fn num(&mut self, k: &str, v: f64, decimals: usize) -> &mut Self {
        if v.is_finite() {
            self.fields.push((k.to_string(), Val::Num(v, decimals)));
        }
        self
    }

    /// Adds a name.
    pub fn str(&mut self, k: &str, v: &str) -> &mut Self {
        self.fields.push((k.to_string(), Val::Str(v.to_string())));
        self
    }

    /// The line as text or JSON.
    pub fn render(&self, json: bool) -> String {
        let mut out = String::new();
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if json {
                out.push_str(if i == 0 { "{" } else { "," });
                out.push_str(&json_str(k));
                out.push(':');
                match v {
                    Val::Int(n) => out.push_str(&n.to_string()),
                    Val::Num(x, d) => out.push_str(&format!("{x:.d$}")),
                    Val::Str(s) => out.push_str(&json_str(s)),
                }
            } else {
                if i > 0 {
                    out.push(' ');
                }
                match v {
                    Val::Int(n) => out.push_str(&format!("{k}={n}")),
                    Val::Num(x, d) => out.push_str(&format!("{k}={x:.d$}")),
                    Val::Str(s) if i == 0 => out.push_str(s),
                    Val::Str(s) => out.push_str(&format!("{k}={s}")),
                }
            }
        }
        if json {
            out.push('}');
        }
        out
    }

    /// Prints the line on stdout.
    pub fn print(&self, json: bool) {
        println!("{}", self.render(json));
    }
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Parses one flat JSON object of strings and numbers (what `render(true)`
/// writes, and what scripts add by hand); `None` if it is not one.
pub fn parse_flat(line: &str) -> Option<Vec<(String, Val)>> {
    let mut p = line.trim().strip_prefix('{')?.strip_suffix('}')?.trim();
    let mut out = Vec::new();
    while !p.is_empty() {
        let (k, rest) = take_str(p)?;
        p = rest.trim_start().strip_prefix(':')?.trim_start();
        let v;
        if p.starts_with('"') {
            let (s, rest) = take_str(p)?;
            v = Val::Str(s);
            p = rest;
        } else {
            let end = p.find([',', ' ']).unwrap_or(p.len());
            let t = &p[..end];
            v = match t.parse::<u64>() {
                Ok(n) => Val::Int(n),
                Err(_) => Val::Num(t.parse().ok()?, 3),
            };
            p = &p[end..];
        }
        out.push((k, v));
        p = p.trim_start();
        p = p.strip_prefix(',').unwrap_or(p).trim_start();
    }
    Some(out)
}

fn take_str(p: &str) -> Option<(String, &str)> {
    let mut s = String::new();
    let mut it = p.strip_prefix('"')?.char_indices();
    while let Some((i, c)) = it.next() {
        match c {
            '"' => return Some((s, &p[i + 2..])),
            '\\' => match it.next()?.1 {
                'u' => {
                    let hex: String = (0..4).filter_map(|_| it.next().map(|x| x.1)).collect();
                    s.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                'n' => s.push('\n'),
                't' => s.push('\t'),
                c => s.push(c),
            },
            c => s.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips() {
        let mut r = Report::new("tput", "ceil \"x\"", "");
        r.int("conns", 64).num("mb_per_s", 1729.25, 1).num("bad", f64::NAN, 1);
        let line = r.render(true);
        assert_eq!(line, r#"{"scenario":"tput","label":"ceil \"x\"","case":"tput","conns":64,"mb_per_s":1729.2}"#);
        let f = parse_flat(&line).unwrap();
        assert_eq!(f[1], ("label".to_string(), Val::Str("ceil \"x\"".into())));
        assert_eq!(f[3], ("conns".to_string(), Val::Int(64)));
        assert_eq!(f[4].1, Val::Num(1729.2, 3));
        assert_eq!(r.render(false), "tput label=ceil \"x\" case=tput conns=64 mb_per_s=1729.2");
        assert!(parse_flat("not json").is_none());
    }
}
