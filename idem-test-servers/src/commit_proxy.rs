//! A TCP proxy in front of PostgreSQL that loses the reply to a `COMMIT`: the outcome a client
//! cannot know.

/// A proxy to the server at `host:port` that passes everything until the client sends
/// `COMMIT`, then cuts the connection: after forwarding the `COMMIT` (it commits, the reply is
/// lost) or before (it does not). Either way the caller cannot know which. Returns the proxy's
/// port on 127.0.0.1.
pub async fn commit_cutting_proxy(host: &str, port: u16, forward_commit: bool) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = tokio::net::lookup_host((host, port))
        .await
        .ok()
        .and_then(|mut addresses| addresses.next())
        .unwrap_or_else(|| panic!("{host}:{port} does not resolve"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let cut = std::sync::Arc::new(tokio::sync::Notify::new());
            let to_client = {
                let cut = cut.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 65536];
                    loop {
                        tokio::select! {
                            read = server_read.read(&mut buffer) => match read {
                                Ok(0) | Err(_) => break,
                                Ok(n) => if client_write.write_all(&buffer[..n]).await.is_err() { break },
                            },
                            () = cut.notified() => break,
                        }
                    }
                    // Both halves go back: the client's is closed only once the cut COMMIT's
                    // fate is settled on the server.
                    (server_read, client_write)
                })
            };
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 65536];
                loop {
                    let n = match client_read.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if buffer[..n].windows(7).any(|w| w == b"COMMIT\0") {
                        // No reply reaches the client from here on.
                        cut.notify_one();
                        let Ok((mut server_read, client_write)) = to_client.await else {
                            return;
                        };
                        if forward_commit {
                            let _ = server_write.write_all(&buffer[..n]).await;
                            // The server answered: it committed. Only then does the client
                            // lose its connection, without that answer.
                            let _ = server_read.read(&mut buffer).await;
                        }
                        drop(client_write);
                        return;
                    }
                    if server_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
                cut.notify_one();
                let _ = to_client.await;
            });
        }
    });
    port
}
