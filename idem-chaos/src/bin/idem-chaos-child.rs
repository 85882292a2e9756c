//! A service instance to be killed: claims `KEY` on the Redis at `URL` with a `LEASE_MS` lease,
//! prints `started <fence>` from inside the body, then works for a minute (until SIGKILL).
//!
//! Usage: `idem-chaos-child URL KEY LEASE_MS`

use std::io::Write;
use std::time::Duration;

use idem_core::{Call, Error, Idempotency};
use idem_redis::RedisStore;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(key), Some(lease)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: idem-chaos-child URL KEY LEASE_MS");
        std::process::exit(2);
    };
    let lease = Duration::from_millis(lease.parse().unwrap_or(1000));
    let idem = Idempotency::new(RedisStore::connect(&url).await?);
    idem.run(Call::new("crash", key).lease(lease), async {
        let fence = idem_core::context().map_or(0, |context| context.fence.0);
        println!("started {fence}");
        let _ = std::io::stdout().flush();
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, Error>(fence)
    })
    .await?;
    Ok(())
}
