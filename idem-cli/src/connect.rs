//! The store a URL names.

use idem_core::admin::StoreAdmin;
use idem_core::{Error, Store};
use idem_postgres::PostgresStore;
use idem_redis::RedisStore;

use crate::args::Args;

/// A store the command can read and act on.
pub(crate) trait Backend: Store + StoreAdmin {}

impl<S: Store + StoreAdmin> Backend for S {}

/// Connects to the store of `args.store`.
pub(crate) async fn connect(args: &Args) -> Result<Box<dyn Backend>, Error> {
    let url = args.store.as_str();
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    match scheme {
        "redis" | "rediss" | "redis+unix" | "unix" => {
            if args.cluster {
                let store = RedisStore::connect_cluster(&[url]).await?;
                Ok(Box::new(with_redis_prefix(store, args)?))
            } else {
                let store = RedisStore::connect(url).await?;
                Ok(Box::new(with_redis_prefix(store, args)?))
            }
        }
        "postgres" | "postgresql" => {
            let store = PostgresStore::connect(url).await?.with_table(&args.table)?;
            Ok(Box::new(store))
        }
        _ => Err(Error::invalid_option(format!(
            "`--store` must be a redis://, rediss:// or postgres:// URL; the one given {}",
            if scheme.is_empty() {
                "has no scheme".to_owned()
            } else {
                format!("is {scheme}://...")
            }
        ))),
    }
}

fn with_redis_prefix<C>(store: RedisStore<C>, args: &Args) -> Result<RedisStore<C>, Error>
where
    C: idem_redis::redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    match &args.redis_prefix {
        Some(prefix) => store.with_key_prefix(prefix.clone()),
        None => Ok(store),
    }
}
