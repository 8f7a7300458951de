//! Draws the report's charts as self-contained SVG text: grouped bars and line plots (linear or
//! log x axis), with axes, ticks, a legend and native `<title>` tooltips. No script, no fonts
//! or other assets beyond the viewer's default sans-serif.

use std::fmt::Write as _;

/// Chart width in SVG user units.
const WIDTH: f64 = 720.0;
/// Chart height in SVG user units.
const HEIGHT: f64 = 340.0;
/// Room left of, right of, above and below the plot area (the legend sits on the right).
const LEFT: f64 = 64.0;
const RIGHT: f64 = 160.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 48.0;

/// Series colours, picked by index; distinguishable in print and for common colour blindness.
const PALETTE: [&str; 8] = ["#d95f02", "#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"];

/// The colour of series number `i`.
pub fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// One named series of bars, one value per group (`None` leaves a gap).
#[derive(Debug, Clone)]
pub struct BarSeries {
    /// Legend text.
    pub name: String,
    /// Fill colour.
    pub color: &'static str,
    /// A value per group.
    pub values: Vec<Option<f64>>,
}

/// A grouped bar chart: one cluster per group, one bar per series in each.
#[derive(Debug, Clone)]
pub struct BarChart {
    /// Heading inside the chart.
    pub title: String,
    /// What the y axis measures, with its unit.
    pub y_label: String,
    /// Cluster labels along the x axis.
    pub groups: Vec<String>,
    /// The bars.
    pub series: Vec<BarSeries>,
}

/// One named line through `(x, y)` points.
#[derive(Debug, Clone)]
pub struct LineSeries {
    /// Legend text.
    pub name: String,
    /// Stroke colour.
    pub color: &'static str,
    /// The points, in drawing order.
    pub points: Vec<(f64, f64)>,
    /// Draw the line dashed (to tell two lines of one colour apart).
    pub dashed: bool,
}

/// A line chart.
#[derive(Debug, Clone)]
pub struct LineChart {
    /// Heading inside the chart.
    pub title: String,
    /// What the x axis measures, with its unit.
    pub x_label: String,
    /// What the y axis measures, with its unit.
    pub y_label: String,
    /// Logarithmic x axis (points with x ≤ 0 are left out).
    pub x_log: bool,
    /// Fixed y range; otherwise 0 (or the lowest value, if negative) to a round number above
    /// the highest.
    pub y_range: Option<(f64, f64)>,
    /// The lines.
    pub series: Vec<LineSeries>,
    /// Draw a dot on every point as well.
    pub dots: bool,
}

/// Escapes text for SVG/HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Round tick values covering `lo..=hi`, about `n` of them, spaced 1, 2 or 5 × 10^k apart.
pub fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo || n == 0 {
        return vec![lo];
    }
    let raw = (hi - lo) / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).floor() as i64;
    let last = (hi / step).ceil() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// A tick label: few digits, no trailing zeros, k/M for large values.
pub fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    let (v, suffix) = if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e4 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let s = if v == v.trunc() {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}").trim_end_matches('0').trim_end_matches('.').to_owned()
    };
    format!("{s}{suffix}")
}

/// The opening tag, background and title every chart shares.
fn open(out: &mut String, title: &str) {
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12" role="img"><title>{t}</title><rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/><text x="{x}" y="20" font-size="14" font-weight="bold">{t}</text>"##,
        t = esc(title),
        x = LEFT,
    );
}

/// Horizontal grid lines and y tick labels for `ticks`, mapped by `y`; the y axis label.
fn y_axis(out: &mut String, ticks: &[f64], y: impl Fn(f64) -> f64, label: &str) {
    for &t in ticks {
        let py = y(t);
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{x2}" y2="{py:.1}" stroke="#e0e0e0"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{}</text>"##,
            esc(&fmt_tick(t)),
            x2 = WIDTH - RIGHT,
            tx = LEFT - 6.0,
            ty = py + 4.0,
        );
    }
    let cy = TOP + (HEIGHT - TOP - BOTTOM) / 2.0;
    let _ = write!(
        out,
        r#"<text x="14" y="{cy:.1}" text-anchor="middle" transform="rotate(-90 14 {cy:.1})">{}</text>"#,
        esc(label)
    );
}

/// How a legend entry's swatch looks.
#[derive(Clone, Copy)]
enum Swatch {
    /// A filled square, for bars.
    Fill,
    /// A short line, dashed or not, for lines.
    Line { dashed: bool },
}

