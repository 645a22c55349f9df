//! Benchmarks for Switchyard: the shared measuring pieces, and (under `src/bin/`) the benchmark
//! programs that print the figures `bench/README.md` records.

pub mod api;

/// Latency samples in microseconds, kept whole so that quantiles are exact.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    values: Vec<u64>,
    sorted: bool,
}

impl Samples {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record(&mut self, micros: u64) {
        self.values.push(micros);
        self.sorted = false;
    }

    pub fn count(&self) -> usize {
        self.values.len()
    }

    fn sort(&mut self) {
        if !self.sorted {
            self.values.sort_unstable();
            self.sorted = true;
        }
    }

    /// The value below which a fraction `q` of the samples fall (nearest rank); 0 when empty.
    pub fn quantile(&mut self, q: f64) -> u64 {
        self.sort();
        if self.values.is_empty() {
            return 0;
        }
        let rank = ((q * self.values.len() as f64).ceil() as usize).clamp(1, self.values.len());
        self.values[rank - 1]
    }

    pub fn max(&mut self) -> u64 {
        self.sort();
        self.values.last().copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let mut s = Samples::new();
        for v in (1..=100).rev() {
            s.record(v);
        }
        assert_eq!(s.quantile(0.5), 50);
        assert_eq!(s.quantile(0.99), 99);
        assert_eq!(s.quantile(1.0), 100);
        assert_eq!(s.max(), 100);
        assert_eq!(Samples::new().quantile(0.5), 0);
    }
}
