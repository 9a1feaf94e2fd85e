//! The experiment report: a markdown table, a PNG chart of accuracy against turn, and JSON.
//!
//! The report also checks, and states plainly, whether the paper's qualitative effects (RISE.md
//! §7) appear in these numbers: it never hides an effect that did not show up.
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::metrics::{EvalMetrics, Proportion};

/// DejaVu Sans reduced to ASCII (10 KB, license in `assets/`): embedding it makes the chart
/// render identically everywhere, without fontconfig or system fonts.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
const FONT_NAME: &str = "rise-sans";

/// One evaluated model, under the name it has in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelResult {
    pub name: String,
    /// The evaluate stage that produced the numbers (for the reader to find them).
    #[serde(default)]
    pub source: String,
    pub metrics: EvalMetrics,
}

/// One qualitative claim of the paper, checked on these numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Effect {
    pub claim: String,
    pub holds: bool,
    pub detail: String,
}

/// The whole report, as written to `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub title: String,
    /// The base model's name (the model before any RISE iteration), if one was given.
    pub baseline: Option<String>,
    pub models: Vec<ModelResult>,
    pub effects: Vec<Effect>,
}

/// Errors writing the report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("drawing {path}: {message}")]
    Chart {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("nothing to report: no evaluated models")]
    Empty,
}

fn pct(p: &Proportion) -> String {
    format!("{:.1}", 100.0 * p.value)
}

fn pct_ci(p: &Proportion) -> String {
    format!(
        "{:.1} [{:.1}, {:.1}]",
        100.0 * p.value,
        100.0 * p.lo,
        100.0 * p.hi
    )
}

/// Checks the paper's qualitative claims. `baseline` is the model before RISE; every other model
/// is a RISE iterate, in order.
pub fn check_effects(models: &[ModelResult], baseline: Option<&str>) -> Vec<Effect> {
    let mut effects = Vec::new();
    let base = baseline.and_then(|b| models.iter().find(|m| m.name == b));
    let rise: Vec<&ModelResult> = models
        .iter()
        .filter(|m| Some(m.name.as_str()) != baseline)
        .collect();
    let keys = |m: &ModelResult| {
        (
            m.metrics.headline[0].key.clone(),
            m.metrics.headline[1].key.clone(),
            m.metrics.headline[2].key.clone(),
        )
    };
    for m in &rise {
        let (t1, mk, tn) = keys(m);
        let (a, b) = (m.metrics.m1_tn(), m.metrics.m1_t1());
        effects.push(Effect {
            claim: format!(
                "{}: {tn} > {t1} (accuracy rises with turns after RISE)",
                m.name
            ),
            holds: a.value > b.value,
            detail: format!("{tn} {} vs {t1} {}", pct(a), pct(b)),
        });
        let c = m.metrics.mk_t1();
        effects.push(Effect {
            claim: format!(
                "{}: {tn} > {mk} (sequential beats parallel at equal compute)",
                m.name
            ),
            holds: a.value > c.value,
            detail: format!("{tn} {} vs {mk} {}", pct(a), pct(c)),
        });
    }
    if let Some(base) = base {
        let (t1, _, tn) = keys(base);
        let (a, b) = (base.metrics.m1_tn(), base.metrics.m1_t1());
        effects.push(Effect {
            claim: format!("{}: {tn} does not exceed {t1} before RISE", base.name),
            holds: a.value <= b.value,
            detail: format!("{tn} {} vs {t1} {}", pct(a), pct(b)),
        });
        let base_gain = a.value - b.value;
        for m in &rise {
            let gain = m.metrics.m1_tn().value - m.metrics.m1_t1().value;
            effects.push(Effect {
                claim: format!(
                    "{}: the gain over turns ({tn} - {t1}) exceeds {}'s (it comes from RISE)",
                    m.name, base.name
                ),
                holds: gain > base_gain,
                detail: format!("{:+.1} vs {:+.1} points", 100.0 * gain, 100.0 * base_gain),
            });
        }
        for m in &rise {
            let (x, y) = (m.metrics.m1_t1(), base.metrics.m1_t1());
            effects.push(Effect {
                claim: format!(
                    "{}: {t1} not below {} beyond noise (first-turn accuracy is kept)",
                    m.name, base.name
                ),
                holds: !x.significantly_below(y),
                detail: format!(
                    "{} vs {} (two-proportion z test, 95%)",
                    pct_ci(x),
                    pct_ci(y)
                ),
            });
        }
    }
    for pair in rise.windows(2) {
        let (prev, next) = (pair[0], pair[1]);
        let (_, _, tn) = keys(next);
        let (a, b) = (next.metrics.m1_tn(), prev.metrics.m1_tn());
        effects.push(Effect {
            claim: format!(
                "{} ≥ {} on {tn} (another iteration helps)",
                next.name, prev.name
            ),
            holds: a.value >= b.value,
            detail: format!("{} vs {}", pct(a), pct(b)),
        });
    }
    effects
}

