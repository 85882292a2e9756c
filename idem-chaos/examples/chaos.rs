//! The soak form of the fault harness: runs every fault scenario against the memory store, a
//! standalone Redis and a local 3-master cluster (servers started here, on free ports) for a
//! while, and prints one table row per scenario and store.
//!
//! ```sh
//! cargo run --release -p idem-chaos --example chaos -- --keys 10000 --deliveries 3 --drop-replies 0.2 --seconds 60
//! ```
//!
//! Options: `--keys N` (per scenario and round), `--deliveries N` (per key), `--drop-replies P`
//! (the fault rate: replies dropped by the proxy, store operations failed), `--seconds S` (rounds
//! are repeated until this is spent; at least one), `--stores memory,redis,cluster`, `--seed N`,
//! `--lease-ms N` (the lease of every call; default 10s, a third of idem's default, so that
//! claims orphaned by lost replies lapse sooner; a shorter lease under this much load lets records
//! miss their lease, which the runtime reports as `NotRecorded`/`LeaseLost`), `--in-flight N`
//! (deliveries handled at once, as by a consumer with N workers; default 512; 0 = every
//! delivery of a scenario at once, which on one connection under a 20% fault rate overloads it
//! for longer than a lease).
//!
//! A round runs every scenario to its end (each waits one lease after healing before the final
//! deliveries), so with 10,000 keys one round takes several minutes whatever `--seconds` says.
//! Restart and failover scenarios use at most 200 keys (each runs its keys one by one).
//!
//! Exits with 1 when a scenario inside the documented boundary broke an invariant. A duplicate
//! that follows a `NotRecorded` or `LeaseLost` told to a caller (the store was unreachable for
//! longer than a lease around a body) is outside the guarantee and counted apart.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use idem_chaos::scenarios::{self, Backend};
use idem_chaos::{FaultPlan, ProxyFaults, Report, Spec};

struct Options {
    keys: usize,
    deliveries: usize,
    rate: f64,
    seconds: u64,
    stores: Vec<Backend>,
    seed: u64,
    lease: Duration,
    in_flight: usize,
}

