//! Hand-written SVG charts (no dependencies, no network): line charts with
//! min–max whiskers over a linear or logarithmic x axis, and bar charts.

use std::fmt::Write as _;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#7f7f7f",
];

/// One point: x, median, min, max.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub lo: f64,
    pub hi: f64,
}

#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<Point>,
}

/// Escapes text for SVG.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" upper bound for an axis (1, 2 or 5 × 10^k).
pub fn nice_ceiling(value: f64) -> f64 {
    if value.is_nan() || value <= 0.0 || !value.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    for step in [1.0, 2.0, 5.0, 10.0] {
        if step * magnitude >= value {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

fn format_tick(value: f64) -> String {
    if value >= 1e6 {
        format!("{}M", trim(value / 1e6))
    } else if value >= 1e3 {
        format!("{}k", trim(value / 1e3))
    } else {
        trim(value)
    }
}

fn trim(value: f64) -> String {
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn header(svg: &mut String, title: &str) {
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">{}</text>\n",
        WIDTH / 2.0,
        escape(title)
    );
}

/// A line chart; `log_x` spaces x logarithmically (x must be > 0).
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    log_x: bool,
    series: &[Series],
) -> String {
    let points = || {
        series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|p| p.x.is_finite() && p.y.is_finite())
    };
    let xs: Vec<f64> = points()
        .map(|p| if log_x { p.x.max(1e-9).log10() } else { p.x })
        .collect();
    let (x_min, x_max) = xs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        });
    let (x_min, x_max) = if x_min.is_finite() && x_max > x_min {
        (x_min, x_max)
    } else if x_min.is_finite() {
        (x_min - 1.0, x_min + 1.0)
    } else {
        (0.0, 1.0)
    };
    let y_max = nice_ceiling(
        points()
            .map(|p| p.hi.max(p.y))
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max)
            * 1.05,
    );
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let sx = |x: f64| {
        let x = if log_x { x.max(1e-9).log10() } else { x };
        LEFT + (x - x_min) / (x_max - x_min) * plot_w
    };
    let sy = |y: f64| TOP + plot_h - (y / y_max).clamp(0.0, 1.0) * plot_h;

    let mut svg = String::new();
    header(&mut svg, title);
    // Axes and grid.
    for i in 0..=5 {
        let value = y_max * f64::from(i) / 5.0;
        let y = sy(value);
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            format_tick(value)
        );
    }
    let mut ticks: Vec<f64> = points().map(|p| p.x).collect();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    for x in ticks {
        let px = sx(x);
        let _ = writeln!(
            svg,
            "<line x1=\"{px:.1}\" y1=\"{TOP}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/><text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            TOP + plot_h,
            TOP + plot_h + 16.0,
            format_tick(x)
        );
    }
    let _ = writeln!(
        svg,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"none\" stroke=\"#333\"/>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n\
         <text x=\"18\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {:.1})\">{}</text>",
        LEFT + plot_w / 2.0,
        HEIGHT - 18.0,
        escape(x_label),
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        escape(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let valid: Vec<&Point> = s
            .points
            .iter()
            .filter(|p| p.x.is_finite() && p.y.is_finite())
            .collect();
        let path: Vec<String> = valid
            .iter()
            .map(|p| format!("{:.1},{:.1}", sx(p.x), sy(p.y)))
            .collect();
        if !path.is_empty() {
            let _ = writeln!(
                svg,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>",
                path.join(" ")
            );
        }
        for p in &valid {
            let (px, py) = (sx(p.x), sy(p.y));
            if p.lo.is_finite() && p.hi.is_finite() {
                let _ = writeln!(
                    svg,
                    "<line x1=\"{px:.1}\" y1=\"{:.1}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"{color}\"/>",
                    sy(p.lo),
                    sy(p.hi)
                );
            }
            let _ = writeln!(
                svg,
                "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"3.5\" fill=\"{color}\"/>"
            );
        }
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let lx = WIDTH - RIGHT + 14.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{lx}\" y1=\"{ly}\" x2=\"{:.1}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"3\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            lx + 18.0,
            lx + 24.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// One bar: label, value and its min–max.
#[derive(Clone, Debug)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
}

/// Horizontal bars (long labels fit), value printed at each bar's end.
pub fn bar_chart(title: &str, value_label: &str, bars: &[Bar]) -> String {
    let label_w = 260.0;
    let row = 30.0;
    let height = TOP + BOTTOM + row * bars.len().max(1) as f64;
    let max = nice_ceiling(
        bars.iter()
            .map(|b| b.hi.max(b.value))
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max)
            * 1.05,
    );
    let plot_w = WIDTH - label_w - 100.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">{}</text>\n",
        WIDTH / 2.0,
        escape(title)
    );
    let sx = |v: f64| label_w + (v / max).clamp(0.0, 1.0) * plot_w;
    for (i, bar) in bars.iter().enumerate() {
        let y = TOP + row * i as f64;
        let color = COLORS[i % COLORS.len()];
        let value = if bar.value.is_finite() {
            bar.value
        } else {
            0.0
        };
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><rect x=\"{label_w}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"/>",
            label_w - 8.0,
            y + row / 2.0 + 4.0,
            escape(&bar.label),
            y + 5.0,
            sx(value) - label_w,
            row - 10.0
        );
        if bar.lo.is_finite() && bar.hi.is_finite() {
            let _ = writeln!(
                svg,
                "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#000\"/>",
                sx(bar.lo),
                y + row / 2.0,
                sx(bar.hi),
                y + row / 2.0
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            sx(value.max(bar.hi.min(max))) + 6.0,
            y + row / 2.0 + 4.0,
            format_tick(value)
        );
    }
    let axis_y = TOP + row * bars.len().max(1) as f64 + 4.0;
    let _ = writeln!(
        svg,
        "<line x1=\"{label_w}\" y1=\"{axis_y:.1}\" x2=\"{:.1}\" y2=\"{axis_y:.1}\" stroke=\"#333\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
        label_w + plot_w,
        label_w + plot_w / 2.0,
        axis_y + 30.0,
        escape(value_label)
    );
    for i in 0..=4 {
        let v = max * f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            sx(v),
            axis_y + 14.0,
            format_tick(v)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balanced(svg: &str) -> bool {
        svg.starts_with("<svg")
            && svg.trim_end().ends_with("</svg>")
            && svg.matches("<svg").count() == 1
    }

    #[test]
    fn line_chart_has_every_series_and_no_nan() {
        let series = vec![
            Series {
                name: "mcs <xdp>".into(),
                points: vec![
                    Point {
                        x: 1.0,
                        y: 10.0,
                        lo: 9.0,
                        hi: 11.0,
                    },
                    Point {
                        x: 10_000.0,
                        y: 12.0,
                        lo: 11.0,
                        hi: 13.0,
                    },
                ],
            },
            Series {
                name: "iptables".into(),
                points: vec![Point {
                    x: 1.0,
                    y: f64::NAN,
                    lo: f64::NAN,
                    hi: f64::NAN,
                }],
            },
        ];
        let svg = line_chart("t", "services", "conn/s", true, &series);
        assert!(balanced(&svg));
        assert!(svg.contains("mcs &lt;xdp&gt;"));
        assert!(svg.contains("iptables"));
        assert!(!svg.contains("NaN"));
        assert!(svg.contains(">10k<"));
        // Empty and single-point charts still render.
        assert!(balanced(&line_chart("e", "x", "y", false, &[])));
        let one = vec![Series {
            name: "a".into(),
            points: vec![Point {
                x: 5.0,
                y: 1.0,
                lo: 1.0,
                hi: 1.0,
            }],
        }];
        assert!(!line_chart("o", "x", "y", true, &one).contains("NaN"));
    }

    #[test]
    fn bar_chart_labels_values() {
        let bars = vec![
            Bar {
                label: "mcs cold sync".into(),
                value: 0.2,
                lo: 0.19,
                hi: 0.25,
            },
            Bar {
                label: "iptables-restore".into(),
                value: 15.0,
                lo: 14.0,
                hi: 16.0,
            },
        ];
        let svg = bar_chart("sync", "seconds", &bars);
        assert!(balanced(&svg));
        assert!(svg.contains("iptables-restore") && svg.contains(">15<"));
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(1.5), 2.0);
        assert_eq!(nice_ceiling(0.3), 0.5);
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(f64::NAN), 1.0);
        assert_eq!(format_tick(16_000.0), "16k");
        assert_eq!(format_tick(0.25), "0.25");
    }
}
