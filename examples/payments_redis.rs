//! The payment example with four service instances sharing one Redis: deliveries of one order
//! land on different instances, and still each order is charged exactly once.
//!
//! ```sh
//! cargo run --example payments_redis --features redis                 # redis://127.0.0.1:6379
//! REDIS_URL=redis://my-redis:6379 cargo run --example payments_redis --features redis
//! ```

#[path = "support/simulation.rs"]
mod simulation;

use idem::redis::RedisStore;
use idem::Idempotency;

#[tokio::main]
async fn main() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    // A fresh prefix per run, so a second run charges again instead of replaying the first.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut instances = Vec::new();
    for _ in 0..4 {
        // Each instance connects on its own, as separate processes would.
        let store = match RedisStore::connect(&url).await {
            Ok(store) => store,
            Err(err) => {
                eprintln!("{err}\nstart Redis or set REDIS_URL");
                std::process::exit(2);
            }
        };
        instances.push(
            Idempotency::new(store)
                .with_key_prefix(format!("idem-example:{run}:"))
                .with_retention(std::time::Duration::from_secs(600)),
        );
    }
    println!("Redis:               {url}");
    if !simulation::simulate(instances).await {
        std::process::exit(1);
    }
}
