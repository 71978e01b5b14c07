//! Charts of a metric's history: an SVG per metric (one point per run, its steps marked), an
//! HTML page linking them, and a terminal chart for a quick look.
//!
//! Written by hand rather than with a chart crate: a chart here is one polyline, its points,
//! two axes and a few labels, a hundred lines of SVG text. plotters would bring dozens of
//! crates (fonts, image codecs) into the binary for that. The output is plain SVG 1.1 that any
//! browser shows, with no script and nothing fetched.

use crate::history::MetricHistory;
use std::fmt::Write as _;

const W: f64 = 720.0;
const H: f64 = 300.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

/// Text with `&`, `<`, `>` and quotes escaped for XML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A file name for a metric: letters, digits, `-`, `_` and `.`; others become `_`.
pub fn file_name(h: &MetricHistory) -> String {
    let s: String = (h.key.to_string().chars())
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{s}.svg")
}

/// The value axis: from a little under the lowest point to a little over the highest.
fn range(values: &[f64]) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.1).max(hi.abs() * 0.005).max(1e-9);
    (lo - pad, hi + pad)
}

/// The SVG chart of one metric's history.
pub fn svg(h: &MetricHistory) -> String {
    let values: Vec<f64> = h.points.iter().map(|p| p.2).collect();
    let (lo, hi) = range(&values);
    let n = values.len().max(2);
    let x = |i: usize| LEFT + (W - LEFT - RIGHT) * i as f64 / (n - 1) as f64;
    let y = |v: f64| TOP + (H - TOP - BOTTOM) * (1.0 - (v - lo) / (hi - lo));
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="20" font-size="13">{} ({})</text>"#,
        esc(&h.key.to_string()),
        esc(&h.unit)
    );
    // Axes and value labels (bottom, middle, top).
    let (x0, x1, y0, y1) = (LEFT, W - RIGHT, TOP, H - BOTTOM);
    let _ = writeln!(
        s,
        r#"<path d="M{x0} {y0} V{y1} H{x1}" stroke="black" fill="none"/>"#
    );
    for v in [lo, (lo + hi) / 2.0, hi] {
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="end">{}</text><line x1="{x0}" x2="{x1}" y1="{}" y2="{}" stroke="#ddd"/>"##,
            LEFT - 6.0,
            y(v) + 4.0,
            fmt_value(v),
            y(v),
            y(v)
        );
    }
    // Steps: a red line before the first point after each step, labelled with its commit.
    for (step, commit) in &h.steps {
        let sx = (x(step.index) + x(step.index.saturating_sub(1))) / 2.0;
        let _ = writeln!(
            s,
            r##"<line x1="{sx}" x2="{sx}" y1="{y0}" y2="{y1}" stroke="#c00" stroke-dasharray="4 3"/><text x="{}" y="{}" fill="#c00">{} {:+.1}%</text>"##,
            sx + 3.0,
            y0 + 12.0,
            esc(&short(commit)),
            step.change * 100.0
        );
    }
    let pts: Vec<String> = (values.iter().enumerate())
        .map(|(i, &v)| format!("{:.1},{:.1}", x(i), y(v)))
        .collect();
    let _ = writeln!(
        s,
        r##"<polyline points="{}" fill="none" stroke="#2060c0" stroke-width="1.5"/>"##,
        pts.join(" ")
    );
    for (i, p) in h.points.iter().enumerate() {
        let _ = writeln!(
            s,
            r##"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="#2060c0"><title>{} ({}): {}</title></circle>"##,
            x(i),
            y(p.2),
            esc(&short(&p.1)),
            esc(&p.0),
            fmt_value(p.2)
        );
    }
    // Commit labels along the bottom, as many as fit.
    let every = h.points.len().div_ceil(12).max(1);
    for (i, p) in h.points.iter().enumerate().filter(|(i, _)| i % every == 0) {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" transform="rotate(45 {:.1} {})">{}</text>"#,
            x(i),
            y1 + 14.0,
            x(i),
            y1 + 14.0,
            esc(&short(&p.1))
        );
    }
    s.push_str("</svg>\n");
    s
}

fn short(commit: &str) -> String {
    commit.chars().take(9).collect()
}

