//! Where an image's time goes: milliseconds per named stage (decode, preprocess, each layer
//! group, maps, gate), measured with a clock the caller supplies, since `std::time::Instant`
//! panics in wasm (the worker passes `performance.now()`, the CLI and benchmarks `Instant`).

use serde::{Deserialize, Serialize};

/// Milliseconds per stage, in the order the stages first ran; a stage that runs again (one per
/// image of a batch) adds to its entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageTimes(pub Vec<(String, f64)>);

impl StageTimes {
    pub fn add(&mut self, stage: &str, millis: f64) {
        match self.0.iter_mut().find(|(name, _)| name == stage) {
            Some((_, total)) => *total += millis,
            None => self.0.push((stage.to_string(), millis)),
        }
    }

    pub fn get(&self, stage: &str) -> Option<f64> {
        self.0.iter().find(|(name, _)| name == stage).map(|s| s.1)
    }

    pub fn total(&self) -> f64 {
        self.0.iter().map(|s| s.1).sum()
    }
}

/// Splits elapsed time into stages: each `lap` charges the time since the previous one.
/// Without a clock (`Stopwatch::off`) laps cost nothing and record nothing.
pub struct Stopwatch<'a> {
    clock: Option<&'a dyn Fn() -> f64>,
    last: f64,
    times: StageTimes,
}

impl<'a> Stopwatch<'a> {
    /// `clock` returns milliseconds from any fixed origin.
    pub fn new(clock: &'a dyn Fn() -> f64) -> Self {
        Self {
            last: clock(),
            clock: Some(clock),
            times: StageTimes::default(),
        }
    }

    pub fn off() -> Self {
        Self {
            clock: None,
            last: 0.0,
            times: StageTimes::default(),
        }
    }

    /// Charges the time since the previous lap (or the start) to `stage`.
    pub fn lap(&mut self, stage: &str) {
        if let Some(clock) = self.clock {
            let now = clock();
            self.times.add(stage, now - self.last);
            self.last = now;
        }
    }

    pub fn times(&self) -> &StageTimes {
        &self.times
    }

    pub fn into_times(self) -> StageTimes {
        self.times
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn laps_charge_the_time_since_the_previous_lap_and_repeat_stages_add_up() {
        let now = Cell::new(10.0);
        let clock = || now.get();
        let mut watch = Stopwatch::new(&clock);
        now.set(13.0);
        watch.lap("decode");
        now.set(20.0);
        watch.lap("forward");
        now.set(21.5);
        watch.lap("decode");
        let times = watch.into_times();
        assert_eq!(times.get("decode"), Some(4.5));
        assert_eq!(times.get("forward"), Some(7.0));
        assert_eq!(times.get("gate"), None);
        assert_eq!(times.total(), 11.5);
        assert_eq!(times.0[0].0, "decode");
    }

    #[test]
    fn a_stopwatch_without_a_clock_records_nothing() {
        let mut watch = Stopwatch::off();
        watch.lap("decode");
        assert!(watch.times().0.is_empty());
    }
}
