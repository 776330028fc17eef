//! Reading the crate's metrics (feature `metrics`) in tests: from a Prometheus
//! scrape (the examples' `/metrics`), or from a recorder of one test's own.

use std::future::Future;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::CompositeKey;

/// The sum of the samples named `name` whose labels include `labels`, in a
/// Prometheus text scrape; 0 when there is none (a counter never incremented).
pub fn scraped(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let has = |(k, v): &(&str, &str)| {
                series_labels
                    .split(',')
                    .any(|pair| pair == format!("{k}=\"{v}\""))
            };
            labels.iter().all(has).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// What a test recorded: every series with its value.
pub struct Figures(Vec<(CompositeKey, DebugValue)>);

impl Figures {
    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a DebugValue> + 'a {
        self.0.iter().filter_map(move |(key, value)| {
            let key = key.key();
            let has =
                |(k, v): &(&str, &str)| key.labels().any(|l| l.key() == *k && l.value() == *v);
            (key.name() == name && labels.iter().all(has)).then_some(value)
        })
    }

    /// The sum of the counters named `name` whose labels include `labels`.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.matching(name, labels)
            .map(|v| match v {
                DebugValue::Counter(n) => *n,
                other => panic!("{name} is not a counter: {other:?}"),
            })
            .sum()
    }

    /// How many values the histograms named `name` with `labels` recorded.
    pub fn observations(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        self.matching(name, labels)
            .map(|v| match v {
                DebugValue::Histogram(values) => values.len(),
                other => panic!("{name} is not a histogram: {other:?}"),
            })
            .sum()
    }

    /// Every label value seen on `name`'s series, for the label `label`.
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut values: Vec<String> = self
            .0
            .iter()
            .filter(|(key, _)| key.key().name() == name)
            .flat_map(|(key, _)| {
                key.key()
                    .labels()
                    .filter(|l| l.key() == label)
                    .map(|l| l.value().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        values.sort();
        values.dedup();
        values
    }
}

/// Runs `test` to completion on a current-thread runtime (every task it spawns
/// runs on this thread) with a recorder of its own, so that tests running in
/// parallel do not see each other's figures; answers its output and the figures.
pub fn recorded<F, Fut>(test: F) -> (Fut::Output, Figures)
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let output = metrics::with_local_recorder(&recorder, || runtime.block_on(test()));
    drop(runtime);
    let figures = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key, value))
        .collect();
    (output, Figures(figures))
}
