//! The HTTP layer's crash proof (see `idem_chaos::http_crash`).
//!
//! * `idem-chaos-http soak [--keys N] [--seconds N] [--concurrency N] [--restarts N] [--seed N]`:
//!   the long form; runs the layer in transactional mode, then over the same store in
//!   autocommit (the charge committed before its record), and prints a row for each.
//! * `idem-chaos-http serve DATABASE_URL PORT transaction|autocommit`: the server, started (and
//!   killed) by the harness.
//!
//! ```sh
//! cargo run --release -p idem-chaos --bin idem-chaos-http -- soak --keys 1000 --seconds 60
//! ```

use std::time::Duration;

use idem_chaos::http_crash::{self, HttpCrashSpec};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]).await,
        Some("soak") => soak(&args[1..]).await,
        _ => Err(
            "usage: idem-chaos-http soak [OPTIONS] | serve DATABASE_URL PORT transaction|autocommit"
                .into(),
        ),
    };
    if let Err(err) = outcome {
        eprintln!("{err}");
        std::process::exit(1);
    }
}

async fn serve(args: &[String]) -> Result<(), String> {
    let [database, port, mode] = args else {
        return Err("usage: idem-chaos-http serve DATABASE_URL PORT transaction|autocommit".into());
    };
    let port = port.parse().map_err(|_| format!("bad port {port}"))?;
    http_crash::serve(database, port, mode == "transaction").await
}

async fn soak(args: &[String]) -> Result<(), String> {
    let mut spec = HttpCrashSpec::new(1000, Duration::from_secs(60));
    let mut flags = args.iter();
    while let Some(flag) = flags.next() {
        let value = flags.next().ok_or(format!("{flag} needs a value"))?;
        let number: u64 = value
            .parse()
            .map_err(|_| format!("bad value for {flag}: {value}"))?;
        match flag.as_str() {
            "--keys" => spec.keys = number as usize,
            "--seconds" => spec.chaos = Duration::from_secs(number),
            "--concurrency" => spec.concurrency = number as usize,
            "--restarts" => spec.restarts = number as usize,
            "--seed" => spec.seed = number,
            other => return Err(format!("unknown option {other}")),
        }
    }
    let server = std::env::current_exe().map_err(|e| e.to_string())?;
    println!("| layer | keys | deliveries | requests | no answer | answers by status | kills | restarts | rows | duplicate rows | missing keys | differing answers | time |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut held = true;
    for in_transaction in [true, false] {
        let spec = HttpCrashSpec {
            in_transaction,
            ..spec.clone()
        };
        let report = http_crash::run(&server, &spec).await?;
        let statuses: Vec<String> = report
            .statuses
            .iter()
            .map(|(status, count)| format!("{status}: {count}"))
            .collect();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1}s |",
            if in_transaction {
                "in_transaction"
            } else {
                "autocommit (charge committed first)"
            },
            report.keys,
            spec.deliveries,
            report.requests,
            report.no_answer,
            statuses.join(", "),
            report.kills,
            report.restarts,
            report.rows,
            report.duplicate_rows,
            report.missing_keys,
            report.differing_answers,
            report.elapsed.as_secs_f64()
        );
        if in_transaction {
            held = report.exactly_once();
        }
    }
    if held {
        Ok(())
    } else {
        Err("the transactional mode was not exactly once".into())
    }
}
