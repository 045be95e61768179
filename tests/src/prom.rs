//! A reader for the Prometheus text exposition format (what `/metrics`
//! serves), enough for the tests to hold a scrape to names, types, labels
//! and values. Standard library only.

use std::collections::BTreeMap;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// In the order written.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The series' identity: name and sorted labels.
    pub fn series(&self) -> String {
        let mut labels = self.labels.clone();
        labels.sort();
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        format!("{}{{{}}}", self.name, labels.join(","))
    }
}

/// A parsed scrape.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// `# TYPE` lines: metric name to type.
    pub types: BTreeMap<String, String>,
    /// `# HELP` lines: metric name to help text.
    pub help: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parses `text`; panics on a line that is not exposition format (the
    /// endpoint serving it is what is under test).
    pub fn parse(text: &str) -> Self {
        let mut scrape = Self::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                scrape.types.insert(name.into(), kind.into());
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                scrape.help.insert(name.into(), help.into());
            } else if !line.starts_with('#') {
                scrape.samples.push(parse_sample(line));
            }
        }
        scrape
    }

    /// The samples of `name` (exactly, e.g. `x_bucket`) whose labels include `with`.
    pub fn find<'a>(
        &'a self,
        name: &'a str,
        with: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == name && with.iter().all(|(k, v)| s.label(k) == Some(*v)))
    }

    /// The sum of the values of [`find`](Self::find)'s samples.
    pub fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.find(name, with).map(|s| s.value).sum()
    }
}

fn parse_sample(line: &str) -> Sample {
    let (series, value) = line.rsplit_once(' ').expect("sample: series value");
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| panic!("not a value: {line}")),
    };
    let Some((name, labels)) = series.split_once('{') else {
        return Sample {
            name: series.into(),
            labels: Vec::new(),
            value,
        };
    };
    let labels = labels
        .strip_suffix('}')
        .unwrap_or_else(|| panic!("unclosed labels: {line}"));
    Sample {
        name: name.into(),
        labels: parse_labels(labels, line),
        value,
    }
}

/// `k="v",k2="v\"2"` into pairs, unescaping `\\`, `\"` and `\n`.
fn parse_labels(text: &str, line: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if key.is_empty() {
            return labels;
        }
        assert_eq!(chars.next(), Some('"'), "label value not quoted: {line}");
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => panic!("dangling escape: {line}"),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => panic!("unterminated label value: {line}"),
            }
        }
        labels.push((key.trim_start_matches(',').trim().to_string(), value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_types_labels_escapes_and_infinities() {
        let text = "# HELP a:b_total Things.\n# TYPE a:b_total counter\n\
                    a:b_total{model_name=\"m\",x=\"q\\\"u,o=te\"} 3\n\
                    h_bucket{le=\"+Inf\"} 2\nplain 1.5\n";
        let s = Scrape::parse(text);
        assert_eq!(s.types["a:b_total"], "counter");
        assert_eq!(s.help["a:b_total"], "Things.");
        assert_eq!(s.samples[0].label("x"), Some("q\"u,o=te"));
        assert_eq!(s.samples[0].label("model_name"), Some("m"));
        assert_eq!(s.sum("a:b_total", &[("model_name", "m")]), 3.0);
        assert_eq!(s.samples[1].label("le"), Some("+Inf"));
        assert_eq!(s.samples[2].value, 1.5);
        assert!(s.samples[2].labels.is_empty());
    }
}