impl Report {
    /// Assembles a report and checks the effects.
    pub fn new(title: String, baseline: Option<String>, models: Vec<ModelResult>) -> Self {
        let effects = check_effects(&models, baseline.as_deref());
        Report {
            title,
            baseline,
            models,
            effects,
        }
    }

    /// The markdown report (`report.md`).
    pub fn markdown(&self, chart_file: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# {}\n", self.title);
        let Some(first) = self.models.first() else {
            let _ = writeln!(s, "No models were evaluated.");
            return s;
        };
        let m = &first.metrics;
        let _ = writeln!(
            s,
            "Accuracy in % on {} held-out problems, with 95% Wilson intervals. Each problem gets \
             {} parallel first-turn samples and one chain of {} sequential turns whose feedback is \
             always \"incorrect\" (no oracle); the chain's turn 1 is parallel sample 1.\n",
            m.problems, m.parallel, m.turns
        );
        let mut header = String::from("| model |");
        let mut rule = String::from("|---|");
        for h in &m.headline {
            let _ = write!(header, " {} |", h.key);
            rule.push_str("---|");
        }
        let _ = writeln!(s, "{header}\n{rule}");
        for r in &self.models {
            let _ = write!(s, "| {} |", r.name);
            for h in &r.metrics.headline {
                let _ = write!(s, " {} |", pct_ci(&h.value));
            }
            s.push('\n');
        }
        s.push('\n');
        for h in &m.headline {
            let _ = writeln!(s, "- **{}**: {}.", h.key, h.description);
        }
        let _ = writeln!(
            s,
            "\n## Accuracy at each turn\n\n![accuracy against turn]({chart_file})\n"
        );
        let mut header = String::from("| model |");
        let mut rule = String::from("|---|");
        for t in 1..=m.turns {
            let _ = write!(header, " t{t} |");
            rule.push_str("---|");
        }
        let _ = writeln!(s, "{header}\n{rule}");
        for r in &self.models {
            let _ = write!(s, "| {} |", r.name);
            for p in &r.metrics.per_turn {
                let _ = write!(s, " {} |", pct_ci(p));
            }
            s.push('\n');
        }
        let _ = writeln!(
            s,
            "\n## Flips between consecutive turns\n\nPercent of all problems that went correct → \
             wrong / wrong → correct from turn t to t+1.\n"
        );
        let mut header = String::from("| model |");
        let mut rule = String::from("|---|");
        for f in &m.flips {
            let _ = write!(header, " t{}→t{} c→w / w→c |", f.from, f.to);
            rule.push_str("---|");
        }
        let _ = writeln!(s, "{header}\n{rule}");
        for r in &self.models {
            let _ = write!(s, "| {} |", r.name);
            for f in &r.metrics.flips {
                let _ = write!(
                    s,
                    " {} / {} |",
                    pct(&f.correct_to_wrong),
                    pct(&f.wrong_to_correct)
                );
            }
            s.push('\n');
        }
        let _ = writeln!(
            s,
            "\n## After the feedback: sequential turns against parallel samples\n\n\
             Percent of next answers that are right, after a right and after a wrong answer: \
             the next sequential turn (after \"incorrect\", always) / the next parallel \
             sample (an independent draw). Sequential beats parallel at equal compute when \
             the model fixes wrong answers more often than a fresh draw does and keeps right \
             ones about as often.\n\n\
             | model | right after right (seq / par) | right after wrong (seq / par) |\n\
             |---|---|---|"
        );
        for r in &self.models {
            let t = &r.metrics.transitions;
            let _ = writeln!(
                s,
                "| {} | {} / {} | {} / {} |",
                r.name,
                pct(&t.sequential_after_right),
                pct(&t.parallel_after_right),
                pct(&t.sequential_after_wrong),
                pct(&t.parallel_after_wrong)
            );
        }
        let _ = writeln!(
            s,
            "\n## The paper's qualitative effects, checked on these numbers\n"
        );
        if self.effects.is_empty() {
            let _ = writeln!(
                s,
                "No effects to check: the report needs a baseline and at least one RISE model."
            );
        }
        for e in &self.effects {
            let mark = if e.holds {
                "holds"
            } else {
                "**does NOT hold**"
            };
            let _ = writeln!(s, "- {}: {mark} ({}).", e.claim, e.detail);
        }
        let failed = self.effects.iter().filter(|e| !e.holds).count();
        if failed > 0 {
            let _ = writeln!(
                s,
                "\n{failed} of {} expected effects did not appear in this run. The numbers above \
                 are reported as measured.",
                self.effects.len()
            );
        }
        if self.models.iter().any(|r| !r.source.is_empty()) {
            let _ = writeln!(s, "\n## Sources\n");
            for r in &self.models {
                if !r.source.is_empty() {
                    let _ = writeln!(s, "- {}: stage `{}`", r.name, r.source);
                }
            }
        }
        s
    }

