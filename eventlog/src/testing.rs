//! Helpers for tests that need the real services `scripts/test` starts.
//!
//! `scripts/test` starts a Kafka-API broker and a ClickHouse server on free loopback
//! ports and exports their addresses. A test that needs one and runs without it fails
//! with a message naming that command; it never passes silently.

/// Environment variable holding the test broker's `host:port`.
pub const KAFKA_BROKERS_ENV: &str = "TOLLGATE_TEST_KAFKA_BROKERS";
/// Environment variable holding the test ClickHouse server's HTTP URL.
pub const CLICKHOUSE_URL_ENV: &str = "TOLLGATE_TEST_CLICKHOUSE_URL";

/// The value of `name`, or a panic that tells the reader how to run the test.
#[allow(clippy::panic)]
pub fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => panic!(
            "{name} is not set: this test needs the real services that `scripts/test` starts. \
             Run the suite with `scripts/test` (or `scripts/test -- <cargo test args>` for a subset)."
        ),
    }
}

/// A unique name for a test's topic, group or table: `prefix` plus a random suffix.
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    let counter = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{nanos:08x}-{counter}", std::process::id())
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Environment variable holding the path of the `tansu` broker binary `scripts/test`
/// installs, for tests that run a broker of their own.
pub const TANSU_ENV: &str = "TOLLGATE_TEST_TANSU";

/// A Kafka-API broker (tansu, SQLite storage in a throwaway directory) of one test's own,
/// for tests that consume whole topics or stop the broker. Stopped and removed on drop.
#[derive(Debug)]
pub struct TestBroker {
    child: std::process::Child,
    dir: std::path::PathBuf,
    /// `127.0.0.1:PORT`.
    pub address: String,
}

impl TestBroker {
    /// Starts a broker on a free loopback port and waits until it accepts connections.
    #[allow(clippy::panic)]
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(unique_name("tollgate-broker"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .unwrap_or_else(|error| panic!("no free port for a test broker: {error}"));
        if let Err(error) = std::fs::create_dir_all(&dir) {
            panic!("creating {}: {error}", dir.display());
        }
        let child = Self::spawn(&dir, port);
        // Dropped (so killed and reaped) if it never comes up.
        let broker = TestBroker { child, dir, address: format!("127.0.0.1:{port}") };
        broker.wait_until_listening();
        broker
    }

    /// Stops the broker, as a crash does; [`TestBroker::start_again`] brings it back.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the broker again on the same port and storage, as a restart does, and
    /// waits until it accepts connections.
    #[allow(clippy::panic)]
    pub fn start_again(&mut self) {
        self.stop();
        let port = self
            .address
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .unwrap_or_else(|| panic!("a test broker address without a port: {}", self.address));
        self.child = Self::spawn(&self.dir, port);
        self.wait_until_listening();
    }

    #[allow(clippy::panic)]
    fn spawn(dir: &std::path::Path, port: u16) -> std::process::Child {
        let tansu = required_env(TANSU_ENV);
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("tansu.log")).ok();
        std::process::Command::new(&tansu)
            .current_dir(dir)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdout(log.map_or_else(std::process::Stdio::null, std::process::Stdio::from))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("starting {tansu}: {error}"))
    }

    #[allow(clippy::panic)]
    fn wait_until_listening(&self) {
        for _ in 0..300 {
            if std::net::TcpStream::connect(&self.address).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the test broker did not listen on {}", self.address);
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Awaits `step`, or panics naming it once `limit` has passed, so that a test that would
/// hang says where instead (and its captured output is shown).
#[allow(clippy::panic)]
pub async fn within<T>(limit: std::time::Duration, what: &str, step: impl std::future::Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    match tokio::time::timeout(limit, step).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: no result within {limit:?} (started {:?} ago)", started.elapsed()),
    }
}
