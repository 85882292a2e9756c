//! `FaultProxy`: a TCP proxy between a Redis client and a real `redis-server`, for the faults a
//! network makes: a reply that never arrives (the connection dies after the request got through:
//! the lost acknowledgement), replies delayed past the client's timeout, every connection reset
//! with commands in flight, and a black hole that swallows traffic until healed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The proxy's current faults.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProxyFaults {
    /// Per reply chunk: the probability that the connection is closed instead of forwarding it.
    pub drop_replies: f64,
    /// Per reply chunk: the probability that it is held back by `delay`.
    pub delay_replies: f64,
    /// How long a delayed reply is held.
    pub delay: Duration,
    /// While true, nothing is forwarded in either direction.
    pub black_hole: bool,
}

#[derive(Debug)]
struct Shared {
    faults: Mutex<ProxyFaults>,
    rng: Mutex<fastrand::Rng>,
    resets: watch::Sender<u64>,
    dropped: AtomicU64,
    delayed: AtomicU64,
    closed: AtomicBool,
}

/// A running proxy; stops accepting when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    address: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FaultProxy {
    /// Listens on a free local port and forwards to `upstream`; faults are drawn from `seed`.
    pub async fn start(upstream: SocketAddr, seed: u64) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            faults: Mutex::new(ProxyFaults::default()),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            resets: watch::channel(0).0,
            dropped: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        let accept_shared = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let shared = accept_shared.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, shared).await;
                    }
                });
            }
        });
        Ok(Self {
            address,
            shared,
            accept,
        })
    }

    /// The URL clients use to go through the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.address)
    }

    /// The local port it listens on.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Sets the faults.
    pub fn set(&self, faults: ProxyFaults) {
        *lock(&self.shared.faults) = faults;
    }

    /// Stops all faults.
    pub fn heal(&self) {
        self.set(ProxyFaults::default());
    }

    /// Closes every open connection at once, with whatever commands are in flight.
    pub fn reset_all(&self) {
        self.shared.resets.send_modify(|epoch| *epoch += 1);
    }

    /// Replies dropped and delayed so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.dropped.load(Ordering::Relaxed),
            self.shared.delayed.load(Ordering::Relaxed),
        )
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        self.reset_all();
        self.accept.abort();
    }
}

/// Pumps both directions until either side closes, a fault drops the connection, or a reset.
async fn relay(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let mut resets = shared.resets.subscribe();
    tokio::select! {
        _ = pump_requests(client_read, server_write, &shared) => {}
        _ = pump_replies(server_read, client_write, &shared) => {}
        _ = resets.changed() => {}
    }
    // Dropping both halves of both sockets closes the connection.
}

async fn pump_requests(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: &Shared,
) -> Option<()> {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buffer).await.ok().filter(|&n| n > 0)?;
        hold_while_black_hole(shared).await?;
        to.write_all(&buffer[..n]).await.ok()?;
    }
}

async fn pump_replies(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: &Shared,
) -> Option<()> {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buffer).await.ok().filter(|&n| n > 0)?;
        hold_while_black_hole(shared).await?;
        let (drop_it, delay) = {
            let faults = *lock(&shared.faults);
            let mut rng = lock(&shared.rng);
            let drop_it = rng.f64() < faults.drop_replies;
            let delay = (rng.f64() < faults.delay_replies).then_some(faults.delay);
            (drop_it, delay)
        };
        if drop_it {
            // The request got through and was applied; its reply never arrives.
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if let Some(delay) = delay {
            shared.delayed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(delay).await;
        }
        to.write_all(&buffer[..n]).await.ok()?;
    }
}

/// Holds traffic while the black hole lasts; `None` when the proxy closed meanwhile (what it
/// held is then dropped, never forwarded).
async fn hold_while_black_hole(shared: &Shared) -> Option<()> {
    while lock(&shared.faults).black_hole {
        if shared.closed.load(Ordering::Relaxed) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (!shared.closed.load(Ordering::Relaxed)).then_some(())
}
