//! `redis-server` processes: each on a free port in a temporary directory, waited for until it
//! answers, killed (and its directory removed) on drop. On a failure to start, the server's log
//! is printed.
//!
//! `IDEM_REDIS_SERVER` names another `redis-server` binary; `IDEM_TEST_REDIS_URL` points the
//! tests that only need *a* server at an existing one (tests that stop, restart or cluster
//! servers always start their own).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str =
    "install Redis (Debian/Ubuntu: `apt-get install redis-server`, which also brings \
     `redis-cli`; macOS: `brew install redis`) or set IDEM_REDIS_SERVER to a redis-server binary";

fn server_binary() -> String {
    std::env::var("IDEM_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

fn cli_binary() -> PathBuf {
    // redis-cli ships next to redis-server.
    let server = PathBuf::from(server_binary());
    match server.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join("redis-cli"),
        _ => PathBuf::from("redis-cli"),
    }
}

/// A free TCP port on 127.0.0.1 whose cluster bus port (+10000) is free too, never handed out
/// before in this process. The port is free only when asked (the listener that found it is
/// closed), and the kernel may find the same one again for a test starting alongside: two
/// servers of one process on one port shared a directory too, and one deleted the other's data.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if port >= 55_000 || TcpListener::bind(("127.0.0.1", port + 10_000)).is_err() {
            continue;
        }
        let mut handed_out = HANDED_OUT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    /// Issue 22's CI rehearsal: two PostgreSQL tests of one process got the same port, so the
    /// same directory, and one failed to start on the other's half-deleted data.
    #[test]
    fn a_process_never_gets_one_port_twice() {
        let mut ports: Vec<u16> = (0..3_000).map(|_| super::free_port()).collect();
        ports.sort_unstable();
        let before = ports.len();
        ports.dedup();
        assert_eq!(ports.len(), before, "ports handed out twice");
    }
}

/// One running `redis-server`.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    dir: PathBuf,
    args: Vec<String>,
}

impl RedisServer {
    /// A server without persistence.
    pub fn start() -> Self {
        Self::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// A server with extra configuration arguments (`["--appendonly", "yes"]`, ...).
    pub fn start_with(args: &[&str]) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("idem-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            child: None,
            port,
            dir,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        };
        server.launch();
        server
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) {
        let log = self.dir.join("redis.log");
        let child = Command::new(server_binary())
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot start `{}`: {err}; {INSTALL_HINT}", server_binary())
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        panic!(
            "redis-server on port {} did not answer within 10s; its log:\n{log}",
            self.port
        );
    }

    fn ping(&self) -> bool {
        redis::Client::open(self.url())
            .and_then(|client| client.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut conn| redis::cmd("PING").query::<String>(&mut conn))
            .is_ok()
    }

    /// Kills the server at once (SIGKILL: nothing is flushed that was not already).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (so with its persisted data).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// A synchronous connection for set-up and inspection.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// Waits until this replica's link to its primary is up (10s at most).
    pub fn wait_for_primary_link(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self
            .cli(&["info", "replication"])
            .contains("master_link_status:up")
        {
            assert!(Instant::now() < deadline, "the replica did not sync");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis-cli` against this server.
    pub fn cli(&self, args: &[&str]) -> String {
        run_cli(&[&["-p", &self.port.to_string()][..], args].concat())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run_cli(args: &[&str]) -> String {
    let output = Command::new(cli_binary())
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run redis-cli: {err}; {INSTALL_HINT}"));
    assert!(
        output.status.success(),
        "redis-cli {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The URL of a server for tests that need any server: `IDEM_TEST_REDIS_URL`, or a server of
/// their own (returned so that it lives as long as the test).
pub fn any_server() -> (String, Option<RedisServer>) {
    match std::env::var("IDEM_TEST_REDIS_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let server = RedisServer::start();
            (server.url(), Some(server))
        }
    }
}

/// A 3-master Redis Cluster on local ports, formed with `redis-cli --cluster create`.
#[derive(Debug)]
pub struct RedisCluster {
    /// The three masters.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers and joins them, waiting for `cluster_state:ok`.
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3).map(|_| Self::node()).collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        run_cli(&args);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = nodes
                .iter()
                .all(|node| node.cli(&["cluster", "info"]).contains("cluster_state:ok"));
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach cluster_state:ok in 20s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { nodes }
    }

    /// A cluster-enabled server without persistence, not yet part of any cluster.
    pub fn node() -> RedisServer {
        RedisServer::start_with(&[
            "--save",
            "",
            "--appendonly",
            "no",
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            "2000",
        ])
    }

    /// The nodes' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// A server that also accepts TLS, on [`tls_port`](Self::tls_port), with a certificate for
/// `127.0.0.1` and `localhost` signed by a certificate authority made for it at start. The plain
/// port stays open for set-up and inspection (`cli`, `connection`).
#[derive(Debug)]
pub struct TlsRedisServer {
    /// The server; its plain port serves the harness.
    pub server: RedisServer,
    /// The TLS port (127.0.0.1).
    pub tls_port: u16,
    /// The certificate authority's certificate (PEM): what a client must trust.
    pub ca_pem: String,
    certificates: PathBuf,
}

impl TlsRedisServer {
    /// Makes the certificates and starts the server without persistence.
    pub fn start() -> Self {
        let tls_port = free_port();
        let certificates =
            std::env::temp_dir().join(format!("idem-redis-tls-{}-{tls_port}", std::process::id()));
        std::fs::create_dir_all(&certificates).unwrap();
        let made =
            make_certificates().unwrap_or_else(|err| panic!("cannot make certificates: {err}"));
        let file = |name: &str, pem: &str| {
            let path = certificates.join(name);
            std::fs::write(&path, pem).unwrap();
            path.to_string_lossy().into_owned()
        };
        let (ca, cert, key) = (
            file("ca.pem", &made.ca),
            file("server.pem", &made.cert),
            file("server.key", &made.key),
        );
        let tls_port_text = tls_port.to_string();
        let server = RedisServer::start_with(&[
            "--save",
            "",
            "--appendonly",
            "no",
            "--tls-port",
            &tls_port_text,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            // Clients prove nothing with certificates; the server proves itself.
            "--tls-auth-clients",
            "no",
        ]);
        Self {
            server,
            tls_port,
            ca_pem: made.ca,
            certificates,
        }
    }

    /// `rediss://127.0.0.1:TLS_PORT`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port)
    }
}

impl Drop for TlsRedisServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.certificates);
    }
}

/// PEM texts: the authority's certificate, the server's certificate and its key.
struct Certificates {
    ca: String,
    cert: String,
    key: String,
}

fn make_certificates() -> Result<Certificates, rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose,
    };

    let mut authority = CertificateParams::new(Vec::<String>::new())?;
    authority.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    authority.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let authority = CertifiedIssuer::self_signed(authority, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?
        .signed_by(&key, &authority)?;
    Ok(Certificates {
        ca: authority.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}
