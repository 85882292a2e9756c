//! Medians over rounds, ratios within rounds, and the tables printed from them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::measure::{median, Sample};
use crate::sides::Workload;

/// One table cell group: a side in one workload at one concurrency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Cell {
    pub(crate) suite: &'static str,
    pub(crate) workload: Workload,
    pub(crate) tasks: u64,
    pub(crate) side: &'static str,
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} tasks {}",
            self.suite,
            self.workload.name(),
            self.tasks,
            self.side
        )
    }
}

/// Every block's sample, in measuring order per cell (round 0 first).
#[derive(Default)]
pub(crate) struct Results {
    samples: BTreeMap<Cell, Vec<Sample>>,
    /// The cells in the order they were first measured (idem first in each group).
    order: Vec<Cell>,
}

/// What a table row shows.
pub(crate) struct Row {
    pub(crate) cell: Cell,
    pub(crate) ops_per_sec: f64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) errors: u64,
    /// The median over rounds of idem's ops/s ÷ this side's, from the same round.
    pub(crate) idem_ratio: Option<f64>,
    /// The median over rounds of the Redis server's time per call, when measured.
    pub(crate) server_us: Option<f64>,
}

impl Results {
    /// Adds one block's sample.
    pub(crate) fn add(&mut self, cell: Cell, sample: Sample) {
        if !self.samples.contains_key(&cell) {
            self.order.push(cell);
        }
        self.samples.entry(cell).or_default().push(sample);
    }

    /// Blocks measured so far.
    pub(crate) fn blocks(&self) -> u64 {
        self.samples
            .values()
            .map(|samples| samples.len() as u64)
            .sum()
    }

    /// True when no call failed.
    pub(crate) fn clean(&self) -> bool {
        self.samples
            .values()
            .flatten()
            .all(|sample| sample.errors == 0)
    }

    fn samples(&self, cell: &Cell) -> &[Sample] {
        self.samples.get(cell).map(Vec::as_slice).unwrap_or(&[])
    }

    fn idem_cell(cell: &Cell) -> Cell {
        Cell {
            side: "idem",
            ..*cell
        }
    }

    /// Per-round ratios of `numerator`'s ops/s to `denominator`'s, and their median.
    pub(crate) fn ratio(&self, numerator: &Cell, denominator: &Cell) -> Option<f64> {
        let top = self.samples(numerator);
        let bottom = self.samples(denominator);
        let mut ratios: Vec<f64> = top
            .iter()
            .zip(bottom)
            .filter(|(_, bottom)| bottom.ops > 0)
            .map(|(top, bottom)| top.ops_per_sec() / bottom.ops_per_sec())
            .collect();
        (!ratios.is_empty()).then(|| median(&mut ratios))
    }

    /// The rows in measuring order.
    pub(crate) fn rows(&self) -> Vec<Row> {
        self.order
            .iter()
            .map(|cell| {
                let samples = self.samples(cell);
                let mut ops: Vec<f64> = samples.iter().map(Sample::ops_per_sec).collect();
                let mut p50: Vec<f64> = samples
                    .iter()
                    .map(|s| s.quantile(0.5).as_secs_f64())
                    .collect();
                let mut p99: Vec<f64> = samples
                    .iter()
                    .map(|s| s.quantile(0.99).as_secs_f64())
                    .collect();
                Row {
                    cell: *cell,
                    ops_per_sec: median(&mut ops),
                    p50: Duration::from_secs_f64(median(&mut p50)),
                    p99: Duration::from_secs_f64(median(&mut p99)),
                    errors: samples.iter().map(|sample| sample.errors).sum(),
                    idem_ratio: (cell.side != "idem")
                        .then(|| self.ratio(&Self::idem_cell(cell), cell))
                        .flatten(),
                    server_us: {
                        let mut server: Vec<f64> =
                            samples.iter().filter_map(|s| s.server_us).collect();
                        (!server.is_empty()).then(|| median(&mut server))
                    },
                }
            })
            .collect()
    }

    /// The full table (markdown).
    pub(crate) fn table(&self) -> String {
        self.table_of(|_| true)
    }

    /// The table of the rows whose cell `keep` keeps (markdown).
    pub(crate) fn table_of(&self, keep: impl Fn(&Cell) -> bool) -> String {
        let mut out = String::from(
            "\n| store | workload | tasks | side | ops/s | p50 µs | p99 µs | server µs/call | errors | idem ÷ side |\n\
             | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for row in self.rows().into_iter().filter(|row| keep(&row.cell)) {
            let ratio = row
                .idem_ratio
                .map(|ratio| format!("{ratio:.2}x"))
                .unwrap_or_default();
            let server = row
                .server_us
                .map(|us| format!("{us:.1}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {} | {} | {} |",
                row.cell.suite,
                row.cell.workload.name(),
                row.cell.tasks,
                row.cell.side,
                row.ops_per_sec,
                micros(row.p50),
                micros(row.p99),
                server,
                row.errors,
                ratio
            );
        }
        out
    }

    /// What the memory targets are judged by: idem's cost per call above a bare call at one
    /// task, and how throughput grows from 1 task to more on two worker threads.
    pub(crate) fn summary(&self) -> String {
        let mut out = String::new();
        for workload in [Workload::First, Workload::Replay] {
            let cell = |side, tasks| Cell {
                suite: "memory",
                workload,
                tasks,
                side,
            };
            let mut overheads: Vec<f64> = self
                .samples(&cell("idem", 1))
                .iter()
                .zip(self.samples(&cell("bare call", 1)))
                .filter(|(idem, bare)| idem.ops > 0 && bare.ops > 0)
                .map(|(idem, bare)| 1e9 / idem.ops_per_sec() - 1e9 / bare.ops_per_sec())
                .collect();
            if !overheads.is_empty() {
                let _ = writeln!(
                    out,
                    "\nmemory, {}: idem costs {:.0} ns per call above a bare call (1 task, median of {} rounds)",
                    workload.name(),
                    median(&mut overheads),
                    overheads.len()
                );
            }
            let most = self
                .order
                .iter()
                .filter(|c| c.suite == "memory" && c.workload == workload)
                .map(|c| c.tasks)
                .max();
            if let Some(most) = most.filter(|&most| most > 1) {
                for side in ["idem", "Mutex<HashMap>", "bare call"] {
                    if let Some(ratio) = self.ratio(&cell(side, most), &cell(side, 1)) {
                        let _ = writeln!(
                            out,
                            "memory, {}: {side} at {most} tasks ÷ 1 task: {ratio:.2}x",
                            workload.name()
                        );
                    }
                }
            }
        }
        out
    }
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// The run's header: what ran where.
pub(crate) fn machine_line(rounds: usize, block: Duration, url: &str, own_server: bool) -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let redis = if url.is_empty() {
        String::from("no Redis")
    } else if own_server {
        format!("its own redis-server at {url}")
    } else {
        format!("REDIS_URL {url}")
    };
    format!(
        "idem-bench: {rounds} interleaved rounds of {} ms blocks, {cores} cores, tokio multi-thread runtime, {redis}",
        block.as_millis()
    )
}
