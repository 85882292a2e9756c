//! The ledger proof (see `idem_chaos::ledger`).
//!
//! * `idem-chaos-ledger soak [--keys N] [--deliveries N] [--children N] [--kill-ms N]
//!   [--restarts N] [--seed N]`: the long form; runs the transactional mode and the
//!   Redis-record configuration on the same workload and prints both rows.
//! * `idem-chaos-ledger child MODE DATABASE_URL REDIS_URL LEASE_MS`: one child, started by the
//!   harness.
//!
//! ```sh
//! cargo run --release -p idem-chaos --bin idem-chaos-ledger -- soak --keys 2000
//! ```

use std::time::Duration;

use idem_chaos::ledger::{self, LedgerReport, LedgerSpec, RecordIn};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("child") => ledger::child(&args[1..]).await,
        Some("soak") => soak(&args[1..]).await,
        _ => Err(
            "usage: idem-chaos-ledger soak [OPTIONS] | child MODE DATABASE_URL REDIS_URL LEASE_MS"
                .into(),
        ),
    };
    if let Err(err) = outcome {
        eprintln!("{err}");
        std::process::exit(1);
    }
}

async fn soak(args: &[String]) -> Result<(), String> {
    let mut spec = LedgerSpec::new(2000, RecordIn::Transaction);
    let mut flags = args.iter();
    while let Some(flag) = flags.next() {
        let value = flags.next().ok_or(format!("{flag} needs a value"))?;
        let number: u64 = value
            .parse()
            .map_err(|_| format!("bad value for {flag}: {value}"))?;
        match flag.as_str() {
            "--keys" => spec.keys = number as usize,
            "--deliveries" => spec.deliveries = number as usize,
            "--children" => spec.children = number as usize,
            "--kill-ms" => spec.kill_every = Duration::from_millis(number),
            "--restarts" => spec.restarts = number as usize,
            "--seed" => spec.seed = number,
            other => return Err(format!("unknown option {other}")),
        }
    }
    let child = std::env::current_exe().map_err(|e| e.to_string())?;
    println!("| record in | keys | deliveries | kills | restarts | ledger rows | duplicate rows | missing keys | keys without record | differing replies | time |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut held = true;
    for record_in in [RecordIn::Transaction, RecordIn::Redis] {
        let report = ledger::run(
            &child,
            &LedgerSpec {
                record_in,
                ..spec.clone()
            },
        )
        .await?;
        print_row(record_in, &report);
        if record_in == RecordIn::Transaction {
            held &= report.exactly_once();
        }
    }
    if held {
        Ok(())
    } else {
        Err("the transactional mode booked a key other than exactly once".into())
    }
}

fn print_row(record_in: RecordIn, report: &LedgerReport) {
    let name = match record_in {
        RecordIn::Transaction => "PostgreSQL, same transaction",
        RecordIn::Redis => "Redis (row committed first)",
    };
    println!(
        "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1}s |",
        report.keys,
        report.deliveries,
        report.kills,
        report.restarts,
        report.ledger_rows,
        report.duplicate_rows,
        report.missing_keys,
        if record_in == RecordIn::Transaction {
            report.keys_without_record.to_string()
        } else {
            "n/a".to_owned()
        },
        report.differing_replies,
        report.elapsed.as_secs_f64()
    );
}