/// The legend: a swatch and a name per entry, top right.
fn legend<'a>(out: &mut String, entries: impl Iterator<Item = (&'a str, &'static str, Swatch)>) {
    let x = WIDTH - RIGHT + 14.0;
    for (i, (name, color, swatch)) in entries.enumerate() {
        let y = TOP + 4.0 + i as f64 * 18.0;
        let _ = match swatch {
            Swatch::Fill => write!(out, r#"<rect x="{x}" y="{y:.1}" width="12" height="12" fill="{color}"/>"#),
            Swatch::Line { dashed } => write!(
                out,
                r#"<line x1="{x}" y1="{cy:.1}" x2="{x2}" y2="{cy:.1}" stroke="{color}" stroke-width="2"{dash}/>"#,
                cy = y + 6.0,
                x2 = x + 14.0,
                dash = if dashed { r#" stroke-dasharray="4 2""# } else { "" },
            ),
        };
        let _ = write!(out, r#"<text x="{tx}" y="{ty:.1}">{}</text>"#, esc(name), tx = x + 18.0, ty = y + 10.0);
    }
}

/// The plot area's frame (left and bottom axes).
fn frame(out: &mut String) {
    let (x0, y0, x1) = (LEFT, HEIGHT - BOTTOM, WIDTH - RIGHT);
    let _ = write!(
        out,
        r##"<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#333333"/><line x1="{x0}" y1="{TOP}" x2="{x0}" y2="{y0}" stroke="#333333"/>"##
    );
}

/// A note in the middle of an empty chart.
fn empty(out: &mut String) {
    let _ = write!(
        out,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#888888">no data</text>"##,
        (LEFT + WIDTH - RIGHT) / 2.0,
        (TOP + HEIGHT - BOTTOM) / 2.0
    );
}

impl BarChart {
    /// The chart as an `<svg>` element.
    pub fn render(&self) -> String {
        let mut out = String::new();
        open(&mut out, &self.title);
        let values = || self.series.iter().flat_map(|s| s.values.iter().flatten().copied()).filter(|v| v.is_finite());
        let max = values().fold(0.0f64, f64::max);
        let min = values().fold(0.0f64, f64::min);
        if self.groups.is_empty() || values().next().is_none() {
            empty(&mut out);
            out.push_str("</svg>");
            return out;
        }
        let ticks = nice_ticks(min, if max > min { max } else { min + 1.0 }, 5);
        let (lo, hi) = (ticks[0], ticks[ticks.len() - 1]);
        let plot_h = HEIGHT - TOP - BOTTOM;
        let y = |v: f64| HEIGHT - BOTTOM - (v - lo) / (hi - lo) * plot_h;
        y_axis(&mut out, &ticks, y, &self.y_label);

        let plot_w = WIDTH - LEFT - RIGHT;
        let group_w = plot_w / self.groups.len() as f64;
        let bar_w = group_w * 0.8 / self.series.len().max(1) as f64;
        for (g, group) in self.groups.iter().enumerate() {
            let gx = LEFT + g as f64 * group_w;
            for (k, s) in self.series.iter().enumerate() {
                let Some(v) = s.values.get(g).copied().flatten().filter(|v| v.is_finite()) else { continue };
                let x = gx + group_w * 0.1 + k as f64 * bar_w;
                let (top, bottom) = (y(v.max(0.0)), y(v.min(0.0)));
                let _ = write!(
                    out,
                    r#"<rect class="bar" x="{x:.1}" y="{top:.1}" width="{w:.1}" height="{h:.1}" fill="{c}"><title>{n} · {gr}: {val}</title></rect><text x="{cx:.1}" y="{ty:.1}" text-anchor="middle" font-size="10">{val}</text>"#,
                    w = (bar_w - 2.0).max(1.0),
                    h = (bottom - top).max(0.5),
                    c = s.color,
                    n = esc(&s.name),
                    gr = esc(group),
                    val = esc(&fmt_tick(round3(v))),
                    cx = x + bar_w / 2.0 - 1.0,
                    ty = top - 3.0,
                );
            }
            let _ = write!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                gx + group_w / 2.0,
                HEIGHT - BOTTOM + 18.0,
                esc(group)
            );
        }
        frame(&mut out);
        legend(&mut out, self.series.iter().map(|s| (s.name.as_str(), s.color, Swatch::Fill)));
        out.push_str("</svg>");
        out
    }
}

/// `v` to three significant digits, for labels.
fn round3(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let mag = 10f64.powf(v.abs().log10().floor() - 2.0);
    (v / mag).round() * mag
}

impl LineChart {
    /// The chart as an `<svg>` element.
    pub fn render(&self) -> String {
        let mut out = String::new();
        open(&mut out, &self.title);
        let usable = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!self.x_log || x > 0.0);
        let pts = || self.series.iter().flat_map(|s| s.points.iter().filter(|p| usable(p)).copied());
        if pts().next().is_none() {
            empty(&mut out);
            out.push_str("</svg>");
            return out;
        }
        let fx = |x: f64| if self.x_log { x.log10() } else { x };
        let (mut x_lo, mut x_hi) =
            pts().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (x, _)| (a.min(fx(x)), b.max(fx(x))));
        let (y_lo, y_hi) = self.y_range.unwrap_or_else(|| {
            let (lo, hi) = pts().fold((0.0f64, f64::NEG_INFINITY), |(a, b), (_, y)| (a.min(y), b.max(y)));
            let t = nice_ticks(lo, if hi > lo { hi } else { lo + 1.0 }, 5);
            (t[0], t[t.len() - 1])
        });
        let x_ticks: Vec<f64> = if self.x_log {
            x_lo = x_lo.floor();
            x_hi = x_hi.ceil().max(x_lo + 1.0);
            (x_lo as i64..=x_hi as i64).map(|e| e as f64).collect()
        } else {
            if x_hi <= x_lo {
                x_hi = x_lo + 1.0;
            }
            let t = nice_ticks(x_lo, x_hi, 6);
            x_lo = t[0];
            x_hi = t[t.len() - 1];
            t
        };
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let px = |x: f64| LEFT + (fx(x) - x_lo) / (x_hi - x_lo) * plot_w;
        let py = |y: f64| HEIGHT - BOTTOM - (y - y_lo) / (y_hi - y_lo) * plot_h;

        let y_ticks = nice_ticks(y_lo, y_hi, 5);
        y_axis(&mut out, &y_ticks, py, &self.y_label);
        for &t in &x_ticks {
            // On a log axis the ticks are exponents; `px` takes the plain value.
            let (at, label) = if self.x_log { (10f64.powf(t), fmt_tick(10f64.powf(t))) } else { (t, fmt_tick(t)) };
            let x = px(at);
            let _ = write!(
                out,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{y2}" stroke="#f0f0f0"/><text x="{x:.1}" y="{ty}" text-anchor="middle">{}</text>"##,
                esc(&label),
                y2 = HEIGHT - BOTTOM,
                ty = HEIGHT - BOTTOM + 16.0,
            );
        }
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + plot_w / 2.0,
            HEIGHT - 8.0,
            esc(&self.x_label)
        );
        for s in &self.series {
            let points: Vec<(f64, f64)> = s.points.iter().filter(|p| usable(p)).copied().collect();
            let mut path = String::new();
            for &(x, y) in &points {
                let _ = write!(path, "{:.1},{:.1} ", px(x), py(y));
            }
            let _ = write!(
                out,
                r#"<polyline class="line" fill="none" stroke="{}" stroke-width="2"{} points="{}"><title>{}</title></polyline>"#,
                s.color,
                if s.dashed { r#" stroke-dasharray="6 4""# } else { "" },
                path.trim_end(),
                esc(&s.name)
            );
            if self.dots {
                for &(x, y) in &points {
                    let _ = write!(
                        out,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{}"><title>{}: {} at {}</title></circle>"#,
                        px(x),
                        py(y),
                        s.color,
                        esc(&s.name),
                        fmt_tick(round3(y)),
                        fmt_tick(round3(x)),
                    );
                }
            }
        }
        frame(&mut out);
        legend(&mut out, self.series.iter().map(|s| (s.name.as_str(), s.color, Swatch::Line { dashed: s.dashed })));
        out.push_str("</svg>");
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// True when every tag in `doc` is closed in order (self-closing tags, `<!...>` and `<?...?>`
    /// aside), quotes in attributes respected. Enough to catch a broken generator.
    pub(crate) fn well_formed(doc: &str) -> Result<(), String> {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = doc;
        while let Some(start) = rest.find('<') {
            rest = &rest[start + 1..];
            if rest.starts_with('!') || rest.starts_with('?') {
                let end = rest.find('>').ok_or("unterminated declaration")?;
                rest = &rest[end + 1..];
                continue;
            }
            // Find the tag's end outside quoted attribute values.
            let mut quote = None;
            let mut end = None;
            for (i, c) in rest.char_indices() {
                match (quote, c) {
                    (None, '"' | '\'') => quote = Some(c),
                    (Some(q), c) if c == q => quote = None,
                    (None, '>') => {
                        end = Some(i);
                        break;
                    }
                    (None, '<') => return Err("'<' inside a tag".into()),
                    _ => {}
                }
            }
            let end = end.ok_or("unterminated tag")?;
            let tag = &rest[..end];
            rest = &rest[end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                let open = stack.pop().ok_or_else(|| format!("</{name}> closes nothing"))?;
                if open != name.trim() {
                    return Err(format!("<{open}> closed by </{name}>"));
                }
            } else if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().unwrap_or_default();
                if name.is_empty() {
                    return Err("empty tag".into());
                }
                stack.push(name.to_owned());
            }
        }
        if !stack.is_empty() {
            return Err(format!("unclosed: {stack:?}"));
        }
        Ok(())
    }

    fn bars() -> BarChart {
        BarChart {
            title: "CPU s/GB <lower is better>".into(),
            y_label: "CPU s per GB".into(),
            groups: vec!["up".into(), "down".into()],
            series: ["shardray", "sing-box", "v2ray"]
                .iter()
                .enumerate()
                .map(|(i, n)| BarSeries {
                    name: (*n).into(),
                    color: color(i),
                    values: vec![Some(0.2 + i as f64 * 0.1), if i == 2 { None } else { Some(0.3) }],
                })
                .collect(),
        }
    }

    #[test]
    fn bar_chart_is_well_formed_with_a_bar_per_value() {
        let svg = bars().render();
        well_formed(&svg).unwrap();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        // Three targets up, two down (v2ray's down is missing).
        assert_eq!(svg.matches(r#"class="bar""#).count(), 5);
        for name in ["shardray", "sing-box", "v2ray"] {
            assert!(svg.contains(&format!(">{name}</text>")), "legend for {name}");
            assert!(svg.contains(&format!("<title>{name} · up:")), "bar for {name}");
        }
        assert!(svg.contains("&lt;lower is better&gt;"), "title escaped");
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn empty_charts_say_so() {
        let mut b = bars();
        b.series.clear();
        let svg = b.render();
        well_formed(&svg).unwrap();
        assert!(svg.contains("no data"));
        let l = LineChart {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            x_log: true,
            y_range: None,
            series: vec![LineSeries { name: "a".into(), color: color(0), points: vec![(0.0, 1.0)], dashed: false }],
            dots: false,
        };
        assert!(l.render().contains("no data"), "x = 0 has no place on a log axis");
    }

    #[test]
    fn line_chart_maps_points_in_order() {
        let chart = LineChart {
            title: "latency".into(),
            x_label: "µs".into(),
            y_label: "fraction".into(),
            x_log: true,
            y_range: Some((0.0, 1.0)),
            series: vec![LineSeries {
                name: "shardray".into(),
                color: color(0),
                points: vec![(50.0, 0.0), (80.0, 0.5), (400.0, 0.99), (2_000.0, 1.0)],
                dashed: false,
            }],
            dots: true,
        };
        let svg = chart.render();
        well_formed(&svg).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 4);
        let pts = svg.split(r#"points=""#).nth(1).unwrap().split('"').next().unwrap();
        let xy: Vec<(f64, f64)> = pts
            .split_whitespace()
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect();
        assert_eq!(xy.len(), 4);
        // Later points lie to the right and (SVG y grows downwards) higher up.
        assert!(xy.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 >= w[1].1), "{xy:?}");
        assert!(xy.iter().all(|&(x, y)| (LEFT..=WIDTH - RIGHT).contains(&x) && (TOP..=HEIGHT - BOTTOM).contains(&y)));
        // Decades 10 to 10,000 label the log axis.
        assert!(svg.contains(">10</text>") && svg.contains(">10k</text>"));
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let labels: Vec<String> = nice_ticks(0.0, 0.95, 5).into_iter().map(fmt_tick).collect();
        assert_eq!(labels, ["0", "0.2", "0.4", "0.6", "0.8", "1"]);
        let t = nice_ticks(3.0, 97.0, 5);
        assert!(t[0] <= 3.0 && *t.last().unwrap() >= 97.0);
        assert_eq!(fmt_tick(0.25), "0.25");
        assert_eq!(fmt_tick(20_000.0), "20k");
        assert_eq!(fmt_tick(3.0), "3");
    }
}