    /// Writes `report.md`, `report.json` and `accuracy.png` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), ReportError> {
        if self.models.is_empty() {
            return Err(ReportError::Empty);
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ReportError::Io { path, source }
        };
        let png = dir.join("accuracy.png");
        draw_chart(&self.models, &png)?;
        let md = dir.join("report.md");
        std::fs::write(&md, self.markdown("accuracy.png")).map_err(io(&md))?;
        let json = dir.join("report.json");
        let mut text = serde_json::to_string_pretty(self).map_err(|e| ReportError::Io {
            path: json.clone(),
            source: std::io::Error::other(e),
        })?;
        text.push('\n');
        std::fs::write(&json, text).map_err(io(&json))
    }
}

fn register_font() -> Result<(), String> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font(FONT_NAME, FontStyle::Normal, FONT)
            .map_err(|_| "the embedded font does not parse".to_string());
    });
    result
}

/// Draws accuracy against turn, one line per model with its 95% interval as error bars.
pub fn draw_chart(models: &[ModelResult], path: &Path) -> Result<(), ReportError> {
    let chart_err = |e: &dyn std::fmt::Display| ReportError::Chart {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    register_font().map_err(|e| chart_err(&e))?;
    let turns = models
        .iter()
        .map(|m| m.metrics.turns)
        .max()
        .unwrap_or(1)
        .max(1);
    let root = BitMapBackend::new(path, (800, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| chart_err(&e))?;
    let ymax = models
        .iter()
        .flat_map(|m| m.metrics.per_turn.iter().map(|p| p.hi))
        .fold(0.0_f64, f64::max);
    let ymax = ((ymax * 100.0 / 10.0).ceil() * 10.0).clamp(10.0, 100.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Accuracy at each turn (feedback always \"incorrect\")",
            (FONT_NAME, 20),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0.7f64..(turns as f64 + 0.3), 0f64..ymax)
        .map_err(|e| chart_err(&e))?;
    chart
        .configure_mesh()
        .x_desc("turn")
        .y_desc("accuracy (%)")
        .x_labels(turns as usize)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style((FONT_NAME, 14))
        .axis_desc_style((FONT_NAME, 16))
        .disable_x_mesh()
        .draw()
        .map_err(|e| chart_err(&e))?;
    for (i, m) in models.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        // Offset the models slightly so that their error bars do not overlap.
        let dx = (i as f64 - (models.len() as f64 - 1.0) / 2.0) * 0.04;
        let points: Vec<(f64, f64)> = m
            .metrics
            .per_turn
            .iter()
            .enumerate()
            .map(|(t, p)| (t as f64 + 1.0 + dx, 100.0 * p.value))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| chart_err(&e))?
            .label(m.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|e| chart_err(&e))?;
        chart
            .draw_series(m.metrics.per_turn.iter().enumerate().map(|(t, p)| {
                let x = t as f64 + 1.0 + dx;
                PathElement::new(
                    vec![(x, 100.0 * p.lo), (x, 100.0 * p.hi)],
                    color.stroke_width(1),
                )
            }))
            .map_err(|e| chart_err(&e))?;
    }
    chart
        .configure_series_labels()
        .label_font((FONT_NAME, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| chart_err(&e))?;
    root.present().map_err(|e| chart_err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{compute, GradedAnswer, ProblemEval};

    /// A model whose sequential chain gets `per_turn[t]` of 10 problems right at turn t, and
    /// whose parallel samples get `par` right.
    fn model(name: &str, per_turn: &[usize], par: usize) -> ModelResult {
        let problems: Vec<ProblemEval> = (0..10)
            .map(|i| ProblemEval {
                prompt_id: i.to_string(),
                parallel: (0..5)
                    .map(|j| {
                        let ok = if j == 0 { i < per_turn[0] } else { i < par };
                        GradedAnswer {
                            answer: Some(if ok { "1" } else { "x" }.into()),
                            correct: ok,
                        }
                    })
                    .collect(),
                sequential: per_turn
                    .iter()
                    .enumerate()
                    .map(|(t, &k)| {
                        let ok = i < k;
                        let wrong = format!("w{t}");
                        GradedAnswer {
                            answer: Some(if ok { "1".into() } else { wrong }),
                            correct: ok,
                        }
                    })
                    .collect(),
            })
            .collect();
        let metrics = compute(&problems, &|a, b| a == b).unwrap();
        ModelResult {
            name: name.into(),
            source: format!("eval_{name}"),
            metrics,
        }
    }

    #[test]
    fn effects_are_checked_and_failures_are_said() {
        let models = vec![
            model("base", &[4, 3, 3, 2, 2], 4),
            model("iter1", &[4, 6, 7, 7, 7], 5),
            model("iter2", &[5, 5, 5, 5, 5], 5),
        ];
        let r = Report::new("t".into(), Some("base".into()), models);
        let get = |claim: &str| {
            r.effects
                .iter()
                .find(|e| e.claim.starts_with(claim))
                .unwrap()
        };
        assert!(get("iter1: m1@t5 > m1@t1").holds);
        assert!(!get("iter2: m1@t5 > m1@t1").holds);
        assert!(get("base: m1@t5 does not exceed").holds);
        assert!(get("iter1: the gain over turns").holds); // +30 vs -10 points
                                                          // A flat curve still beats a base that loses 10 points over turns.
        assert_eq!(
            get("iter2: the gain over turns").detail,
            "+0.0 vs -10.0 points"
        );
        assert!(get("iter2: the gain over turns").holds);
        assert!(!get("iter2 ≥ iter1").holds);
        let md = r.markdown("accuracy.png");
        assert!(md.contains("**does NOT hold**"));
        assert!(md.contains("did not appear in this run"));
        for key in ["m1@t1", "m5@t1", "m1@t5", "p1@t5"] {
            assert!(md.contains(key), "{key}");
        }
    }

    #[test]
    fn writes_markdown_json_and_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let models = vec![
            model("base", &[4, 3, 3, 2, 2], 4),
            model("iter1", &[4, 6, 7, 7, 7], 5),
        ];
        let r = Report::new("RISE".into(), Some("base".into()), models);
        r.write(dir.path()).unwrap();
        let png = std::fs::read(dir.path().join("accuracy.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let back: Report =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
                .unwrap();
        // serde_json parses floats to within an ulp, so compare what the numbers mean.
        assert_eq!(back.effects, r.effects);
        assert_eq!(back.models.len(), 2);
        assert_eq!(back.models[1].metrics.m1_tn().successes, 7);
        // Same numbers, same bytes: the chart must be reproducible for the store's hashes.
        let dir2 = tempfile::tempdir().unwrap();
        r.write(dir2.path()).unwrap();
        assert_eq!(
            std::fs::read(dir2.path().join("accuracy.png")).unwrap(),
            png
        );
    }

    #[test]
    fn text_is_drawn_with_the_embedded_font() {
        // A chart with labels has more dark pixels than the same chart's lines alone would; we
        // check that glyphs land in the caption band at the top (no text would leave it blank).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.png");
        draw_chart(&[model("base", &[4, 3, 3, 2, 2], 4)], &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        let dark = (0..img.width())
            .flat_map(|x| (0..30).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 128))
            .count();
        assert!(dark > 100, "caption band has {dark} dark pixels");
    }
}
