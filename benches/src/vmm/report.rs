//! The results: one markdown table on stdout and the same figures as JSON.

use serde_json::{json, Map, Value};

use crate::stats::Summary;

/// One row: a figure for one monitor (or one direction), with its unit.
pub struct Row {
    pub section: &'static str,
    pub figure: String,
    pub subject: String,
    pub unit: &'static str,
    pub summary: Summary,
}

pub struct Report {
    /// The header of the subject column ("monitor" in the vmm bench).
    subject_label: &'static str,
    rows: Vec<Row>,
    notes: Vec<(&'static str, String)>,
    extra: Map<String, Value>,
}

impl Default for Report {
    fn default() -> Self {
        Self::with_subject_label("monitor")
    }
}

impl Report {
    pub fn with_subject_label(subject_label: &'static str) -> Self {
        Self {
            subject_label,
            rows: Vec::new(),
            notes: Vec::new(),
            extra: Map::new(),
        }
    }

    pub fn row(
        &mut self,
        section: &'static str,
        figure: impl Into<String>,
        subject: impl Into<String>,
        unit: &'static str,
        samples: &[f64],
    ) {
        if let Some(summary) = Summary::of(samples) {
            self.summary_row(section, figure, subject, unit, summary);
        }
    }

    /// A row whose figures were summarized elsewhere (another bench's report).
    pub fn summary_row(
        &mut self,
        section: &'static str,
        figure: impl Into<String>,
        subject: impl Into<String>,
        unit: &'static str,
        summary: Summary,
    ) {
        self.rows.push(Row {
            section,
            figure: figure.into(),
            subject: subject.into(),
            unit,
            summary,
        });
    }

    /// What a section measured, its caveats, or why it has no rows.
    pub fn note(&mut self, section: &'static str, text: impl Into<String>) {
        self.notes.push((section, text.into()));
    }

    /// A derived figure (a ratio, a target check) kept in the JSON under `key`.
    pub fn extra(&mut self, key: &str, value: Value) {
        self.extra.insert(key.to_string(), value);
    }

    /// Rows and notes in section order (sections are numbered), each section's own order kept.
    fn sorted(&self) -> (Vec<&Row>, Vec<&(&'static str, String)>) {
        let mut rows: Vec<&Row> = self.rows.iter().collect();
        rows.sort_by_key(|r| r.section);
        let mut notes: Vec<_> = self.notes.iter().collect();
        notes.sort_by_key(|n| n.0);
        (rows, notes)
    }

    pub fn markdown(&self) -> String {
        let (rows, notes) = self.sorted();
        let mut s = format!(
            "| section | figure | {} | unit | min | median | max | runs |\n",
            self.subject_label
        );
        s.push_str("| --- | --- | --- | --- | ---: | ---: | ---: | ---: |\n");
        for r in rows {
            let m = r.summary;
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.section,
                r.figure,
                r.subject,
                r.unit,
                fmt(m.min),
                fmt(m.median),
                fmt(m.max),
                m.runs
            ));
        }
        s.push('\n');
        for (section, text) in notes {
            s.push_str(&format!("- **{section}**: {text}\n"));
        }
        s
    }

    pub fn json(&self) -> Value {
        let (rows, notes) = self.sorted();
        let rows: Vec<Value> = rows
            .into_iter()
            .map(|r| {
                let mut v = r.summary.to_json(r.unit);
                v["section"] = json!(r.section);
                v["figure"] = json!(r.figure);
                v[self.subject_label] = json!(r.subject);
                v
            })
            .collect();
        let notes: Vec<Value> = notes
            .into_iter()
            .map(|(s, t)| json!({"section": s, "note": t}))
            .collect();
        json!({"results": rows, "derived": self.extra, "notes": notes})
    }
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