fn fmt_value(v: f64) -> String {
    if v.abs() >= 1e4 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// An HTML page showing every chart (as `<img>` of the SVG files [`file_name`] names) with its
/// steps listed.
pub fn index_html(hs: &[MetricHistory]) -> String {
    let mut s = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>linerate bench history</title></head>\n<body style=\"font-family:sans-serif\">\n<h1>linerate bench history</h1>\n",
    );
    for h in hs {
        let _ = writeln!(s, "<h2>{}</h2>", esc(&h.key.to_string()));
        let _ = writeln!(
            s,
            "<img src=\"{}\" alt=\"{}\">",
            file_name(h),
            esc(&h.key.to_string())
        );
        if h.steps.is_empty() {
            s.push_str("<p>No step.</p>\n");
        } else {
            s.push_str("<ul>\n");
            for (st, commit) in &h.steps {
                let _ = writeln!(
                    s,
                    "<li>at {}: {} → {} {} ({:+.2}%, p {:.3})</li>",
                    esc(commit),
                    fmt_value(st.before),
                    fmt_value(st.after),
                    esc(&h.unit),
                    st.change * 100.0,
                    st.p_value
                );
            }
            s.push_str("</ul>\n");
        }
    }
    s.push_str("</body></html>\n");
    s
}

/// A chart for the terminal: `rows` lines, one column per run, `*` for a point and `|` where
/// a step landed.
pub fn terminal(h: &MetricHistory, rows: usize) -> String {
    let values: Vec<f64> = h.points.iter().map(|p| p.2).collect();
    if values.is_empty() {
        return String::new();
    }
    let rows = rows.max(2);
    let (lo, hi) = range(&values);
    let mut grid = vec![vec![' '; values.len()]; rows];
    for (step, _) in &h.steps {
        for row in grid.iter_mut() {
            row[step.index] = '|';
        }
    }
    for (i, &v) in values.iter().enumerate() {
        let r = ((hi - v) / (hi - lo) * (rows - 1) as f64).round() as usize;
        grid[r.min(rows - 1)][i] = '*';
    }
    let mut s = format!("{} ({})\n", h.key, h.unit);
    for (r, row) in grid.iter().enumerate() {
        let label = match r {
            0 => fmt_value(hi),
            _ if r == rows - 1 => fmt_value(lo),
            _ => String::new(),
        };
        let _ = writeln!(s, "{label:>12} {}", row.iter().collect::<String>());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changepoint::Step;
    use crate::record::MetricKey;

    fn history() -> MetricHistory {
        let points = (0..10)
            .map(|i| {
                let v = if i < 6 { 100.0 } else { 90.0 };
                (
                    format!("r{i}"),
                    format!("c{i}abcdef0123"),
                    v + i as f64 * 0.1,
                )
            })
            .collect();
        MetricHistory {
            key: MetricKey {
                suite: "s".into(),
                benchmark: "a<b>".into(),
                params: Default::default(),
                measure: "instructions".into(),
            },
            unit: "Ir".into(),
            points,
            steps: vec![(
                Step {
                    index: 6,
                    before: 100.3,
                    after: 90.7,
                    change: -0.096,
                    p_value: 0.005,
                },
                "c6abcdef0123".into(),
            )],
        }
    }

    #[test]
    fn the_svg_has_every_point_the_step_and_escaped_names() {
        let s = svg(&history());
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<circle").count(), 10);
        assert!(s.contains("s/a&lt;b&gt; instructions"), "{s}");
        assert!(s.contains("c6abcdef0 -9.6%"), "{s}");
        assert!(!s.contains("a<b>"));
        assert_eq!(file_name(&history()), "s_a_b__instructions.svg");
        let page = index_html(&[history()]);
        assert!(page.contains("src=\"s_a_b__instructions.svg\"") && page.contains("-9.60%"));
    }

    #[test]
    fn the_terminal_chart_puts_high_values_on_top_and_marks_the_step() {
        let t = terminal(&history(), 5);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 6);
        // Before the step the points are high (top rows), after it low (bottom rows).
        let col = |line: &str, i: usize| line.chars().nth(13 + i).unwrap_or(' ');
        let row_of = |i: usize| (1..lines.len()).find(|&r| col(lines[r], i) == '*');
        assert!(row_of(0).unwrap() < row_of(6).unwrap(), "{t}");
        // The step's column holds its point in one row and the marker in every other.
        assert!(
            (1..lines.len()).all(|r| matches!(col(lines[r], 6), '*' | '|')),
            "{t}"
        );
        assert!(
            lines[1].starts_with("     101.") && lines[5].starts_with("      89."),
            "{t}"
        );
    }
}
