//! Private PostgreSQL clusters: each on a free port in a temporary directory, copied from one
//! `initdb` per test process, stopped (and its directory removed) on drop.
//!
//! PostgreSQL refuses to run as root: as root, the server runs as the `postgres` user through
//! `runuser`. `IDEM_PG_BIN` names the directory of `initdb` and `pg_ctl`; by default the newest
//! `/usr/lib/postgresql/*/bin`, else `PATH`. `IDEM_TEST_DATABASE_URL` points the tests that only
//! need *a* database at an existing one (tests that stop or restart the server always start
//! their own).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::free_port;

const INSTALL_HINT: &str = "install PostgreSQL's server (Debian/Ubuntu: `apt-get install \
     postgresql`, which brings initdb and pg_ctl under /usr/lib/postgresql/VERSION/bin; macOS: \
     `brew install postgresql`) or set IDEM_PG_BIN to the directory holding initdb and pg_ctl";

/// The directory of `initdb` and `pg_ctl`, or `None` to find them on `PATH`.
fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("IDEM_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn tool(name: &str) -> PathBuf {
    match bin_dir() {
        Some(dir) => dir.join(name),
        None => PathBuf::from(name),
    }
}

/// Whether this process runs as root (and so must run the server as `postgres`).
fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
            .unwrap_or(false)
    })
}

/// Runs a PostgreSQL tool (as `postgres` when root) and returns its output, failing the test
/// with the tool's output if it fails.
/// A PostgreSQL tool, to run as `postgres` when root.
fn command(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(name: &str, args: &[&str]) -> Output {
    let program = tool(name);
    let output = command(&program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run `{}`: {err}; {INSTALL_HINT}", program.display()));
    assert!(
        output.status.success(),
        "`{} {}` failed: {}{}",
        program.display(),
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A directory the server's user owns.
fn server_owned_dir(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "chown postgres {} failed", dir.display());
    }
}

/// One `initdb` per machine and PostgreSQL installation, copied for every server: `initdb`
/// takes seconds, a copy a fraction of one. It was one per test process, left behind by each
/// (39 MB a process, one process a test under nextest: a session filled its disk). Made in a
/// directory of its own and renamed into place, so that processes racing to make it never see
/// half of one; the loser removes its own.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        let mut installation = std::collections::hash_map::DefaultHasher::new();
        tool("initdb").hash(&mut installation);
        let name = format!("idem-pg-template-v1-{:016x}", installation.finish());
        let dir = std::env::temp_dir().join(name);
        let data = dir.join("data");
        if data.join("PG_VERSION").exists() {
            return data;
        }
        let making =
            std::env::temp_dir().join(format!("idem-pg-template-making-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&making);
        server_owned_dir(&making);
        let made = making.join("data");
        let made_arg = made.to_string_lossy().into_owned();
        run(
            "initdb",
            &[
                "-D",
                &made_arg,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        if std::fs::rename(&making, &dir).is_err() {
            // Another process put its template in place first.
            let _ = std::fs::remove_dir_all(&making);
        }
        assert!(
            data.join("PG_VERSION").exists(),
            "no template cluster at {}",
            data.display()
        );
        data
    })
}

/// One running PostgreSQL cluster.
#[derive(Debug)]
pub struct PostgresServer {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    dir: PathBuf,
    running: bool,
}

impl PostgresServer {
    /// A fresh cluster (database `postgres`, user `postgres`, trust authentication).
    pub fn start() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("idem-pg-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        server_owned_dir(&dir);
        let copied = Command::new("cp")
            .arg("-a")
            .arg(template())
            .arg(dir.join("data"))
            .status()
            .unwrap();
        assert!(copied.success(), "copying the template cluster failed");
        let mut server = Self {
            port,
            dir,
            running: false,
        };
        server.launch();
        server
    }

    fn data(&self) -> String {
        self.dir.join("data").to_string_lossy().into_owned()
    }

    fn launch(&mut self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log").to_string_lossy().into_owned();
        let data = self.data();
        let started = std::panic::catch_unwind(|| {
            run(
                "pg_ctl",
                &["-D", &data, "-o", &options, "-l", &log, "-w", "start"],
            )
        });
        if started.is_err() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!(
                "PostgreSQL on port {} did not start; its log:\n{log}",
                self.port
            );
        }
        self.running = true;
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The server's log so far (with `log_statement`, every statement it ran).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Stops the server at once, like a crash: no shutdown checkpoint, open transactions lost.
    pub fn stop_immediately(&mut self) {
        if self.running {
            let data = self.data();
            run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
            self.running = false;
        }
    }

    /// Starts the server again on the same port and data (after crash recovery).
    pub fn start_again(&mut self) {
        self.stop_immediately();
        self.launch();
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if self.running {
            let data = self.data();
            let _ = command(&tool("pg_ctl"))
                .args(["-D", &data, "-m", "immediate", "stop"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The URL of a database for tests that need any database: `IDEM_TEST_DATABASE_URL`, or a
/// server of their own (returned so that it lives as long as the test).
pub fn any_database() -> (String, Option<PostgresServer>) {
    match std::env::var("IDEM_TEST_DATABASE_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let server = PostgresServer::start();
            (server.url(), Some(server))
        }
    }
}