fn parse() -> Result<Options, String> {
    let mut options = Options {
        keys: 1000,
        deliveries: 3,
        rate: 0.1,
        seconds: 0,
        stores: vec![Backend::Memory, Backend::Redis, Backend::Cluster],
        seed: 1,
        lease: Duration::from_secs(10),
        in_flight: 512,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |_: std::num::ParseIntError| format!("bad value for {flag}: {value}");
        match flag.as_str() {
            "--keys" => options.keys = value.parse().map_err(bad)?,
            "--deliveries" => options.deliveries = value.parse().map_err(bad)?,
            "--drop-replies" => {
                options.rate = value
                    .parse()
                    .map_err(|_| format!("bad value for {flag}: {value}"))?
            }
            "--seconds" => options.seconds = value.parse().map_err(bad)?,
            "--seed" => options.seed = value.parse().map_err(bad)?,
            "--lease-ms" => options.lease = Duration::from_millis(value.parse().map_err(bad)?),
            "--in-flight" => options.in_flight = value.parse().map_err(bad)?,
            "--stores" => {
                options.stores = value
                    .split(',')
                    .map(|name| match name {
                        "memory" => Ok(Backend::Memory),
                        "redis" => Ok(Backend::Redis),
                        "cluster" => Ok(Backend::Cluster),
                        other => Err(format!("unknown store {other}: memory, redis or cluster")),
                    })
                    .collect::<Result<_, _>>()?
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(options)
}

/// (scenario, store, inside the boundary) → the summed report.
type Table = BTreeMap<(String, String, bool), Report>;

fn add(table: &mut Table, scenario: &str, store: impl ToString, inside: bool, report: &Report) {
    table
        .entry((scenario.to_owned(), store.to_string(), inside))
        .or_default()
        .add(report);
}

async fn round(options: &Options, round: u64, table: &mut Table) -> Result<(), idem_core::Error> {
    let seed = options.seed.wrapping_mul(1000).wrapping_add(round);
    let spec = |name: &str, keys: usize| Spec {
        keys,
        deliveries: options.deliveries,
        lease: options.lease,
        max_body: Duration::from_millis(50),
        spread: Duration::from_secs(1),
        attempts: 40,
        seed,
        key_prefix: format!("{name}-{seed}"),
        in_flight: (options.in_flight > 0).then_some(options.in_flight),
    };
    let few = options.keys.min(200);
    let plan = FaultPlan {
        fail_before: options.rate / 2.0,
        fail_after: options.rate / 2.0,
        delay: 0.1,
        max_delay: Duration::from_millis(50),
        include_renew: false,
    };
    for &store in &options.stores {
        let report =
            scenarios::store_faults(store, &spec("store-faults", options.keys), plan).await?;
        add(
            table,
            "store faults (before/after apply, delays)",
            store,
            true,
            &report,
        );
        let overrun = Spec {
            lease: Duration::from_millis(300),
            max_body: Duration::from_millis(900),
            ..spec("overrun", few)
        };
        let report = scenarios::lease_overrun(store, &overrun).await?;
        add(
            table,
            "body outlives lease, renewals fail",
            store,
            false,
            &report,
        );
    }
    if options.stores.contains(&Backend::Redis) {
        let network = [
            (
                "lost replies (proxy)",
                ProxyFaults {
                    drop_replies: options.rate,
                    ..ProxyFaults::default()
                },
                None,
                false,
            ),
            (
                "replies slower than the 300ms timeout",
                ProxyFaults {
                    delay_replies: options.rate,
                    delay: Duration::from_millis(500),
                    ..ProxyFaults::default()
                },
                None,
                false,
            ),
            (
                "connection resets every 200ms",
                ProxyFaults::default(),
                Some(Duration::from_millis(200)),
                false,
            ),
            (
                "black hole 400ms of every second",
                ProxyFaults::default(),
                None,
                true,
            ),
        ];
        for (name, faults, resets, black_holes) in network {
            let (report, _) = scenarios::network_faults(
                &spec("network", options.keys),
                faults,
                resets,
                black_holes,
            )
            .await?;
            add(table, name, Backend::Redis, true, &report);
        }
        let report = scenarios::restart(&spec("aof", few), true).await?;
        add(
            table,
            "restart, appendfsync always",
            Backend::Redis,
            true,
            &report,
        );
        let report = scenarios::restart(&spec("volatile", few), false).await?;
        add(
            table,
            "restart, no persistence",
            Backend::Redis,
            false,
            &report,
        );
        let (_, report) = scenarios::failover(&spec("wait", few), true).await?;
        add(
            table,
            "failover under lag, with WAIT",
            Backend::Redis,
            true,
            &report,
        );
        let (_, report) = scenarios::failover(&spec("no-wait", few), false).await?;
        add(
            table,
            "failover under lag, without WAIT",
            Backend::Redis,
            false,
            &report,
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let options = match parse() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let mut table = Table::new();
    let mut rounds = 0;
    loop {
        if let Err(err) = round(&options, rounds, &mut table).await {
            eprintln!("a scenario could not run: {err}");
            std::process::exit(2);
        }
        rounds += 1;
        if started.elapsed() >= Duration::from_secs(options.seconds) {
            break;
        }
    }
    println!(
        "{rounds} round(s) in {:.0?}; keys {} per scenario, {} deliveries each, fault rate {}, lease {:?}, {}\n",
        started.elapsed(),
        options.keys,
        options.deliveries,
        options.rate,
        options.lease,
        match options.in_flight {
            0 => String::from("every delivery at once"),
            workers => format!("{workers} deliveries in flight"),
        }
    );
    println!(
        "| scenario | store | boundary | keys | calls | executions | duplicates | of which unwarned | lost | indeterminate surfaced | of which NotRecorded/LeaseLost | invariants |"
    );
    println!("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    let mut broken = false;
    for ((scenario, store, inside), r) in &table {
        let verdict = if r.holds() {
            "hold"
        } else if r.holds_but_for_warned_duplicates() {
            // Every duplicate followed a NotRecorded or LeaseLost told to a caller: the store was
            // unreachable for longer than a lease around a body.
            "hold, but for warned duplicates"
        } else if *inside {
            broken = true;
            "BROKEN"
        } else {
            "outside: measured"
        };
        println!(
            "| {scenario} | {store} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {verdict} |",
            if *inside { "inside" } else { "outside" },
            r.keys,
            r.calls,
            r.executions,
            r.duplicates,
            r.unwarned_duplicates,
            r.lost,
            r.indeterminate,
            r.unrecorded
        );
    }
    if broken {
        std::process::exit(1);
    }
}
